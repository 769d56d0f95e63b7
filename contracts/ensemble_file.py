"""The ensemble file: what `ensemble.py` chose (members, temperatures, weights, threshold), and its one loader.

`ensemble.py --output=DIR/submission.csv` writes it as `DIR/submission.probabilities.json`, the
sidecar of the blended probabilities. Each member records the model folder its predictions came
from (from the prediction file's own sidecar), so `export.py` (and later tools) can match the
members to trained models. Members are listed in blend order; weights sum to 1. Each member's
temperature (training/calibration.py; 1 when none was fitted) applies to its probability before
the blend: member logit -> temperature -> probability -> weighted blend -> threshold.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

from contracts.errors import UserInputError
from contracts.run_folder import list_hint

# 1: before schema_version and member model folders; 2: before member temperatures (read as 1).
SCHEMA_VERSION = 3
SUFFIX = ".probabilities.json"  # beside the submission CSV


@dataclasses.dataclass(frozen=True)
class Member:
    """One blended model.

    Attributes:
      name: its name in the report and the submission sidecar.
      weight: its blend weight.
      model_dir: absolute path of the training run its predictions came from, None if unknown.
      backbone: its backbone, None if unknown.
      temperature: applied to its probability before the blend (1: none).
    """

    name: str
    weight: float
    model_dir: str | None
    backbone: str | None
    temperature: float = 1.0


@dataclasses.dataclass(frozen=True)
class Ensemble:
    """A loaded ensemble file."""

    path: str
    members: tuple[Member, ...]
    threshold: float


def ensemble_path(submission_csv: str) -> str:
    """Returns the ensemble file written beside `submission_csv`."""
    return os.path.splitext(submission_csv)[0] + SUFFIX


def blend_path(submission_csv_or_ensemble_file: str) -> str:
    """Returns the blended-probabilities CSV (image_id, p_abnormal[, label]) the ensemble file describes."""
    path = submission_csv_or_ensemble_file
    stem = path[: -len(SUFFIX)] if path.endswith(SUFFIX) else os.path.splitext(path)[0]
    return stem + os.path.splitext(SUFFIX)[0] + ".csv"


def member_records(names: Sequence[str], sidecars: Sequence[dict[str, Any] | None], paths: Sequence[str],
                   weights: Sequence[float], temperatures: Sequence[float]) -> list[dict[str, Any]]:
    """Returns the `inputs` entries of the ensemble file, one per member, in blend order."""
    records = []
    for name, sidecar, path, weight, temperature in zip(names, sidecars, paths, weights, temperatures):
        sidecar = sidecar or {}
        records.append({"name": name, "path": path, "weight": float(weight), "temperature": float(temperature),
                        "backbone": sidecar.get("backbone"), "crop": sidecar.get("crop"),
                        "model_dir": sidecar.get("model_dir")})
    return records


def _fail(path: str, what: str) -> UserInputError:
    return UserInputError(f"--ensemble={path}: {what}; pass the .probabilities.json that ensemble.py wrote "
                          "beside its submission")


def load_ensemble(path: str) -> Ensemble:
    """Reads and checks an ensemble file.

    Raises:
      UserInputError: missing, not JSON, or without members, weights or a threshold in range.
    """
    if not os.path.isfile(path):
        raise _fail(path, "not found")
    try:
        with open(path) as f:
            record = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise _fail(path, f"not valid JSON ({err})") from err
    if not isinstance(record, dict) or not isinstance(record.get("inputs"), list) or not record["inputs"]:
        raise _fail(path, "no \"inputs\" list of members")
    weights = record.get("weights") or {}
    members = []
    for entry in record["inputs"]:
        if not isinstance(entry, dict) or "name" not in entry:
            raise _fail(path, "a member without a name")
        weight = entry.get("weight", weights.get(entry["name"]))
        if not isinstance(weight, (int, float)) or weight < 0:
            raise _fail(path, f"member {entry['name']!r} has no usable weight")
        temperature = entry.get("temperature", 1.0)
        if not isinstance(temperature, (int, float)) or not temperature > 0:
            raise _fail(path, f"member {entry['name']!r} has a temperature that is not a positive number")
        model_dir = entry.get("model_dir")
        members.append(Member(entry["name"], float(weight), os.path.abspath(model_dir) if model_dir else None,
                              entry.get("backbone"), float(temperature)))
    threshold = record.get("threshold")
    if not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise _fail(path, "no threshold in [0, 1]")
    total = sum(m.weight for m in members)
    if total <= 0:
        raise _fail(path, "weights sum to 0")
    members = [dataclasses.replace(m, weight=m.weight / total) for m in members]
    return Ensemble(path=path, members=tuple(members), threshold=float(threshold))


def match_members(ensemble: Ensemble, model_dirs: Sequence[str]) -> list[tuple[Member, str]]:
    """Pairs each member with the `--model_dir` it came from, in blend order.

    Raises:
      UserInputError: a member without a recorded model folder, or members and folders that are
        not the same set.
    """
    given = {os.path.realpath(d): d for d in model_dirs}
    unknown = [m.name for m in ensemble.members if m.model_dir is None]
    if unknown:
        raise UserInputError(
            f"--ensemble={ensemble.path}: members {unknown} record no model folder (a file from an older "
            "ensemble.py, or predictions without sidecars); rerun predict.py and ensemble.py, then export")
    recorded = {os.path.realpath(m.model_dir): m for m in ensemble.members}
    missing = sorted(set(recorded) - set(given))
    extra = sorted(set(given) - set(recorded))
    if missing or extra:
        raise UserInputError(
            f"--ensemble={ensemble.path} blends {sorted(recorded)} but --model_dir gives {sorted(given)}"
            f"{f'; missing: {missing}' if missing else ''}{f'; not in the ensemble: {extra}' if extra else ''}; "
            f"pass exactly the ensemble's model folders{next(filter(None, map(list_hint, model_dirs)), '')}")
    return [(m, given[os.path.realpath(m.model_dir)]) for m in ensemble.members]
