"""`predict.py --images`'s skipped files, each with its study (contracts.study_ids' rule), read from its
DICOM header when that header reads."""

from __future__ import annotations

from typing import Sequence

from contracts import storage
from contracts.study_ids import study_id
from preprocess.image_error import ImageError
from preprocess.sources import pattern_root


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

