"""Writes small DICOM files with pydicom, in any encoding the tests need.

`write_dicom` takes the stored values as a numpy array and the header fields as arguments, and
writes a DICOM Part 10 file (preamble, `DICM`, file meta) in the transfer syntax asked for:
uncompressed (explicit or implicit VR, little or big endian), compressed by pydicom's encoders
(RLE, JPEG 2000, JPEG-LS), or an already-encoded frame (e.g. a JPEG made by Pillow).
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset, validate_file_meta
from pydicom.encaps import encapsulate
from pydicom.pixels import get_encoder
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)


def can_encode(transfer_syntax: str) -> bool:
    """Whether the installed pydicom plugins can compress to `transfer_syntax`."""
    return get_encoder(transfer_syntax).is_available


def _lut_item(first_mapped: int, lut: np.ndarray) -> Dataset:
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [len(lut), first_mapped, 16])
    item.add_new("LUTData", "OW", np.asarray(lut, "<u2").tobytes())
    return item


def _set_palette(ds: Dataset, palette: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    for colour, lut in zip(("Red", "Green", "Blue"), palette):
        ds.add_new(f"{colour}PaletteColorLookupTableDescriptor", "US", [len(lut), 0, 16])
        ds.add_new(f"{colour}PaletteColorLookupTableData", "OW", np.asarray(lut, "<u2").tobytes())


def _set_header(ds: Dataset, *, patient_id, age, sex, view) -> None:
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.Modality = "DX"
    for keyword, value in (("PatientID", patient_id), ("PatientAge", age), ("PatientSex", sex),
                           ("ViewPosition", view)):
        if value is not None:
            setattr(ds, keyword, value)


def _set_display(ds: Dataset, *, slope, intercept, window, voi_lut, modality_lut) -> None:
    if modality_lut is not None:
        item = _lut_item(*modality_lut)
        item.ModalityLUTType = "US"  # unspecified units
        ds.ModalityLUTSequence = Sequence([item])
    if slope is not None:
        ds.RescaleSlope = slope
    if intercept is not None:
        ds.RescaleIntercept = intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window[0], window[1]
        if len(window) > 2:
            ds.VOILUTFunction = window[2]
    if voi_lut is not None:
        ds.VOILUTSequence = Sequence([_lut_item(*voi_lut)])


def _encode_pixels(ds: Dataset, stored: np.ndarray, transfer_syntax: str, encoded: bytes | None) -> None:
    """Replaces the uncompressed little-endian Pixel Data by its form in `transfer_syntax`."""
    syntax = UID(transfer_syntax)
    if encoded is not None:
        ds.file_meta.TransferSyntaxUID = syntax
        ds.PixelData = encapsulate([encoded])
        ds["PixelData"].VR = "OB"
    elif syntax == ExplicitVRBigEndian:
        ds.file_meta.TransferSyntaxUID = syntax
        ds.PixelData = stored.astype(stored.dtype.newbyteorder(">")).tobytes()
    elif syntax == ImplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = syntax
    elif syntax != ExplicitVRLittleEndian:
        ds.compress(syntax, generate_instance_uid=False)


def _save_unknown_syntax(ds: Dataset, path: str) -> None:
    """Saves a file whose syntax pydicom does not know (e.g. JPEG XL), data set in explicit VR LE."""
    ds.preamble = b"\x00" * 128
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    validate_file_meta(ds.file_meta, enforce_standard=True)  # adds the version and our class UID
    ds.save_as(path, implicit_vr=False, little_endian=True, force_encoding=True)


def write_dicom(
    path: str,
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    slope: float | None = None,
    intercept: float | None = None,
    window: tuple | None = None,
    voi_lut: tuple[int, np.ndarray] | None = None,
    modality_lut: tuple[int, np.ndarray] | None = None,
    palette: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    encoded: bytes | None = None,
    patient_id: str | None = "P0001",
    age: str | None = "062Y",
    sex: str | None = "M",
    view: str | None = "PA",
    frames: int = 1,
    pixel_data: bool = True,
    sop_uid: str | None = None,
    overrides: dict | None = None,
) -> Dataset:
    """Writes `pixels` (the stored values) as a DICOM file at `path` and returns the data set.

    Args:
      path: any name; the content makes it DICOM.
      pixels: (rows, columns) or (rows, columns, 3), dtype uint8/uint16/int8/int16 (int = signed
        Pixel Representation).
      photometric: the Photometric Interpretation.
      bits_stored: defaults to the dtype's bits.
      slope, intercept: Rescale Slope/Intercept, written only when given.
      window: (center, width) or (center, width, VOI LUT Function).
      voi_lut: (first mapped value, 16-bit entries) for a one-item VOI LUT Sequence; LUTs and
        palettes are written little-endian, so keep them to little-endian syntaxes.
      modality_lut: the same for a Modality LUT Sequence.
      palette: red, green, blue 16-bit LUTs for PALETTE COLOR.
      transfer_syntax: uncompressed ones are written directly, compressed ones by `ds.compress`
        unless `encoded` holds the already-compressed frame.
      encoded: one encoded frame to encapsulate as the Pixel Data.
      patient_id, age, sex, view, sop_uid: header fields; None leaves the tag out (a fresh UID
        when `sop_uid` is None).
      frames: > 1 repeats the image as a multi-frame file.
      pixel_data: False leaves Pixel Data out.
      overrides: keyword -> value set last, to write inconsistent headers.
    """
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    _set_header(ds, patient_id=patient_id, age=age, sex=sex, view=view)
    stored = np.stack([pixels] * frames) if frames > 1 else pixels
    ds.set_pixel_data(stored, photometric, bits_stored or 8 * pixels.dtype.itemsize)
    ds.SOPInstanceUID = sop_uid or generate_uid()
    if palette is not None:
        _set_palette(ds, palette)
    _set_display(ds, slope=slope, intercept=intercept, window=window, voi_lut=voi_lut,
                 modality_lut=modality_lut)
    _encode_pixels(ds, stored, transfer_syntax, encoded)
    if not pixel_data:
        del ds.PixelData
    for keyword, value in (overrides or {}).items():
        setattr(ds, keyword, value)
    if UID(transfer_syntax).is_transfer_syntax:
        ds.save_as(path, enforce_file_format=True)
    else:
        _save_unknown_syntax(ds, path)
    return ds
