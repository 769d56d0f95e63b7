"""The ensemble file (`<stem>.probabilities.json`: members in blend order, threshold) and its loader."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

from contracts.errors import UserInputError, repeat_hint
from contracts.labels import FINDINGS
from contracts.output_names import TTA, views
from contracts.run_folder import PREDICTED_UNDER, RunFolder

# 1: before schema_version and member model folders; 2: before member temperatures (read as 1);
# 3: before REPORT_DIR (read as None: no report known); 4: before per-finding weights and temperatures
# (FINDING_WEIGHTS, FINDING_TEMPERATURES in each member's entry; read as None: the findings unblended);
# 5: before TRIAGE and each member's TTA views (read as None: no triage; 1 view); 6: before each member's
# PREDICTED_UNDER (read as None: unrecorded).
SCHEMA_VERSION = 7
TRIAGE = "triage"  # evaluation.triage.to_record of the blend's triage (None: none fitted)
TRIAGE_SINCE = 6  # the schema that added TRIAGE
FINDING_WEIGHTS = "finding_weights"  # in a member's entry: its weight per finding (FINDINGS order)
FINDING_TEMPERATURES = "finding_temperatures"  # in a member's entry: its temperature per finding
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
    finding_weights: tuple[float, ...] | None = None  # normalised over the members, finding by finding
    finding_temperatures: tuple[float, ...] | None = None
    tta: int = 1  # test-time views its predictions averaged (prediction_files.TTA in their sidecar)
    precision: str | None = None  # the dtype policy that computed its predictions (None: unrecorded)


@dataclasses.dataclass(frozen=True)
class Ensemble:

    path: str
    members: tuple[Member, ...]
    threshold: float
    report_dir: str | None = None
    fit: dict[str, Any] | None = None  # what --fit_on chose (criterion, files, records); None: nothing fitted
    triage: dict[str, Any] | None = None  # the TRIAGE record (evaluation.triage.from_record reads it)
    schema_version: int = SCHEMA_VERSION


def ensemble_path(submission_csv: str) -> str:
    return os.path.splitext(submission_csv)[0] + SUFFIX


def blend_path(submission_csv_or_ensemble_file: str) -> str:
    """The blended-probabilities CSV (image_id, p_abnormal[, label]) the ensemble file describes."""
    path = submission_csv_or_ensemble_file
    stem = path[: -len(SUFFIX)] if path.endswith(SUFFIX) else os.path.splitext(path)[0]
    return stem + os.path.splitext(SUFFIX)[0] + ".csv"


MEMBER_KEYS = ("backbone", "crop", "model_dir", PREDICTED_UNDER)  # copied from each member's sidecar


def member_records(names: Sequence[str], sidecars: Sequence[dict[str, Any] | None], paths: Sequence[str],
                   weights: Sequence[float], temperatures: Sequence[float],
                   finding_weights: Sequence[Sequence[float]] | None = None,
                   finding_temperatures: Sequence[Sequence[float]] | None = None) -> list[dict[str, Any]]:
    """One entry per member; `finding_weights` / `finding_temperatures` are (M, 14) (member, finding),
    None when the findings are not blended (the keys are then left out)."""
    rows = zip(names, sidecars, paths, weights, temperatures)
    records = [{"name": name, "path": path, "weight": float(weight), "temperature": float(temperature),
                **{key: (sidecar or {}).get(key) for key in MEMBER_KEYS},
                TTA: views(sidecar)}
               for name, sidecar, path, weight, temperature in rows]
    if finding_weights is not None and finding_temperatures is not None:
        for record, per_weight, per_temperature in zip(records, finding_weights, finding_temperatures):
            record[FINDING_WEIGHTS] = [float(w) for w in per_weight]
            record[FINDING_TEMPERATURES] = [float(t) for t in per_temperature]
    return records


def _fail(path: str, what: str) -> UserInputError:
    return UserInputError(f"--ensemble={path}: {what}; pass the .probabilities.json that ensemble.py wrote "
                          "beside its submission")


def _per_finding(path: str, entry: dict[str, Any], key: str) -> tuple[float, ...] | None:
    values = entry.get(key)
    if values is None:
        return None
    low = 0.0 if key == FINDING_WEIGHTS else 1e-300  # a weight may be 0, a temperature may not
    if (not isinstance(values, list) or len(values) != len(FINDINGS)
            or not all(isinstance(v, (int, float)) and v >= low for v in values)):
        raise _fail(path, f"member {entry['name']!r} has a {key} that is not {len(FINDINGS)} numbers "
                          f"{'>= 0' if key == FINDING_WEIGHTS else '> 0'}")
    return tuple(float(v) for v in values)


def _normalise_findings(path: str, members: list[Member]) -> list[Member]:
    """Each finding's weights over the members summing to 1; None everywhere unless every member has them."""
    if any(m.finding_weights is None or m.finding_temperatures is None for m in members):
        return [dataclasses.replace(m, finding_weights=None, finding_temperatures=None) for m in members]
    totals = [sum(column) for column in zip(*(m.finding_weights for m in members))]
    if min(totals) <= 0:
        raise _fail(path, f"the {FINDING_WEIGHTS} of {FINDINGS[totals.index(min(totals))]} sum to 0")
    return [dataclasses.replace(m, finding_weights=tuple(w / t for w, t in zip(m.finding_weights, totals)))
            for m in members]


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
        model_dir, tta = entry.get("model_dir"), entry.get(TTA, 1)
        if type(tta) is not int or tta < 1:
            raise _fail(path, f"member {entry['name']!r} has {TTA}={tta!r}, not a count of views")
        per_finding = (_per_finding(path, entry, key) for key in (FINDING_WEIGHTS, FINDING_TEMPERATURES))
        precision = entry.get(PREDICTED_UNDER)
        members.append(Member(entry["name"], float(weight), os.path.abspath(model_dir) if model_dir else None,
                              entry.get("backbone"), float(temperature), *per_finding, tta,
                              precision if isinstance(precision, str) else None))
    threshold = record.get("threshold")
    if not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise _fail(path, "no threshold in [0, 1]")
    total = sum(m.weight for m in members)
    if total <= 0:
        raise _fail(path, "weights sum to 0")
    members = _normalise_findings(path, [dataclasses.replace(m, weight=m.weight / total) for m in members])
    report_dir, triage = record.get(REPORT_DIR), record.get(TRIAGE)
    if triage is not None and not isinstance(triage, dict):
        raise _fail(path, f"its {TRIAGE!r} is {type(triage).__name__}, not a record")
    schema = record.get("schema_version", 1)
    return Ensemble(path=path, members=tuple(members), threshold=float(threshold),
                    report_dir=report_dir if isinstance(report_dir, str) else None,
                    fit=record.get("fit") if isinstance(record.get("fit"), dict) else None,
                    triage=triage, schema_version=schema if type(schema) is int else 1)


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
    # Per finding (FINDINGS order), None when the ensemble file has none: weight and temperature.
    finding_weights: tuple[float, ...] | None = None
    finding_temperatures: tuple[float, ...] | None = None


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
        run = runs[0]
        return [Blended(run, run.backbone, 1.0, run.temperature or 1.0, (1.0,) * len(FINDINGS),
                        tuple(t or 1.0 for t in run.finding_temperatures()))], None
    loaded = load_ensemble(ensemble)
    by_dir = dict(zip(model_dirs, runs))
    pairs = match_members(loaded, model_dirs)
    return [Blended(by_dir[d], m.name, m.weight, m.temperature, m.finding_weights, m.finding_temperatures)
            for m, d in pairs], loaded
