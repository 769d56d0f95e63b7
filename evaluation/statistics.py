"""The report's numbers: the entries scored, metrics, and 95% intervals by a percentile bootstrap over
patients (NIH has up to 184 images per patient), one seed so a report's entries share resamples."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    recall_score,
)

from contracts.prediction_files import PATIENT
from evaluation import settings
from models.metrics import auroc_or_nan

SEED = 0
UNIT = "patient"
_BLOCK = 64  # resamples weighed at once: (_BLOCK, images) float64 weights

Statistic = Callable[[np.ndarray], np.ndarray]  # (B, N) record weights -> (B,) values, NaN: not formed


@dataclasses.dataclass(frozen=True)
class Scores:
    """One report entry: a model's (or the ensemble's) P(abnormal) and what it is judged against."""
    name: str
    labels: np.ndarray  # 1 abnormal, 0 normal, -1 unknown (left out of every number)
    probs: np.ndarray
    threshold: float
    context: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # copied into its metrics
    uncalibrated: np.ndarray | None = None  # probs before the temperature (None: none applied)
    meta: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)  # prediction_files.META_COLUMNS
    validation: tuple[np.ndarray, np.ndarray] | None = None  # (labels, probs): operating points' choice
    ids: np.ndarray | None = None  # image ids, for another label set
    # Per NIH finding (contracts.labels.FINDINGS order), None without a findings head: (N, 14) labels
    # (1, 0, or -1 where the record's findings are unknown) and (N, 14) handed-over probabilities.
    finding_labels: np.ndarray | None = None
    finding_probs: np.ndarray | None = None
    # Three-way triage (evaluation/triage.py): the fitted Triage (None: none) and each image's p_spread
    # (None: no spread), from which `evaluation.triage.groups` sorts the entry's images.
    triage: Any = None
    spread: np.ndarray | None = None

    @property
    def patients(self) -> np.ndarray | None:  # "" unknown; None: the predictions carry none
        return self.meta.get(PATIENT)


@dataclasses.dataclass(frozen=True)
class Clusters:
    """`index` (N,) numbers each record's patient, known patients first; each of the `alone` records
    without a patient id is a cluster of its own."""
    index: np.ndarray
    count: int
    alone: int

    @property
    def patients(self) -> int:
        return self.count - self.alone

    def subset(self, mask: np.ndarray) -> Clusters:
        kept, index = np.unique(self.index[mask], return_inverse=True)
        return Clusters(index.astype(np.int64).reshape(-1), len(kept), int((kept >= self.patients).sum()))

    def summary(self) -> dict[str, Any]:
        shared = len(self.index) - self.alone
        return {"bootstrap_by": UNIT, "patients": self.patients,
                "images_per_patient": shared / self.patients if self.patients else math.nan,
                "images_without_patient": self.alone}


def clusters(patient_ids: np.ndarray | None, records: int) -> Clusters:
    """Groups records by patient id (known ones numbered by first appearance); "" stands alone."""
    ids = np.full(records, "") if patient_ids is None else np.asarray(patient_ids).astype(str)
    if len(ids) != records:
        raise ValueError(f"{len(ids)} patient ids for {records} records")
    unknown = np.char.str_len(np.char.strip(ids)) == 0 if records else np.zeros(0, dtype=bool)
    index = np.empty(records, dtype=np.int64)
    codes, uniques = pd.factorize(ids[~unknown])
    index[~unknown] = codes
    alone = int(unknown.sum())
    index[unknown] = len(uniques) + np.arange(alone)
    return Clusters(index, len(uniques) + alone, alone)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan)


def rate(hits: np.ndarray, among: np.ndarray) -> Statistic:
    hits, among = np.asarray(hits, dtype=np.float64), np.asarray(among, dtype=np.float64)
    return lambda w: _ratio(w @ (hits * among), w @ among)


def auroc(labels: np.ndarray, probs: np.ndarray) -> Statistic:
    """The weighted Mann-Whitney AUROC (ties count one half)."""
    labels, probs = np.asarray(labels), np.asarray(probs, dtype=np.float64)
    order = np.argsort(probs, kind="stable")
    ordered = probs[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]) if len(ordered) else np.zeros(0, int)
    positive, negative = (labels[order] == 1).astype(np.float64), (labels[order] == 0).astype(np.float64)

    def statistic(w: np.ndarray) -> np.ndarray:
        if not len(starts):
            return np.full(len(w), np.nan)
        w = w[:, order]
        pos = np.add.reduceat(w * positive, starts, axis=1)
        neg = np.add.reduceat(w * negative, starts, axis=1)
        below = np.cumsum(neg, axis=1) - neg  # negative weight strictly below each tie group
        return _ratio((pos * (below + 0.5 * neg)).sum(axis=1), pos.sum(axis=1) * neg.sum(axis=1))

    return statistic


def intervals(groups: Clusters, statistics: Mapping[str, Statistic], resamples: int,
              seed: int = SEED) -> dict[str, dict[str, Any]]:
    """Per statistic, {"ci95", "resamples_used", "absent": why ci95 is None} over resamples of the
    clusters, leaving out those where it is NaN (one class)."""
    values: dict[str, list[np.ndarray]] = {name: [] for name in statistics}
    rng = np.random.default_rng(seed)
    for start in range(0, resamples if groups.count else 0, _BLOCK):
        # (B, N) record weights, how often each record's cluster was drawn: a metric of the drawn
        # multiset equals the weighted metric, so no resample is materialised.
        counts = np.stack([np.bincount(rng.integers(0, groups.count, groups.count), minlength=groups.count)
                           for _ in range(min(_BLOCK, resamples - start))])
        w = counts[:, groups.index].astype(np.float64)
        for name, statistic in statistics.items():
            values[name].append(statistic(w))
    result = {}
    for name, parts in values.items():
        drawn = np.concatenate(parts) if parts else np.zeros(0)
        usable = drawn[np.isfinite(drawn)]
        ci95 = absent = None
        if not len(usable):
            absent = "no resample could form it"
        elif usable.min() == usable.max():  # one cluster, or a statistic resampling cannot move: not [x, x]
            absent = "it is the same in every resample"
        else:
            ci95 = [float(np.percentile(usable, 2.5)), float(np.percentile(usable, 97.5))]
        result[name] = {"ci95": ci95, "resamples_used": len(usable), "absent": absent}
    return result


def compute_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float, *,
                    bootstrap: int = settings.BOOTSTRAP,
                    patients: np.ndarray | None = None) -> dict[str, Any]:
    """One model's numbers on the known labels, with accuracy and AUROC intervals over `bootstrap`
    resamples of `patients`; NaN where undefined. ValueError when no label is known."""
    labels, probs = np.asarray(labels, dtype=np.int64), np.asarray(probs, dtype=np.float64)
    known = labels >= 0
    if not known.any():
        raise ValueError("no record has a known label; there is nothing to report")
    y, p = labels[known], probs[known]
    decisions = (p >= threshold).astype(np.int64)
    prevalence = float(np.mean(y))
    groups = clusters(None if patients is None else np.asarray(patients)[known], len(y))
    drawn = intervals(groups, {"accuracy": rate(decisions == y, np.ones(len(y))), "auroc": auroc(y, p)},
                      bootstrap)
    return {
        "records": int(known.sum()),
        "unlabeled_excluded": int((~known).sum()),
        "threshold": float(threshold),
        "prevalence": prevalence,
        "majority_baseline_accuracy": float(accuracy_score(y, np.full_like(y, int(prevalence > 0.5)))),
        "accuracy": float(accuracy_score(y, decisions)),
        "balanced_accuracy": float(balanced_accuracy_score(y, decisions)) if len(set(y)) == 2 else math.nan,
        "auroc": auroc_or_nan(y, p),
        "auprc": float(average_precision_score(y, p)) if y.any() else math.nan,
        "sensitivity": float(recall_score(y, decisions, pos_label=1, zero_division=np.nan)),
        "specificity": float(recall_score(y, decisions, pos_label=0, zero_division=np.nan)),
        "f1": float(f1_score(y, decisions, zero_division=np.nan)),
        "confusion_matrix": confusion_matrix(y, decisions, labels=[0, 1]).tolist(),
        "bootstrap_resamples": int(bootstrap),
        **groups.summary(),
        **{f"{name}_ci95": value["ci95"] for name, value in drawn.items()},
        **{f"{name}_resamples_used": value["resamples_used"] for name, value in drawn.items()},
    }


def paired_auroc_difference(labels: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray, resamples: int,
                            patients: np.ndarray | None = None) -> dict[str, Any]:
    """AUROC(a) - AUROC(b) with a paired interval: each resample draws the patients once and scores
    both, so the interval is that of the difference itself."""
    groups = clusters(patients, len(labels))
    a, b = auroc(labels, probs_a), auroc(labels, probs_b)
    drawn = intervals(groups, {"difference": lambda w: a(w) - b(w)}, resamples)["difference"]
    return {"difference": auroc_or_nan(labels, probs_a) - auroc_or_nan(labels, probs_b),
            "ci95": drawn["ci95"], "ci95_absent": drawn["absent"], "resamples": int(resamples),
            "resamples_used": drawn["resamples_used"], **groups.summary()}
