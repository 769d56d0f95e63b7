"""The folder explain.py writes, by name: one owner for its file names and its index's format.

  explanations.json    the index: "models" (name, model_dir, weight, feature map shape and
                       grid: where its cells sit over the input), "threshold",
                       "target", "source" (data_dir and split, or the raw --images), "crop",
                       "image_size", and "images", one entry per image: image_id, group, rank,
                       p_abnormal (as handed over: after the temperatures, blended for an
                       ensemble, as in predict.py's CSV), label (the record's; null: unknown),
                       heatmap (.npy) and overlay (.png) names
  localization.json    the localization score (pointing game and energy in the boxes, beside a
                       centred-Gaussian baseline), or {"scored": false, "reason": ...}
  <group>-<rank>-<id>.npy   the (S, S) float32 Grad-CAM map in [0, 1], S the model's input side
  <group>-<rank>-<id>.png   the stored image with the map over it and the image's boxes drawn
                            (<id>: the image id without its extension, see `file_stem`)

File names in the index are relative to the folder. Groups: `tp`, `fp`, `fn` (the most confident
true positives, false positives and false negatives at the threshold) or `asked` (images named
with --image_ids, or every image of --images). The HTML report reads the folder with `load_index`.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from contracts.errors import UserInputError

INDEX = "explanations.json"
IN_REPORT = "explanations"  # <report>/explanations: the report's index.html shows it (evaluation/html_report.py)
LOCALIZATION = "localization.json"
SCHEMA_VERSION = 1
GROUPS = ("tp", "fp", "fn", "asked")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def file_stem(group: str, rank: int, image_id: str) -> str:
    """The name (without extension) of one image's files: the id without its extension, made safe for
    a file name (DICOM ids are paths), prefixed by its group and rank, which keep two ids apart."""
    return f"{group}-{rank:03d}-{_UNSAFE.sub('_', os.path.splitext(image_id)[0])}"


def load_index(folder: str) -> dict[str, Any]:
    """Reads `folder/explanations.json` and `folder/localization.json` (as the index's
    "localization"; None when absent).

    Raises:
      UserInputError: no index, or not the format this module writes.
    """
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
