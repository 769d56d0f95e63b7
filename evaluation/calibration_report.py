"""Calibration in the report: ECE, Brier score and the reliability diagram, before and after each
model's temperature (training/calibration.py)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import brier_score_loss

from evaluation.statistics import Scores
from training import calibration

RELIABILITY_FILE = "reliability.png"


def calibration_metrics(labels: np.ndarray, probs: np.ndarray,
                        uncalibrated: np.ndarray | None) -> dict[str, Any]:
    """ECE and Brier score on the known labels of `probs` (and of `uncalibrated` when given)."""
    labels = np.asarray(labels)
    known = labels >= 0
    metrics: dict[str, Any] = {"ece_bins": calibration.ECE_BINS}
    for suffix, values in (("", probs), ("_uncalibrated", uncalibrated)):
        if values is not None:
            metrics["ece" + suffix] = calibration.expected_calibration_error(labels, values)
            metrics["brier" + suffix] = float(brier_score_loss(labels[known], np.asarray(values)[known]))
    return metrics


def reliability_diagram(scores: Sequence[Scores], bootstrap: int = 0) -> Figure:
    """Per entry, the fraction abnormal against the mean P(abnormal) in each of
    `calibration.ECE_BINS` bins; the curve before the temperature dashed in the same colour."""
    figure = Figure(figsize=(6, 6))
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], linestyle=":", color="gray", label="perfectly calibrated")
    for index, entry in enumerate(scores):
        curves = ((entry.probs, "-", ""), (entry.uncalibrated, "--", " before temperature"))
        for values, style, suffix in curves:
            if values is None:
                continue
            bins = calibration.reliability_bins(entry.labels, values)
            ece = calibration.expected_calibration_error(entry.labels, values)
            axes.plot([b["mean_p"] for b in bins], [b["fraction_abnormal"] for b in bins], style, marker="o",
                      markersize=3, color=f"C{index % 10}", label=f"{entry.name}{suffix} (ECE {ece:.3f})")
    axes.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted P(abnormal) in the bin",
             ylabel="fraction abnormal in the bin", title=f"Reliability ({calibration.ECE_BINS} bins)")
    axes.legend(loc="upper left", fontsize="x-small")
    return figure
