"""The prediction file: a CSV `image_id,p_abnormal[,label][,p_uncalibrated][,p_spread][,triage]`, with the
findings head p_<finding>, p_uncalibrated_<finding>[, label_<finding>] per NIH finding, + `META_COLUMNS`,
and a JSON sidecar of the same stem; readers refuse what a blend could get wrong."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from contracts.atomic import atomic_path, write_json
from contracts.errors import UserInputError
from contracts.labels import FINDINGS
from contracts.output_names import (
    ID,
    LABEL,
    PROB,
    PROB_UNCALIBRATED,
    SPREAD,
    TRIAGE,
    TRIAGE_GROUPS,
    finding_label,
    finding_prob,
    finding_uncalibrated,
)

FORMAT_VERSION_KEY = "prediction_format_version"  # in the sidecar
FORMAT_VERSION = 2  # 1: p_abnormal was the softmax output and p_calibrated the calibrated one
V1_PROB_CALIBRATED = "p_calibrated"  # format version 1 only
PATIENT = "patient_id"  # optional patient columns, "" (or -1 for age) where unknown
VIEW = "view_position"
SEX = "patient_sex"
AGE = "patient_age"
META_COLUMNS = (PATIENT, VIEW, SEX, AGE)
STUDY = "study_id"  # optional: the record's study (evaluation/studies.py), when the records carry one
UNKNOWN_LABEL = -1
IDS_SHOWN = 5  # offending ids quoted in an error message

_HOW_TO_MAKE = "write it with predict.py (or use training's val_predictions.csv)"


@dataclasses.dataclass(frozen=True)
class FindingColumns:
    """A file's per-finding columns, (N, 14) each in FINDINGS order."""

    probs: np.ndarray  # handed over: after each finding's temperature
    uncalibrated: np.ndarray  # the findings head's sigmoids
    labels: np.ndarray | None = None  # 1, 0, or -1 where the record's findings are unknown

    def take(self, index: np.ndarray) -> FindingColumns:
        return FindingColumns(self.probs[index], self.uncalibrated[index],
                              None if self.labels is None else self.labels[index])


@dataclasses.dataclass(frozen=True)
class Predictions:
    """One validated prediction file, rows in file order."""

    path: str
    ids: np.ndarray
    probs: np.ndarray
    labels: np.ndarray | None
    sidecar: dict[str, Any] | None
    uncalibrated: np.ndarray
    meta: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    findings: FindingColumns | None = None  # None: written without the findings head
    spread: np.ndarray | None = None  # the SPREAD column (None: the file has none)
    triage: np.ndarray | None = None  # the TRIAGE column (None: the file has none)

    @property
    def backbone(self) -> str | None:
        return (self.sidecar or {}).get("backbone")

    @property
    def crop(self) -> str | None:
        return (self.sidecar or {}).get("crop")


@dataclasses.dataclass(frozen=True)
class Aligned:
    """Prediction files joined on image id, rows in the first file's order, column m from file m."""

    ids: np.ndarray
    probs: np.ndarray
    uncalibrated: np.ndarray
    labels: np.ndarray | None
    meta: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    # Per finding, None unless every file has the findings head: (N, M, 14) handed over and uncalibrated,
    # (N, 14) labels merged like `labels` (None when no file has finding labels).
    finding_probs: np.ndarray | None = None
    finding_uncalibrated: np.ndarray | None = None
    finding_labels: np.ndarray | None = None
    spreads: np.ndarray | None = None  # (N, M) each file's SPREAD, 0 where it has none; None: no file has it


def sidecar_path(csv_path: str) -> str:
    return os.path.splitext(csv_path)[0] + ".json"


def few(ids: Iterable[Any], limit: int = IDS_SHOWN) -> str:
    """Up to `limit` ids for an error message, e.g. "a.png, b.png and 3 more"."""
    ids = list(ids)
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown if len(ids) <= limit else f"{shown} and {len(ids) - limit} more"


def write_predictions(path: str, ids: Sequence[str], probs: np.ndarray, labels: np.ndarray | None = None,
                      sidecar: dict[str, Any] | None = None, *, uncalibrated: np.ndarray | None = None,
                      meta: dict[str, np.ndarray] | None = None,
                      findings: FindingColumns | None = None) -> None:
    """Writes a prediction file and its sidecar; None `labels`, `uncalibrated` or `findings` leave
    their columns out. `meta`'s columns go last, in its order: `META_COLUMNS`, SPREAD, TRIAGE."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    columns = {ID: list(ids), PROB: np.asarray(probs, dtype=np.float64)}
    if labels is not None:
        columns[LABEL] = np.asarray(labels, dtype=np.int64)
    if uncalibrated is not None:
        columns[PROB_UNCALIBRATED] = np.asarray(uncalibrated, dtype=np.float64)
    if findings is not None:
        columns.update(_finding_columns(findings))
    columns.update({name: np.asarray(values) for name, values in (meta or {}).items()})
    # repr-exact floats so that reading a file back gives the probabilities that were written.
    with atomic_path(path) as tmp:
        pd.DataFrame(columns).to_csv(tmp, index=False, float_format="%.17g")
    write_json(sidecar_path(path), {**(sidecar or {}), FORMAT_VERSION_KEY: FORMAT_VERSION})


def _finding_columns(findings: FindingColumns) -> dict[str, np.ndarray]:
    columns = {}
    for name, values in ((finding_prob, findings.probs), (finding_uncalibrated, findings.uncalibrated),
                         (finding_label, findings.labels)):
        if values is not None:
            columns.update({name(f): np.asarray(values[:, k]) for k, f in enumerate(FINDINGS)})
    return columns


def _read_findings(path: str, ids: np.ndarray, frame: pd.DataFrame) -> FindingColumns | None:
    def stacked(name, check) -> np.ndarray | None:  # all 14 columns of a kind, or none
        missing = [name(f) for f in FINDINGS if name(f) not in frame.columns]
        if len(missing) == len(FINDINGS):
            return None
        if missing:
            raise UserInputError(f"{path}: has {len(FINDINGS) - len(missing)} of the {len(FINDINGS)} "
                                 f"{name('<finding>')} columns, missing {few(missing)}; {_HOW_TO_MAKE}")
        return np.stack([check(path, ids, frame[name(f)], name(f)) for f in FINDINGS], axis=1)

    probs = stacked(finding_prob, _check_probs)
    if probs is None:
        return None
    uncalibrated = stacked(finding_uncalibrated, _check_probs)
    return FindingColumns(probs, probs if uncalibrated is None else uncalibrated,
                          stacked(finding_label, _check_labels))


def _read_frame(path: str) -> pd.DataFrame:
    if path.endswith(".npy"):
        raise UserInputError(f"{path}: a .npy file carries no image ids, so it cannot be joined safely; "
                             "pass the .csv that predict.py wrote beside it")
    if not os.path.exists(path):
        raise UserInputError(f"{path} not found; {_HOW_TO_MAKE}")
    try:
        # Ids stay text: keep_default_na stops an id such as "NA" from becoming NaN.
        frame = pd.read_csv(path, dtype={ID: str, PATIENT: str, VIEW: str, SEX: str, STUDY: str},
                            keep_default_na=False,
                            na_values={PROB: [""], LABEL: [""], PROB_UNCALIBRATED: [""],
                                       V1_PROB_CALIBRATED: [""], AGE: [""]})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UserInputError(f"{path}: not a readable CSV ({err}); {_HOW_TO_MAKE}") from err
    missing = [c for c in (ID, PROB) if c not in frame.columns]
    if missing:
        has = ", ".join(map(str, frame.columns))
        raise UserInputError(f"{path}: no column {', '.join(missing)} (has: {has}); expected "
                             f"{ID},{PROB}[,{LABEL}]; {_HOW_TO_MAKE}")
    if frame.empty:
        raise UserInputError(f"{path}: no rows; {_HOW_TO_MAKE}")
    return frame


def _check_ids(path: str, ids: np.ndarray) -> None:
    empty = np.flatnonzero(np.char.str_len(ids.astype(str)) == 0)
    if empty.size:
        raise UserInputError(f"{path}: {empty.size} row(s) with an empty {ID} (data rows {few(empty + 1)})")
    counts = pd.Series(ids).value_counts()
    duplicated = counts[counts > 1].index.tolist()
    if duplicated:
        raise UserInputError(f"{path}: {len(duplicated)} duplicate {ID}(s): {few(duplicated)}; each image "
                             "needs one row (was the file concatenated or the split predicted twice?)")


def _check_probs(path: str, ids: np.ndarray, raw: pd.Series, column: str = PROB) -> np.ndarray:
    probs = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(probs)
    if bad.any():
        raise UserInputError(f"{path}: {column} is missing, NaN or not a number for {bad.sum()} id(s): "
                             f"{few(ids[bad])}")
    outside = (probs < 0.0) | (probs > 1.0)
    if outside.any():
        shown = few(f"{i} ({p:g})" for i, p in zip(ids[outside], probs[outside]))
        raise UserInputError(f"{path}: {column} outside [0, 1] for {outside.sum()} id(s): {shown}; expected "
                             "probabilities, not logits or percentages")
    return probs


def _read_meta(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    meta = {name: frame[name].to_numpy(dtype=object).astype(str) for name in (PATIENT, VIEW, SEX)
            if name in frame.columns}
    if AGE in frame.columns:
        ages = pd.to_numeric(frame[AGE], errors="coerce").fillna(-1).to_numpy()
        meta[AGE] = ages.astype(np.int64)
    if STUDY in frame.columns:
        meta[STUDY] = frame[STUDY].to_numpy(dtype=object).astype(str)
    return meta


def _check_labels(path: str, ids: np.ndarray, raw: pd.Series, column: str = LABEL) -> np.ndarray:
    labels = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isin(labels, (UNKNOWN_LABEL, 0, 1))
    if bad.any():
        raise UserInputError(f"{path}: {column} must be 0, 1 or -1 (unknown); {bad.sum()} id(s) have other "
                             f"values: {few(ids[bad])}")
    return labels.astype(np.int64)


def _read_sidecar(csv_path: str) -> dict[str, Any] | None:
    path = sidecar_path(csv_path)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            sidecar = json.load(f)
    except json.JSONDecodeError as err:
        raise UserInputError(f"{path}: sidecar is not valid JSON ({err}); delete or rewrite it") from err
    if not isinstance(sidecar, dict):
        raise UserInputError(f"{path}: sidecar must be a JSON object with at least \"backbone\"")
    version = sidecar.get(FORMAT_VERSION_KEY, 1)
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
        raise UserInputError(f"{path}: {FORMAT_VERSION_KEY} {version!r} is not one this project reads (1 to "
                             f"{FORMAT_VERSION}); write the file with this project's predict.py")
    return sidecar


def _read_probabilities(path: str, ids: np.ndarray, frame: pd.DataFrame,
                        version: int) -> tuple[np.ndarray, np.ndarray]:
    first = _check_probs(path, ids, frame[PROB])
    if version == 1:  # PROB was the softmax output, V1_PROB_CALIBRATED (if any) the handed-over one
        handed = (_check_probs(path, ids, frame[V1_PROB_CALIBRATED], V1_PROB_CALIBRATED)
                  if V1_PROB_CALIBRATED in frame.columns else first)
        return handed, first
    uncalibrated = (_check_probs(path, ids, frame[PROB_UNCALIBRATED], PROB_UNCALIBRATED)
                    if PROB_UNCALIBRATED in frame.columns else first)
    return first, uncalibrated


def read_predictions(path: str) -> Predictions:
    """Reads and validates one prediction file and its sidecar (`UserInputError` naming a few ids)."""
    frame = _read_frame(path)
    ids = frame[ID].to_numpy(dtype=object)
    _check_ids(path, ids)
    sidecar = _read_sidecar(path)
    version = (sidecar or {}).get(FORMAT_VERSION_KEY, 1)
    probs, uncalibrated = _read_probabilities(path, ids, frame, version)
    labels = _check_labels(path, ids, frame[LABEL]) if LABEL in frame.columns else None
    spread = _check_probs(path, ids, frame[SPREAD], SPREAD) if SPREAD in frame.columns else None
    triage = frame[TRIAGE].to_numpy(dtype=object) if TRIAGE in frame.columns else None
    if triage is not None and not set(triage) <= set(TRIAGE_GROUPS):
        odd = sorted(set(map(str, triage)) - set(TRIAGE_GROUPS))
        raise UserInputError(f"{path}: column {TRIAGE} holds {few(odd)}, not one of "
                             f"{', '.join(TRIAGE_GROUPS)}; {_HOW_TO_MAKE}")
    return Predictions(path=path, ids=ids, probs=probs, labels=labels, sidecar=sidecar,
                       uncalibrated=uncalibrated, meta=_read_meta(frame), format_version=version,
                       findings=_read_findings(path, ids, frame), spread=spread, triage=triage)


def _check_same_ids(first: Predictions, other: Predictions) -> None:
    first_ids, other_ids = set(first.ids), set(other.ids)
    if first_ids == other_ids:
        return
    extra, missing = sorted(other_ids - first_ids), sorted(first_ids - other_ids)
    parts = ([f"{len(extra)} id(s) not in {first.path}: {few(extra)}"] if extra else []) + (
        [f"{len(missing)} id(s) of {first.path} missing: {few(missing)}"] if missing else [])
    raise UserInputError(f"{other.path}: different image ids from {first.path} ({'; '.join(parts)}); "
                         "predictions must cover the same images: predict every model on the same shards")


def _merge_labels(files: Sequence[Predictions], order: Sequence[np.ndarray],
                  columns: Sequence[np.ndarray | None] | None = None, what: str = "labels"
                  ) -> np.ndarray | None:
    """Each file's `columns` (default: its labels; (N,) or (N, 14)) merged, unknowns filled from others."""
    merged = None
    for file, index, values in zip(files, order, columns or [f.labels for f in files]):
        if values is None:
            continue
        labels = values[index]
        if merged is None:
            merged = labels.copy()
            source = file.path
            continue
        both = (merged != UNKNOWN_LABEL) & (labels != UNKNOWN_LABEL)
        conflict = (both & (merged != labels)).reshape(len(labels), -1).any(axis=1)
        if conflict.any():
            raise UserInputError(f"{file.path}: {what} disagree with {source} for {conflict.sum()} id(s): "
                                 f"{few(files[0].ids[conflict])}; the files have different label sources")
        merged = np.where(merged == UNKNOWN_LABEL, labels, merged)
    return merged


def align(files: Sequence[Predictions]) -> Aligned:
    """Joins prediction files on image id, the findings too when every file has them; refuses differing
    id sets and known labels (binary or per finding) that disagree."""
    if not files:
        raise UserInputError("no prediction files given; pass at least one CSV written by predict.py")
    first = files[0]
    position = pd.Series(np.arange(len(first.ids)), index=pd.Index(first.ids))
    order = []
    for file in files:
        _check_same_ids(first, file)
        # index[k] is the row of `file` that holds first.ids[k].
        index = np.empty(len(first.ids), dtype=np.int64)
        index[position.loc[file.ids].to_numpy()] = np.arange(len(file.ids))
        order.append(index)
    probs = np.stack([file.probs[index] for file, index in zip(files, order)], axis=1)
    uncalibrated = np.stack([file.uncalibrated[index] for file, index in zip(files, order)], axis=1)
    meta: dict[str, np.ndarray] = {}
    for file, index in zip(files, order):
        for name, values in file.meta.items():
            meta.setdefault(name, values[index])
    findings = {}
    if all(file.findings is not None for file in files):
        columns = [(file.findings, index) for file, index in zip(files, order)]
        findings = {"finding_probs": np.stack([f.probs[index] for f, index in columns], axis=1),
                    "finding_uncalibrated": np.stack([f.uncalibrated[index] for f, index in columns], axis=1),
                    "finding_labels": _merge_labels(files, order, [f.labels for f, _ in columns],
                                                    "finding labels")}
    spreads = None
    if any(file.spread is not None for file in files):
        spreads = np.stack([np.zeros(len(index)) if file.spread is None else file.spread[index]
                            for file, index in zip(files, order)], axis=1)
    return Aligned(ids=first.ids, probs=probs, uncalibrated=uncalibrated, labels=_merge_labels(files, order),
                   meta=meta, spreads=spreads, **findings)
