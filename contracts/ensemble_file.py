"""The ensemble file (`<stem>.probabilities.json`: members in blend order, threshold) and its loader."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

from contracts.errors import UserInputError, repeat_hint
from contracts.run_folder import RunFolder

# 1: before schema_version and member model folders; 2: before member temperatures (read as 1);
# 3: before REPORT_DIR (read as None: no report known).
SCHEMA_VERSION = 4
REPORT_DIR = "report_dir"  # the report folder ensemble.py wrote with the file, absolute (None: none)
SUFFIX = ".probabilities.json"  # beside the submission CSV


@dataclasses.dataclass(frozen=True)
class Member:
    """One blended model; `model_dir` absolute, None if unknown."""

    name: str
    weight: float
    model_dir: str | None
    backbone: str | None
    temperature: float = 1.0


@dataclasses.dataclass(frozen=True)
class Ensemble:

    path: str
    members: tuple[Member, ...]
    threshold: float
    report_dir: str | None = None
    fit: dict[str, Any] | None = None  # what --fit_on chose (criterion, files, records); None: nothing fitted


def ensemble_path(submission_csv: str) -> str:
    return os.path.splitext(submission_csv)[0] + SUFFIX


def blend_path(submission_csv_or_ensemble_file: str) -> str:
    """The blended-probabilities CSV (image_id, p_abnormal[, label]) the ensemble file describes."""
    path = submission_csv_or_ensemble_file
    stem = path[: -len(SUFFIX)] if path.endswith(SUFFIX) else os.path.splitext(path)[0]
    return stem + os.path.splitext(SUFFIX)[0] + ".csv"


def member_records(names: Sequence[str], sidecars: Sequence[dict[str, Any] | None], paths: Sequence[str],
                   weights: Sequence[float], temperatures: Sequence[float]) -> list[dict[str, Any]]:
    rows = zip(names, sidecars, paths, weights, temperatures)
    return [{"name": name, "path": path, "weight": float(weight), "temperature": float(temperature),
             **{key: (sidecar or {}).get(key) for key in ("backbone", "crop", "model_dir")}}
            for name, sidecar, path, weight, temperature in rows]


def _fail(path: str, what: str) -> UserInputError:
    return UserInputError(f"--ensemble={path}: {what}; pass the .probabilities.json that ensemble.py wrote "
                          "beside its submission")


def load_ensemble(path: str) -> Ensemble:
    """Reads an ensemble file, refusing one without members, weights or a threshold in [0, 1]."""
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
    report_dir = record.get(REPORT_DIR)
    return Ensemble(path=path, members=tuple(members), threshold=float(threshold),
                    report_dir=report_dir if isinstance(report_dir, str) else None,
                    fit=record.get("fit") if isinstance(record.get("fit"), dict) else None)


def match_members(ensemble: Ensemble, model_dirs: Sequence[str]) -> list[tuple[Member, str]]:
    """Pairs each member, in blend order, with its model folder; refuses sets that differ."""
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
        differ = f"; missing: {missing}" if missing else ""
        differ += f"; not in the ensemble: {extra}" if extra else ""
        raise UserInputError(
            f"--ensemble={ensemble.path} blends {sorted(recorded)} but --model_dir gives {sorted(given)}"
            f"{differ}; pass exactly the ensemble's model folders"
            f"{next(filter(None, (repeat_hint(d, 'model_dir', 'model') for d in model_dirs)), '')}")
    return [(m, given[os.path.realpath(m.model_dir)]) for m in ensemble.members]


@dataclasses.dataclass(frozen=True)
class Blended:
    """One model as it is blended, served or explained: its run, name, weight and temperature (1: none)."""

    run: RunFolder
    name: str
    weight: float
    temperature: float


def blended_models(model_dirs: Sequence[str], ensemble: str | None) -> tuple[list[Blended], Ensemble | None]:
    """The `--model_dir` runs in blend order with the ensemble file's weights and temperatures (one run
    without a file: weight 1 and its own temperature), and the loaded file. UserInputError: no run, an
    unreadable one, several without a file, or a file whose members are not exactly these folders."""
    if not model_dirs:
        raise UserInputError("no --model_dir given; pass the folder(s) train.py wrote")
    runs = [RunFolder.open(d) for d in model_dirs]
    if ensemble is None:
        if len(runs) > 1:
            raise UserInputError(f"{len(runs)} --model_dir given without --ensemble; pass the "
                                 ".probabilities.json that ensemble.py wrote beside its submission (its "
                                 "weights, temperatures and threshold), or one model")
        return [Blended(runs[0], runs[0].backbone, 1.0, runs[0].temperature or 1.0)], None
    loaded = load_ensemble(ensemble)
    by_dir = dict(zip(model_dirs, runs))
    pairs = match_members(loaded, model_dirs)
    return [Blended(by_dir[d], m.name, m.weight, m.temperature) for m, d in pairs], loaded
