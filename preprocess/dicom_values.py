"""Values from an untrusted DICOM data set: its tags read tolerantly, and its decoded pixels mapped
to 8-bit gray (colour; monochrome Modality LUT, then VOI LUT, window or default range)."""

from __future__ import annotations

import struct

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut

# Default display range when a monochrome image has no window: robust to a few extreme pixels.
STRETCH_PERCENTILES = (0.5, 99.5)
# pydicom converts values when first read, so corrupt input can fail at any step with any of these.
CORRUPT_INPUT_ERRORS = (InvalidDicomError, BytesLengthException, struct.error, ValueError,
                        TypeError, KeyError, IndexError, EOFError, OSError, OverflowError,
                        NotImplementedError, AttributeError, RuntimeError)


def tag_value(ds: Dataset, keyword: str):
    """The value of a tag; None when absent or unreadable (pydicom converts it only now)."""
    try:
        return ds.get(keyword)
    except CORRUPT_INPUT_ERRORS:
        return None


def tag_text(ds: Dataset, keyword: str) -> str | None:
    """A tag's value as stripped text, or None."""
    value = tag_value(ds, keyword)
    text = str(value).strip() if value is not None else ""
    return text or None


def tag_number(ds: Dataset, keyword: str) -> float | None:
    """The first value of a numeric tag, or None when absent, empty or not a number."""
    value = tag_value(ds, keyword)
    if isinstance(value, (list, tuple, MultiValue)):
        value = value[0] if len(value) else None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def colour_to_gray(pixels: np.ndarray, ds: Dataset, photometric: str) -> np.ndarray:
    """RGB (after the palette), scaled to 8 bits, then Pillow's luma, as for a colour PNG."""
    if photometric == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, ds)  # uint8 or uint16 by the palette's entry size
        bits = 8 * pixels.dtype.itemsize
    else:
        bits = int(ds.BitsStored)
    if pixels.dtype != np.uint8:
        pixels = np.clip(np.rint(pixels * (255.0 / (2**bits - 1))), 0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(pixels).convert("L"))


def _modality(pixels: np.ndarray, ds: Dataset) -> np.ndarray:
    """Modality values; `pixels` itself (no copy) when the Modality LUT is the identity."""
    if ds.get("ModalityLUTSequence"):
        return apply_modality_lut(pixels, ds)
    slope, intercept = tag_number(ds, "RescaleSlope"), tag_number(ds, "RescaleIntercept")
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
    center, width = tag_number(ds, "WindowCenter"), tag_number(ds, "WindowWidth")
    if center is None or width is None or width < 1:
        return None
    function = (tag_text(ds, "VOILUTFunction") or "LINEAR").upper()
    x = values.astype(np.float64)
    if function == "SIGMOID":  # 1 / (1 + exp(-4 (x - c) / w)), written with tanh: no overflow
        return 0.5 + 0.5 * np.tanh(2.0 * (x - center) / width)
    if function == "LINEAR_EXACT":
        return np.clip((x - center) / width + 0.5, 0.0, 1.0)
    if width == 1:  # LINEAR with width 1 is a threshold at c - 0.5
        return (x > center - 0.5).astype(np.float64)
    return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def _stretch(values: np.ndarray) -> np.ndarray:
    """Maps the STRETCH_PERCENTILES range (else min..max) to fractions 0..1."""
    low, high = np.percentile(values, STRETCH_PERCENTILES)
    if high <= low:
        low, high = values.min(), values.max()
    if high <= low:
        return np.zeros(values.shape)
    fractions = np.subtract(values, low, dtype=np.float64)  # new: the steps below work in place
    fractions /= high - low
    return np.clip(fractions, 0.0, 1.0, out=fractions)


def monochrome_to_gray(pixels: np.ndarray, ds: Dataset) -> np.ndarray:
    """8-bit display values before the MONOCHROME1 inversion: the first VOI LUT, else the first
    window, else unchanged 8-bit data as stored, else the percentile stretch."""
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
