"""Reading DICOM radiographs: the header tags the builder keeps, and one 8-bit grayscale image.

Runs in the builder's worker processes beside `preprocess.images`, so it imports pydicom, numpy
and Pillow only (no TensorFlow). Every file it cannot use raises `ImageError` with the reason.

A file is DICOM when its content says so: the DICOM Part 10 preamble (128 bytes) followed by
`DICM`, whatever the file is called. Files without the preamble (bare data sets, old ACR-NEMA
files) are not recognised: nothing in their first bytes tells them reliably from other formats.

`decode` turns the pixel data into an 8-bit grayscale image by these rules (baseline JPEG is
decoded by Pillow, like the builder's JPEG sources; everything else by pydicom's plugins):

1. Refused, with the reason: no pixel data; more than one frame; a transfer syntax that the
   installed pydicom plugins cannot decode; truncated or corrupt pixel data; more than
   `--max_image_pixels` pixels (checked from the header, before decoding); Bits Stored outside
   8..16; any photometric interpretation other than MONOCHROME1, MONOCHROME2 (1 sample),
   RGB, YBR_FULL, YBR_FULL_422 (3 samples) or PALETTE COLOR (1 sample).
2. Colour (RGB, YBR_FULL, YBR_FULL_422, PALETTE COLOR) becomes RGB (pydicom converts YBR and
   applies the palette), colour deeper than 8 bits is scaled over its full range to 8 bits
   (`v * 255 / (2**bits - 1)`, rounded), and the RGB image becomes gray with Pillow's
   `convert("L")` (ITU-R 601 luma), exactly as a colour PNG is treated.
3. Monochrome goes through the Modality LUT (Rescale Slope/Intercept, or a Modality LUT
   Sequence), then:
   - with a VOI LUT Sequence, its first LUT, whose output 0..(largest entry) maps to 0..255;
   - else with Window Center/Width, the first window with the VOI LUT Function of the file
     (LINEAR as in DICOM PS3.3 C.11.2.1.2.1 when absent or unknown, LINEAR_EXACT or SIGMOID),
     its output range mapped to 0..255; a window narrower than 1 is ignored;
   - else unsigned data of at most 8 stored bits that the Modality LUT left unchanged is kept
     as stored;
   - else the 0.5th..99.5th percentile range of the modality values (numpy's linear
     interpolation) maps linearly to 0..255, values outside it clip. When the two percentiles
     are equal the full min..max range is used instead; a constant image becomes black.
   Values are rounded half to even (`np.rint`) and clipped to 0..255. MONOCHROME1 is then
   inverted (255 - v), so bone is bright as in MONOCHROME2. The Presentation LUT Shape is not
   read: for radiographs it only restates what the photometric interpretation already says.
4. When the builder will shrink the image without cropping it, a baseline-JPEG frame is decoded
   as `preprocess.images` decodes a .jpg: at the smallest of libjpeg's DCT scales 1/2, 1/4, 1/8
   that keeps both sides at least the output size, straight to gray, so the same JPEG gives the
   same record in a .jpg or in a DICOM file. A monochrome frame (unsigned) then goes through
   rule 3, whose percentile stretch sees the decoded pixels, not the whole frame's; a colour
   frame (RGB or YBR) is its JPEG luma, as a colour .jpg is, instead of rule 2's luma of RGB.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import warnings
from typing import IO

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.pixels import get_decoder, pixel_array
from pydicom.uid import UID, JPEGBaseline8Bit, RLELossless

from contracts.decode_rules import DICOM_MAGIC, PREAMBLE_LENGTH
from contracts.demographics import parse_age, parse_sex
from preprocess.dicom_values import (
    CORRUPT_INPUT_ERRORS,
    colour_to_gray,
    monochrome_to_gray,
    tag_number,
    tag_text,
)
from preprocess.images import ImageError

# pydicom also logs what it tolerates in a damaged file; here every problem becomes the file's
# one skip reason in the manifest instead, so its log lines would only repeat it.
logging.getLogger("pydicom").setLevel(logging.ERROR)

SIGNATURE_BYTES = PREAMBLE_LENGTH + len(DICOM_MAGIC)  # what `is_dicom` needs to see
BITS_STORED_RANGE = (8, 16)
# 1 sample: grayscale or palette indices; 3 samples: colour. Anything else is refused.
SUPPORTED_PHOTOMETRIC = {
    "MONOCHROME1": 1, "MONOCHROME2": 1, "PALETTE COLOR": 1, "RGB": 3, "YBR_FULL": 3, "YBR_FULL_422": 3,
}
MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
# Names of transfer syntaxes newer than the pinned pydicom, so a refusal names them.
NEWER_SYNTAX_NAMES = {
    "1.2.840.10008.1.2.4.110": "JPEG XL Lossless",
    "1.2.840.10008.1.2.4.111": "JPEG XL JPEG Recompression",
    "1.2.840.10008.1.2.4.112": "JPEG XL",
}
# The plugin that decodes each of these syntaxes, whatever else is installed. Baseline JPEG:
# Pillow's libjpeg-turbo, several times faster than pylibjpeg's libjpeg and the decoder of the
# JPEG sources in `preprocess.images` (the two differ by at most 1). RLE: pydicom's own numpy
# decoder, because pylibjpeg-rle panics on corrupt data with pyo3's PanicException, which is not
# an Exception and would end the builder's worker.
DECODING_PLUGINS = {JPEGBaseline8Bit: "pillow", RLELossless: "pydicom"}
# pydicom does not raise on a file that ends inside an element of undefined length (encapsulated
# pixel data): it warns with this text and drops the element, so the warning is the only sign.
_EARLY_END_WARNING = "End of file reached"


@dataclasses.dataclass(frozen=True)
class DicomTags:
    """The header fields the builder keeps; None when a tag is absent, empty or unreadable."""

    patient_id: str | None
    view_position: str | None  # e.g. "PA", "AP"
    sex: str | None  # "M" or "F"
    age: int | None  # whole years
    sop_instance_uid: str | None


def is_dicom(data: bytes) -> bool:
    """True when `data` is a DICOM Part 10 file: `DICM` right after the 128-byte preamble."""
    return data[PREAMBLE_LENGTH:PREAMBLE_LENGTH + len(DICOM_MAGIC)] == DICOM_MAGIC


@contextlib.contextmanager
def _untrusted(reason: str):
    """Silences pydicom's warnings (off the workers' stderr) and turns its errors into ImageError."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pydicom's; numpy's RuntimeWarnings stay
        try:
            yield
        except CORRUPT_INPUT_ERRORS as err:
            raise ImageError(f"{reason} ({_short(err)})") from None


def _read(source: bytes | IO[bytes], **read_options) -> tuple[Dataset, bool]:
    """Parses a file's bytes, or an open file from its start (pydicom reads only as far as it
    needs: with `stop_before_pixels`, the header); returns the data set and whether the file
    ended inside an element."""
    if isinstance(source, (bytes, bytearray)):
        head, source = source, io.BytesIO(source)
    else:
        head = source.read(SIGNATURE_BYTES)
        source.seek(0)
    if not is_dicom(head):
        raise ImageError(f"not a DICOM Part 10 file (no {DICOM_MAGIC.decode()} marker after the "
                         f"{PREAMBLE_LENGTH}-byte preamble); if it is a bare DICOM data set, save it "
                         "with the Part 10 header (dcmconv, or pydicom's save_as(enforce_file_format=True))")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = pydicom.dcmread(source, **read_options)
    ended_early = any(_EARLY_END_WARNING in str(w.message) for w in caught)
    return ds, ended_early


def _short(err: Exception) -> str:
    """The first line of an exception's message, at most 160 characters."""
    lines = str(err).strip().splitlines() or [type(err).__name__]
    return lines[0][:160]


def read_tags(data: bytes | IO[bytes]) -> DicomTags:
    """Reads the header fields from a DICOM file's bytes or an open file, without its pixel data
    (from an open file, without reading it: an archive's files are read whole once, by the build).

    Raises:
      ImageError: `data` is not DICOM or its header cannot be parsed.
    """
    with _untrusted("unreadable DICOM header"):
        ds, _ = _read(data, stop_before_pixels=True)
        sex = parse_sex(tag_text(ds, "PatientSex"))
        view = tag_text(ds, "ViewPosition")
        return DicomTags(
            patient_id=tag_text(ds, "PatientID"),
            view_position=view.upper() if view else None,
            sex=sex or None,
            age=parse_age(tag_text(ds, "PatientAge")),
            sop_instance_uid=tag_text(ds, "SOPInstanceUID"),
        )


def _check_header(ds: Dataset, max_pixels: int) -> str:
    """Refuses what `decode` cannot turn into one image; returns the photometric interpretation."""
    if "PixelData" not in ds:
        raise ImageError("no pixel data")
    frames = tag_number(ds, "NumberOfFrames") or 1
    if frames > 1:
        raise ImageError(f"multi-frame ({frames:.0f} frames); only single images are supported")
    rows, columns = int(tag_number(ds, "Rows") or 0), int(tag_number(ds, "Columns") or 0)
    if rows <= 0 or columns <= 0:
        raise ImageError(f"no image size in the header (Rows={rows}, Columns={columns})")
    if rows * columns > max_pixels:
        raise ImageError(
            f"{columns}x{rows} = {rows * columns:,} pixels exceeds --max_image_pixels={max_pixels:,}; "
            "refused as a possible decompression bomb"
        )
    photometric = (tag_text(ds, "PhotometricInterpretation") or "").upper()
    samples = int(tag_number(ds, "SamplesPerPixel") or 1)
    if SUPPORTED_PHOTOMETRIC.get(photometric) != samples:
        raise ImageError(
            f"unsupported photometric interpretation {photometric or 'None'} with {samples} "
            f"sample(s) per pixel; supported: {', '.join(SUPPORTED_PHOTOMETRIC)}"
        )
    bits = int(tag_number(ds, "BitsStored") or 0)
    if not BITS_STORED_RANGE[0] <= bits <= BITS_STORED_RANGE[1]:
        raise ImageError(f"Bits Stored {bits} is not supported (only {BITS_STORED_RANGE[0]} to "
                         f"{BITS_STORED_RANGE[1]})")
    return photometric


def _check_transfer_syntax(ds: Dataset) -> None:
    syntax = UID(tag_text(ds.file_meta, "TransferSyntaxUID") or "")
    if not syntax:
        raise ImageError("no transfer syntax in the file meta header")
    name = NEWER_SYNTAX_NAMES.get(syntax, syntax.name)
    label = name if name == syntax else f"{name} ({syntax})"
    if not syntax.is_transfer_syntax:
        raise ImageError(f"unsupported transfer syntax {label}: no decoder in pydicom")
    if not syntax.is_compressed:
        return
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise ImageError(f"unsupported transfer syntax {label}: no decoder in pydicom") from None
    if not decoder.is_available:
        needs = "; ".join(decoder.missing_dependencies)
        raise ImageError(f"unsupported transfer syntax {label}: no decoding plugin installed ({needs})")


def _decoding_plugin(ds: Dataset) -> str:
    """The plugin of DECODING_PLUGINS for this file when installed, else "" (pydicom's choice)."""
    syntax = ds.file_meta.TransferSyntaxUID
    plugin = DECODING_PLUGINS.get(syntax, "")
    if plugin and plugin not in get_decoder(syntax).available_plugins:
        return ""
    return plugin


def _pixels(ds: Dataset, samples: int) -> np.ndarray:
    """Decodes the single frame: (rows, columns) or (rows, columns, 3), RGB for colour."""
    with _untrusted("truncated or corrupt pixel data"):
        # YBR_FULL(_422) comes back as RGB: pydicom's `as_rgb` default.
        pixels = pixel_array(ds, decoding_plugin=_decoding_plugin(ds))
    expected = (ds.Rows, ds.Columns) + ((samples,) if samples > 1 else ())
    if pixels.shape != expected:
        raise ImageError(f"truncated or corrupt pixel data: decoded shape {pixels.shape}, "
                         f"header says {expected}")
    return pixels


@dataclasses.dataclass(frozen=True)
class Frame:
    """A DICOM file parsed and checked by `open_frame`, its pixels not yet decoded."""

    ds: Dataset
    photometric: str
    size: tuple[int, int]  # (Columns, Rows): width and height, as Pillow's `Image.size`


def open_frame(data: bytes, max_pixels: int) -> Frame:
    """Parses `data` and refuses what cannot become one image (rule 1 of the module docstring),
    without decoding the pixels: the builder reads the size to place a crop first.

    Raises:
      ImageError: the file is not DICOM or cannot become one grayscale image; the message says why.
    """
    with _untrusted("corrupt DICOM file"):
        ds, ended_early = _read(data)
        if ended_early:  # checked first: pydicom drops the cut element, often the pixel data
            raise ImageError(f"truncated or corrupt pixel data: the file ends inside an element "
                             f"({len(data):,} bytes)")
        photometric = _check_header(ds, max_pixels)
        _check_transfer_syntax(ds)
        return Frame(ds, photometric, (int(ds.Columns), int(ds.Rows)))


def _jpeg_at_scale(frame: Frame, draft_size: int) -> np.ndarray | None:
    """A baseline-JPEG frame decoded as `preprocess.images` decodes a .jpg it will not crop: at the
    smallest DCT scale (1/2, 1/4, 1/8) whose image is still at least `draft_size` on both sides,
    straight to gray (a colour frame's JPEG luma). None when the frame is not such a JPEG
    (pydicom's decoder then takes it, with its own checks)."""
    ds = frame.ds
    monochrome = frame.photometric in MONOCHROME
    if (ds.file_meta.TransferSyntaxUID != JPEGBaseline8Bit
            or (monochrome and int(tag_number(ds, "PixelRepresentation") or 0) != 0)):
        return None
    with _untrusted("truncated or corrupt pixel data"):
        try:
            image = Image.open(io.BytesIO(get_frame(ds.PixelData, 0, number_of_frames=1)), formats=("JPEG",))
        except Image.DecompressionBombError as err:  # the frame's own size, whatever the header says
            raise ImageError(f"JPEG frame refused as a possible decompression bomb: {err}") from None
        if image.mode != ("L" if monochrome else "RGB") or image.size != frame.size:
            return None
        image.draft("L", (draft_size, draft_size))
        if image.mode != "L":
            return None
        image.load()
        return np.asarray(image)


def to_gray(frame: Frame, draft_size: int | None = None) -> Image.Image:
    """Decodes an opened frame to 8-bit grayscale by the rules of the module docstring.

    Args:
      frame: from `open_frame`.
      draft_size: when set, a baseline-JPEG frame is decoded at libjpeg's DCT scale, straight to
        gray (`_jpeg_at_scale`, rule 4): the builder passes its output size when it will not
        crop, so a JPEG reads the same in a DICOM file as in a .jpg. Other frames are decoded
        whole.

    Returns:
      An "L" image of the file's Columns x Rows, or smaller by a power of two after a draft.

    Raises:
      ImageError: the pixel data cannot be decoded; the message says why.
    """
    ds, photometric = frame.ds, frame.photometric
    with _untrusted("corrupt DICOM file"):
        drafted = None if draft_size is None else _jpeg_at_scale(frame, draft_size)
        pixels = _pixels(ds, SUPPORTED_PHOTOMETRIC[photometric]) if drafted is None else drafted
        if photometric in MONOCHROME:
            gray = monochrome_to_gray(pixels, ds)
            if photometric == "MONOCHROME1":
                gray = 255 - gray
        else:  # a drafted colour frame is gray already: its JPEG luma, as a colour .jpg gives it
            gray = colour_to_gray(pixels, ds, photometric) if drafted is None else drafted
    return Image.fromarray(gray)


def decode(data: bytes, max_pixels: int) -> Image.Image:
    """Decodes a single-frame DICOM image whole, to 8-bit grayscale (`open_frame`, `to_gray`).

    Args:
      data: the file's bytes.
      max_pixels: larger images are refused before decoding (the builder's --max_image_pixels).

    Returns:
      An "L" image of the file's Columns x Rows.

    Raises:
      ImageError: the file is not DICOM or cannot become one grayscale image; the message says why.
    """
    return to_gray(open_frame(data, max_pixels))
