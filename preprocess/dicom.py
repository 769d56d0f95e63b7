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
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import struct
import warnings

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, get_decoder, pixel_array
from pydicom.uid import UID, JPEGBaseline8Bit, RLELossless

from contracts.demographics import parse_age, parse_sex
from preprocess.images import ImageError

# pydicom also logs what it tolerates in a damaged file; here every problem becomes the file's
# one skip reason in the manifest instead, so its log lines would only repeat it.
logging.getLogger("pydicom").setLevel(logging.ERROR)

DICOM_MAGIC = b"DICM"
PREAMBLE_LENGTH = 128
SIGNATURE_BYTES = PREAMBLE_LENGTH + len(DICOM_MAGIC)  # what `is_dicom` needs to see
BITS_STORED_RANGE = (8, 16)
# 1 sample: grayscale or palette indices; 3 samples: colour. Anything else is refused.
SUPPORTED_PHOTOMETRIC = {
    "MONOCHROME1": 1, "MONOCHROME2": 1, "PALETTE COLOR": 1, "RGB": 3, "YBR_FULL": 3, "YBR_FULL_422": 3,
}
# Names of transfer syntaxes newer than the pinned pydicom, so a refusal names them.
NEWER_SYNTAX_NAMES = {
    "1.2.840.10008.1.2.4.110": "JPEG XL Lossless",
    "1.2.840.10008.1.2.4.111": "JPEG XL JPEG Recompression",
    "1.2.840.10008.1.2.4.112": "JPEG XL",
}
# Default display range when a monochrome image has no window: robust to a few extreme pixels.
STRETCH_PERCENTILES = (0.5, 99.5)
# The plugin that decodes each of these syntaxes, whatever else is installed. Baseline JPEG:
# Pillow's libjpeg-turbo, several times faster than pylibjpeg's libjpeg and the decoder of the
# JPEG sources in `preprocess.images` (the two differ by at most 1). RLE: pydicom's own numpy
# decoder, because pylibjpeg-rle panics on corrupt data with pyo3's PanicException, which is not
# an Exception and would end the builder's worker.
DECODING_PLUGINS = {JPEGBaseline8Bit: "pillow", RLELossless: "pydicom"}
# pydicom does not raise on a file that ends inside an element of undefined length (encapsulated
# pixel data): it warns with this text and drops the element, so the warning is the only sign.
_EARLY_END_WARNING = "End of file reached"
# pydicom converts most values only when they are first read, so corrupt input can fail at any
# step; these are the types pydicom and its plugins raised on damaged files.
_CORRUPT_INPUT_ERRORS = (InvalidDicomError, BytesLengthException, struct.error, ValueError,
                         TypeError, KeyError, IndexError, EOFError, OSError, OverflowError,
                         NotImplementedError, AttributeError, RuntimeError)


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
        except _CORRUPT_INPUT_ERRORS as err:
            raise ImageError(f"{reason} ({_short(err)})") from None


def _read(data: bytes, **read_options) -> tuple[Dataset, bool]:
    """Parses `data`; returns the data set and whether the file ended inside an element."""
    if not is_dicom(data):
        raise ImageError(f"not a DICOM file (no {DICOM_MAGIC.decode()} marker after the preamble)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = pydicom.dcmread(io.BytesIO(data), **read_options)
    ended_early = any(_EARLY_END_WARNING in str(w.message) for w in caught)
    return ds, ended_early


def _short(err: Exception) -> str:
    """The first line of an exception's message, at most 160 characters."""
    lines = str(err).strip().splitlines() or [type(err).__name__]
    return lines[0][:160]


def _value(ds: Dataset, keyword: str):
    """The value of a tag; None when absent or unreadable (pydicom converts it only now)."""
    try:
        return ds.get(keyword)
    except _CORRUPT_INPUT_ERRORS:
        return None


def _text(ds: Dataset, keyword: str) -> str | None:
    value = _value(ds, keyword)
    text = str(value).strip() if value is not None else ""
    return text or None


def read_tags(data: bytes) -> DicomTags:
    """Reads the header fields from a DICOM file, without reading its pixel data.

    Raises:
      ImageError: `data` is not DICOM or its header cannot be parsed.
    """
    with _untrusted("unreadable DICOM header"):
        ds, _ = _read(data, stop_before_pixels=True)
        sex = parse_sex(_text(ds, "PatientSex"))
        view = _text(ds, "ViewPosition")
        return DicomTags(
            patient_id=_text(ds, "PatientID"),
            view_position=view.upper() if view else None,
            sex=sex or None,
            age=parse_age(_text(ds, "PatientAge")),
            sop_instance_uid=_text(ds, "SOPInstanceUID"),
        )


def _number(ds: Dataset, keyword: str) -> float | None:
    """The first value of a numeric tag, or None when absent, empty or not a number."""
    value = _value(ds, keyword)
    if isinstance(value, (list, tuple, MultiValue)):
        value = value[0] if len(value) else None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def _check_header(ds: Dataset, max_pixels: int) -> str:
    """Refuses what `decode` cannot turn into one image; returns the photometric interpretation."""
    if "PixelData" not in ds:
        raise ImageError("no pixel data")
    frames = _number(ds, "NumberOfFrames") or 1
    if frames > 1:
        raise ImageError(f"multi-frame ({frames:.0f} frames); only single images are supported")
    rows, columns = int(_number(ds, "Rows") or 0), int(_number(ds, "Columns") or 0)
    if rows <= 0 or columns <= 0:
        raise ImageError(f"no image size in the header (Rows={rows}, Columns={columns})")
    if rows * columns > max_pixels:
        raise ImageError(
            f"{columns}x{rows} = {rows * columns:,} pixels exceeds --max_image_pixels={max_pixels:,}; "
            "refused as a possible decompression bomb"
        )
    photometric = (_text(ds, "PhotometricInterpretation") or "").upper()
    samples = int(_number(ds, "SamplesPerPixel") or 1)
    if SUPPORTED_PHOTOMETRIC.get(photometric) != samples:
        raise ImageError(
            f"unsupported photometric interpretation {photometric or 'None'} with {samples} "
            f"sample(s) per pixel; supported: {', '.join(SUPPORTED_PHOTOMETRIC)}"
        )
    bits = int(_number(ds, "BitsStored") or 0)
    if not BITS_STORED_RANGE[0] <= bits <= BITS_STORED_RANGE[1]:
        raise ImageError(f"Bits Stored {bits} is not supported (only {BITS_STORED_RANGE[0]} to "
                         f"{BITS_STORED_RANGE[1]})")
    return photometric


def _check_transfer_syntax(ds: Dataset) -> None:
    syntax = UID(_text(ds.file_meta, "TransferSyntaxUID") or "")
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


def _scale_to_8_bits(values: np.ndarray, bits: int) -> np.ndarray:
    if values.dtype == np.uint8:
        return values
    return np.clip(np.rint(values * (255.0 / (2**bits - 1))), 0, 255).astype(np.uint8)


def _colour_to_gray(pixels: np.ndarray, ds: Dataset, photometric: str) -> np.ndarray:
    if photometric == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, ds)  # uint8 or uint16 by the palette's entry size
        bits = 8 * pixels.dtype.itemsize
    else:
        bits = int(ds.BitsStored)
    rgb = _scale_to_8_bits(pixels, bits)
    return np.asarray(Image.fromarray(rgb).convert("L"))


def _modality(pixels: np.ndarray, ds: Dataset) -> np.ndarray:
    """Modality values; `pixels` itself (no copy) when the Modality LUT is the identity."""
    if ds.get("ModalityLUTSequence"):
        return apply_modality_lut(pixels, ds)
    slope, intercept = _number(ds, "RescaleSlope"), _number(ds, "RescaleIntercept")
    slope = 1.0 if slope is None else slope
    intercept = 0.0 if intercept is None else intercept
    if slope == 1.0 and intercept == 0.0:
        return pixels
    return pixels * slope + intercept


def _voi_lut(values: np.ndarray, ds: Dataset) -> np.ndarray | None:
    """The first VOI LUT applied, as fractions 0..1 of its largest entry; None without one."""
    item = ds.VOILUTSequence[0]
    descriptor, data = item.get("LUTDescriptor"), item.get("LUTData")
    if descriptor is None or data is None:
        return None
    entries, first_mapped = int(descriptor[0]) or 2**16, int(descriptor[1])
    if isinstance(data, bytes):  # OW: 16-bit words in the file's byte order
        little_endian = ds.original_encoding[1] is not False
        data = np.frombuffer(data, dtype="<u2" if little_endian else ">u2")
    lut = np.asarray(data[:entries], dtype=np.float64)
    if lut.size == 0 or lut.max() <= 0:
        return None
    index = np.clip(np.rint(values) - first_mapped, 0, lut.size - 1).astype(np.intp)
    return lut[index] / lut.max()


def _window(values: np.ndarray, ds: Dataset) -> np.ndarray | None:
    """The first window applied (PS3.3 C.11.2.1.2-3), as fractions 0..1; None without one."""
    center, width = _number(ds, "WindowCenter"), _number(ds, "WindowWidth")
    if center is None or width is None or width < 1:
        return None
    function = (_text(ds, "VOILUTFunction") or "LINEAR").upper()
    x = values.astype(np.float64)
    if function == "SIGMOID":  # 1 / (1 + exp(-4 (x - c) / w)), written with tanh: no overflow
        return 0.5 + 0.5 * np.tanh(2.0 * (x - center) / width)
    if function == "LINEAR_EXACT":
        return np.clip((x - center) / width + 0.5, 0.0, 1.0)
    if width == 1:  # LINEAR with width 1 is a threshold at c - 0.5
        return (x > center - 0.5).astype(np.float64)
    return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def _stretch(values: np.ndarray) -> np.ndarray:
    """Maps the 0.5th..99.5th percentile range to fractions 0..1 (see the module docstring)."""
    low, high = np.percentile(values, STRETCH_PERCENTILES)
    if high <= low:
        low, high = values.min(), values.max()
    if high <= low:
        return np.zeros(values.shape)
    fractions = np.subtract(values, low, dtype=np.float64)  # new: the steps below work in place
    fractions /= high - low
    return np.clip(fractions, 0.0, 1.0, out=fractions)


def _monochrome_to_gray(pixels: np.ndarray, ds: Dataset) -> np.ndarray:
    values = _modality(pixels, ds)
    fractions = _voi_lut(values, ds) if ds.get("VOILUTSequence") else None
    if fractions is None:
        fractions = _window(values, ds)
    if fractions is None:
        unchanged_8_bit = values is pixels and pixels.dtype.kind == "u" and ds.BitsStored <= 8
        if unchanged_8_bit:
            return pixels.astype(np.uint8, copy=False)
        fractions = _stretch(values)
    fractions *= 255.0
    return np.rint(fractions, out=fractions).astype(np.uint8)


def decode(data: bytes, max_pixels: int) -> Image.Image:
    """Decodes a single-frame DICOM image to 8-bit grayscale by the rules of the module docstring.

    Args:
      data: the file's bytes.
      max_pixels: larger images are refused before decoding (the builder's --max_image_pixels).

    Returns:
      An "L" image of the file's Columns x Rows.

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
        pixels = _pixels(ds, SUPPORTED_PHOTOMETRIC[photometric])
        if photometric.startswith("MONOCHROME"):
            gray = _monochrome_to_gray(pixels, ds)
            if photometric == "MONOCHROME1":
                gray = 255 - gray
        else:
            gray = _colour_to_gray(pixels, ds, photometric)
    return Image.fromarray(gray)
