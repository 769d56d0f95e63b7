"""Which study an image belongs to: the one rule the builder's records and predict.py's studies file
(skipped files included, `preprocess/skipped_studies.py`) share."""

from __future__ import annotations

import re

# NIH ChestX-ray14 names a file <patient>_<follow-up>.png, 8 and 3 digits; each visit holds one image.
NIH_NAME = re.compile(r"(\d{8}_\d{3})\.png", re.IGNORECASE)


def study_id(image_id: str, dicom_study_uid: str | None = None) -> str:
    """A DICOM file's StudyInstanceUID; else an NIH file name's patient and follow-up number
    (".../00000013_005.png" -> "00000013_005"); else the image id itself: the file is its own study."""
    if dicom_study_uid:
        return dicom_study_uid
    nih = NIH_NAME.fullmatch(image_id.replace("\\", "/").rsplit("/", 1)[-1])
    return nih.group(1) if nih else image_id
