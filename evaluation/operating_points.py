"""Thresholds chosen on validation for a target sensitivity or specificity (chosen on the test records
they would flatter them), measured on test with intervals."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from evaluation import statistics
from evaluation.statistics import Scores

TARGETS = (("sensitivity", 0.90), ("sensitivity", 0.95), ("specificity", 0.90))
OPERATING_POINTS_FILE = "operating_points.json"


def threshold_for(labels: np.ndarray, probs: np.ndarray, metric: str, target: float) -> float:
    """The threshold (p >= t is abnormal) meeting `metric` >= `target` with the other metric as
    high as possible; NaN when the records lack the class the metric needs."""
    labels, probs = np.asarray(labels), np.asarray(probs, dtype=np.float64)
    candidates = np.unique(probs)
    ranked = np.sort(probs[labels == (1 if metric == "sensitivity" else 0)])
    if not len(ranked):
        return math.nan
    keep = math.ceil(target * len(ranked) - 1e-9)
    if metric == "sensitivity":  # at least `keep` positives at or above t: the keep-th highest
        return float(ranked[len(ranked) - keep]) if keep > 0 else float(candidates[-1])
    if keep == 0:  # at least `keep` negatives strictly below t: just above the keep-th lowest
        return float(candidates[0])
    above = candidates[candidates > ranked[keep - 1]]
    return float(above[0]) if len(above) else float(np.nextafter(ranked[keep - 1], math.inf))


def _rates(labels: np.ndarray, probs: np.ndarray, threshold: float) -> tuple[float, float]:
    decided = probs >= threshold
    sens = float(decided[labels == 1].mean()) if (labels == 1).any() else math.nan
    spec = float((~decided[labels == 0]).mean()) if (labels == 0).any() else math.nan
    return sens, spec


def operating_points(val_labels: np.ndarray, val_probs: np.ndarray, test_labels: np.ndarray,
                     test_probs: np.ndarray, resamples: int,
                     test_patients: np.ndarray | None = None) -> list[dict[str, Any]]:
    """One row per `TARGETS` entry: the threshold chosen on validation, the sensitivity and
    specificity it gives there and on test (with intervals); unknown labels left out."""
    vy, vp = np.asarray(val_labels), np.asarray(val_probs, dtype=np.float64)
    ty, tp = np.asarray(test_labels), np.asarray(test_probs, dtype=np.float64)
    known = ty >= 0
    vy, vp, ty, tp = vy[vy >= 0], vp[vy >= 0], ty[known], tp[known]
    groups = statistics.clusters(None if test_patients is None else np.asarray(test_patients)[known], len(ty))
    rows = []
    for metric, target in TARGETS:
        threshold = threshold_for(vy, vp, metric, target)
        if math.isnan(threshold):
            rows.append({"target": f"{metric} {target:.2f}", "threshold": None})
            continue
        val_sens, val_spec = _rates(vy, vp, threshold)
        sens, spec = _rates(ty, tp, threshold)
        decided = tp >= threshold
        drawn = statistics.intervals(groups, {"sensitivity": statistics.rate(decided, ty == 1),
                                              "specificity": statistics.rate(~decided, ty == 0)}, resamples)
        rows.append({"target": f"{metric} {target:.2f}", "metric": metric, "value": target,
                     "threshold": threshold, "validation_sensitivity": val_sens,
                     "validation_specificity": val_spec, "test_sensitivity": sens,
                     "test_sensitivity_ci95": drawn["sensitivity"]["ci95"],
                     "test_specificity": spec, "test_specificity_ci95": drawn["specificity"]["ci95"],
                     "resamples_used": {k: v["resamples_used"] for k, v in drawn.items()}})
    return rows


def section(scores: Sequence[Scores], bootstrap: int) -> dict[str, Any] | None:
    points = {s.name: operating_points(*s.validation, s.labels, s.probs, bootstrap, s.patients)
              for s in scores if s.validation is not None}
    return points or None
