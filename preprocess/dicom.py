"""DICOM radiographs: the header tags the builder keeps, and one 8-bit grayscale image. A file is
DICOM by its content (the Part 10 preamble, then `DICM`); the decoding rules are in docs/data.md ("DICOM")."""

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
from preprocess.image_error import ImageError, check_pixels

# Every problem of a damaged file becomes its one skip reason: pydicom's log lines would repeat it.
logging.getLogger("pydicom").setLevel(logging.ERROR)

SIGNATURE_BYTES = PREAMBLE_LENGTH + len(DICOM_MAGIC)  # what `is_dicom` needs to see
BITS_STORED_RANGE = (8, 16)
# 1 sample: grayscale or palette indices; 3 samples: colour, which pydicom decodes to RGB (JPEG 2000's
# YBR_RCT and YBR_ICT by the codec's own inverse transform). Anything else is refused.
SUPPORTED_PHOTOMETRIC = {
    "MONOCHROME1": 1, "MONOCHROME2": 1, "PALETTE COLOR": 1, "RGB": 3, "YBR_FULL": 3, "YBR_FULL_422": 3,
    "YBR_RCT": 3, "YBR_ICT": 3,
}
MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
# Transfer syntaxes newer than the pinned pydicom, so a refusal names them.
NEWER_SYNTAX_NAMES = {
    "1.2.840.10008.1.2.4.110": "JPEG XL Lossless",
    "1.2.840.10008.1.2.4.111": "JPEG XL JPEG Recompression",
    "1.2.840.10008.1.2.4.112": "JPEG XL",
}
# Baseline JPEG: Pillow's libjpeg-turbo, faster than pylibjpeg and the decoder of the .jpg sources.
# RLE: pydicom's own, because pylibjpeg-rle panics on corrupt data (not an Exception: ends a worker).
DECODING_PLUGINS = {JPEGBaseline8Bit: "pillow", RLELossless: "pydicom"}
# A file ending inside an element of undefined length only gets this warning (the element dropped).
_EARLY_END_WARNING = "End of file reached"


@dataclasses.dataclass(frozen=True)
class DicomTags:
    """The header fields the builder keeps; None when absent, empty or unreadable."""
    patient_id: str | None
    view_position: str | None  # e.g. "PA", "AP"
    sex: str | None  # "M" or "F"
    age: int | None  # whole years
    sop_instance_uid: str | None
    modality: str | None = None  # e.g. "CR", "CT"
    body_part: str | None = None  # BodyPartExamined, e.g. "CHEST"
    study_instance_uid: str | None = None


def is_dicom(data: bytes) -> bool:
    return data[PREAMBLE_LENGTH:PREAMBLE_LENGTH + len(DICOM_MAGIC)] == DICOM_MAGIC


@contextlib.contextmanager
def _untrusted(reason: str):
    """Silences pydicom's warnings (off the workers' stderr) and turns its errors into ImageError."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pydicom's; numpy's RuntimeWarnings stay
        try:
            yield
        except CORRUPT_INPUT_ERRORS as err:
            first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ImageError(f"{reason} ({first_line[:160]})") from None


def _read(source: bytes | IO[bytes], **read_options) -> tuple[Dataset, bool]:
    """(data set, whether the file ended inside an element) of bytes or an open file."""
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


def read_tags(data: bytes | IO[bytes]) -> DicomTags:
    """The header of a file's bytes or an open file, pixels unread; ImageError when unreadable."""
    with _untrusted("unreadable DICOM header"):
        ds, _ = _read(data, stop_before_pixels=True)
        view = tag_text(ds, "ViewPosition")
        return DicomTags(tag_text(ds, "PatientID"), view.upper() if view else None,
                         parse_sex(tag_text(ds, "PatientSex")) or None, parse_age(tag_text(ds, "PatientAge")),
                         tag_text(ds, "SOPInstanceUID"), tag_text(ds, "Modality"),
                         tag_text(ds, "BodyPartExamined"), tag_text(ds, "StudyInstanceUID"))


def _check_header(ds: Dataset, max_pixels: int) -> str:
    """The photometric interpretation; ImageError for what cannot become one image."""
    if "PixelData" not in ds:
        raise ImageError("no pixel data")
    frames = tag_number(ds, "NumberOfFrames") or 1
    if frames > 1:
        raise ImageError(f"multi-frame ({frames:.0f} frames); only single images are supported")
    rows, columns = int(tag_number(ds, "Rows") or 0), int(tag_number(ds, "Columns") or 0)
    if rows <= 0 or columns <= 0:
        raise ImageError(f"no image size in the header (Rows={rows}, Columns={columns})")
    check_pixels(columns, rows, max_pixels)
    photometric = (tag_text(ds, "PhotometricInterpretation") or "").upper()
    samples = int(tag_number(ds, "SamplesPerPixel") or 1)
    if SUPPORTED_PHOTOMETRIC.get(photometric) != samples:
        raise ImageError(f"unsupported photometric interpretation {photometric or 'None'} with {samples} "
                         f"sample(s) per pixel; supported: {', '.join(SUPPORTED_PHOTOMETRIC)}")
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
    try:
        decoder = get_decoder(syntax) if syntax.is_transfer_syntax else None
    except NotImplementedError:
        decoder = None
    if decoder is None:
        raise ImageError(f"unsupported transfer syntax {label}: no decoder in pydicom")
    if not decoder.is_available:
        needs = "; ".join(decoder.missing_dependencies)
        raise ImageError(f"unsupported transfer syntax {label}: no decoding plugin installed ({needs})")


def _pixels(ds: Dataset, samples: int) -> np.ndarray:
    """The single frame: (rows, columns), or (rows, columns, 3) RGB (pydicom's `as_rgb` default)."""
    with _untrusted("truncated or corrupt pixel data"):
        syntax = ds.file_meta.TransferSyntaxUID
        plugin = DECODING_PLUGINS.get(syntax, "")
        if plugin not in get_decoder(syntax).available_plugins:
            plugin = ""  # pydicom's choice
        pixels = pixel_array(ds, decoding_plugin=plugin)
    expected = (ds.Rows, ds.Columns) + ((samples,) if samples > 1 else ())
    if pixels.shape != expected:
        raise ImageError(f"truncated or corrupt pixel data: decoded shape {pixels.shape}, "
                         f"header says {expected}")
    return pixels


@dataclasses.dataclass(frozen=True)
class Frame:
    """A file parsed and checked by `open_frame`, its pixels not yet decoded."""
    ds: Dataset
    photometric: str
    size: tuple[int, int]  # (Columns, Rows): width and height, as Pillow's `Image.size`


def open_frame(data: bytes, max_pixels: int) -> Frame:
    """Parses and checks `data` (ImageError says why it cannot become one image), pixels undecoded:
    the builder places a crop by the size first."""
    with _untrusted("corrupt DICOM file"):
        ds, ended_early = _read(data)
        if ended_early:  # checked first: pydicom drops the cut element, often the pixel data
            raise ImageError(f"truncated or corrupt pixel data: the file ends inside an element "
                             f"({len(data):,} bytes)")
        photometric = _check_header(ds, max_pixels)
        _check_transfer_syntax(ds)
        return Frame(ds, photometric, (int(ds.Columns), int(ds.Rows)))


def _jpeg_at_scale(frame: Frame, draft_size: int) -> np.ndarray | None:
    """A baseline-JPEG frame decoded as `preprocess.images` decodes a .jpg it will not crop (DCT
    scale still >= `draft_size`, straight to gray); None when not such a JPEG (pydicom takes it)."""
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
    """An 8-bit "L" image of the frame (ImageError if it cannot); `draft_size`: decode a baseline-JPEG
    frame at libjpeg's DCT scale, as a .jpg would be (the output size when the builder will not crop)."""
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
    return to_gray(open_frame(data, max_pixels))
