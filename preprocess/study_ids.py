"""Which study an image belongs to: the one rule the builder's records and predict.py's studies file
(skipped files included) share."""

from __future__ import annotations

import re
from typing import Sequence

from contracts import storage
from preprocess.image_error import ImageError
from preprocess.sources import pattern_root

# NIH ChestX-ray14 names a file <patient>_<follow-up>.png, 8 and 3 digits; each visit holds one image.
NIH_NAME = re.compile(r"(\d{8}_\d{3})\.png", re.IGNORECASE)


def study_id(image_id: str, dicom_study_uid: str | None = None) -> str:
    """A DICOM file's StudyInstanceUID; else an NIH file name's patient and follow-up number
    (".../00000013_005.png" -> "00000013_005"); else the image id itself: the file is its own study."""
    if dicom_study_uid:
        return dicom_study_uid
    nih = NIH_NAME.fullmatch(image_id.replace("\\", "/").rsplit("/", 1)[-1])
    return nih.group(1) if nih else image_id


def _dicom_study(path: str) -> str | None:
    from preprocess import dicom  # pydicom: loaded only when a skipped file may be DICOM

    try:
        if not storage.isfile(path) or not dicom.is_dicom(storage.read_bytes(path, dicom.SIGNATURE_BYTES)):
            return None
        with storage.open_binary(path) as f:
            return dicom.read_tags(f).study_instance_uid
    except (ImageError, OSError):
        return None


def with_studies(images: str, skipped: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """`predict.py --images`'s skip list with each file's "study": a skipped DICOM whose header reads
    (pixels that fail to decode, a view refused) joins its StudyInstanceUID's study."""
    root, found = pattern_root(images), []
    for skip in skipped:
        uid = _dicom_study(storage.join(root, skip["image"]))
        found.append({**skip, "study": study_id(skip["image"], uid)})
    return found

