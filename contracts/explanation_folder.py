"""The folder explain.py writes: the index `explanations.json` (header, and per image its id, group,
rank, p_abnormal or p_<finding>, label and files), `localization.json`, per image a map `.npy` and
overlay `.png`."""

from __future__ import annotations

import json
import os
import re
from typing import Any

from contracts.errors import UserInputError

INDEX = "explanations.json"
IN_REPORT = "explanations"  # <report>/explanations: the report's index.html shows it
LOCALIZATION = "localization.json"
SCHEMA_VERSION = 1
GROUPS = ("tp", "fp", "fn", "asked")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def file_stem(group: str, rank: int, image_id: str) -> str:
    """One image's file stem: group, rank (keeps two ids apart) and the id made safe (DICOM ids are paths)."""
    return f"{group}-{rank:03d}-{_UNSAFE.sub('_', os.path.splitext(image_id)[0])}"


def load_index(folder: str) -> dict[str, Any]:
    """Reads the index, with localization.json as its "localization" (None when absent)."""
    path = os.path.join(folder, INDEX)
    if not os.path.isfile(path):
        raise UserInputError(f"{path} not found: run explain.py --output_dir={folder} first")
    try:
        with open(path) as f:
            index = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserInputError(f"{path} is not valid JSON ({err}); rerun explain.py") from err
    if not isinstance(index, dict) or not isinstance(index.get("images"), list):
        raise UserInputError(f"{path} has no \"images\" list; rerun explain.py")
    localization = os.path.join(folder, LOCALIZATION)
    index["localization"] = None
    if os.path.isfile(localization):
        with open(localization) as f:
            index["localization"] = json.load(f)
    return index
