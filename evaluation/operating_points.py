"""Operating points: thresholds chosen on validation for a target sensitivity or specificity, and
what they give on the test records, with bootstrap intervals.

A triage reader wants "miss at most 1 in 10 (or 1 in 20) abnormal films" and a screening reader
"flag at most 1 in 10 normal ones"; a threshold chosen on the test records themselves would
flatter both, so it is chosen on validation and only measured on test.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from evaluation import bootstrap

TARGETS = (("sensitivity", 0.90), ("sensitivity", 0.95), ("specificity", 0.90))
OPERATING_POINTS_FILE = "operating_points.json"


def threshold_for(labels: np.ndarray, probs: np.ndarray, metric: str, target: float) -> float:
    """Returns the threshold (p >= t is abnormal) that meets `metric` >= `target` on these records
    with the other metric as high as possible: the highest such t for sensitivity, the lowest for
    specificity. NaN when the records lack the class the metric needs.
    """
    labels, probs = np.asarray(labels), np.asarray(probs, dtype=np.float64)
    candidates = np.unique(probs)
    if metric == "sensitivity":
        positives = np.sort(probs[labels == 1])
        if not len(positives):
            return math.nan
        # Keep at least ceil(target * P) positives at or above t: t is the k-th highest positive.
        keep = math.ceil(target * len(positives) - 1e-9)
        return float(positives[len(positives) - keep]) if keep > 0 else float(candidates[-1])
    if metric == "specificity":
        negatives = np.sort(probs[labels == 0])
        if not len(negatives):
            return math.nan
        # At least ceil(target * N) negatives strictly below t: t is just above the k-th lowest one.
        keep = math.ceil(target * len(negatives) - 1e-9)
        if keep == 0:
            return float(candidates[0])
        above = candidates[candidates > negatives[keep - 1]]
        return float(above[0]) if len(above) else float(np.nextafter(negatives[keep - 1], math.inf))
    raise ValueError(f"metric must be sensitivity or specificity, got {metric!r}")


def _rates(labels: np.ndarray, probs: np.ndarray, threshold: float) -> tuple[float, float]:
    decided = probs >= threshold
    sens = float(decided[labels == 1].mean()) if (labels == 1).any() else math.nan
    spec = float((~decided[labels == 0]).mean()) if (labels == 0).any() else math.nan
    return sens, spec


def _intervals(labels: np.ndarray, probs: np.ndarray, threshold: float, resamples: int,
               patients: np.ndarray | None) -> dict[str, dict[str, Any]]:
    decided = probs >= threshold
    return bootstrap.intervals(bootstrap.clusters(patients, len(labels)), {
        "sensitivity": bootstrap.rate(decided, labels == 1),
        "specificity": bootstrap.rate(~decided, labels == 0)}, resamples)


def operating_points(val_labels: np.ndarray, val_probs: np.ndarray, test_labels: np.ndarray,
                     test_probs: np.ndarray, resamples: int,
                     test_patients: np.ndarray | None = None) -> list[dict[str, Any]]:
    """Returns one row per `TARGETS` entry: the threshold chosen on validation, the validation and
    test sensitivity and specificity it gives, and the test ones' 95% intervals, which resample the
    test patients (`test_patients`, "" unknown; evaluation/bootstrap.py). Records with an unknown
    label (-1) are left out on both sides."""
    vy, vp = np.asarray(val_labels), np.asarray(val_probs, dtype=np.float64)
    ty, tp = np.asarray(test_labels), np.asarray(test_probs, dtype=np.float64)
    vy, vp, ty, tp, patients = (vy[vy >= 0], vp[vy >= 0], ty[ty >= 0], tp[ty >= 0],
                                None if test_patients is None else np.asarray(test_patients)[ty >= 0])
    rows = []
    for metric, target in TARGETS:
        threshold = threshold_for(vy, vp, metric, target)
        if math.isnan(threshold):
            rows.append({"target": f"{metric} {target:.2f}", "threshold": None})
            continue
        val_sens, val_spec = _rates(vy, vp, threshold)
        sens, spec = _rates(ty, tp, threshold)
        drawn = _intervals(ty, tp, threshold, resamples, patients)
        rows.append({"target": f"{metric} {target:.2f}", "metric": metric, "value": target,
                     "threshold": threshold, "validation_sensitivity": val_sens,
                     "validation_specificity": val_spec, "test_sensitivity": sens,
                     "test_sensitivity_ci95": drawn["sensitivity"]["ci95"],
                     "test_specificity": spec, "test_specificity_ci95": drawn["specificity"]["ci95"],
                     "resamples_used": {k: v["resamples_used"] for k, v in drawn.items()}})
    return rows


def format_operating_points(rows: list[dict[str, Any]]) -> str:
    """Returns the operating points as text."""
    def pair(value, ci):
        return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{value:.3f}"

    lines = [f"{'chosen on validation for':<26} {'threshold':>9}  {'test sensitivity (95% CI)':<26} "
             f"test specificity (95% CI, by {bootstrap.UNIT})"]
    for row in rows:
        if row["threshold"] is None:
            lines.append(f"{row['target']:<26} {'n/a':>9}")
            continue
        lines.append(f"{row['target']:<26} {row['threshold']:>9.4f}  "
                     f"{pair(row['test_sensitivity'], row['test_sensitivity_ci95']):<26} "
                     f"{pair(row['test_specificity'], row['test_specificity_ci95'])}")
    return "\n".join(lines)
