"""Calibration in the report: expected calibration error, Brier score and the reliability diagram,
before and after each model's temperature (training/calibration.py)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import brier_score_loss

from contracts.atomic import atomic_path
from models import calibration

RELIABILITY_FILE = "reliability.png"


def calibration_metrics(labels: np.ndarray, probs: np.ndarray, uncalibrated: np.ndarray | None) -> dict[str, Any]:
    """Returns ECE and Brier score of `probs` (and of `uncalibrated`, the same model before its
    temperature, when given) on the known labels."""
    labels = np.asarray(labels)
    known = labels >= 0
    metrics = {"ece": calibration.expected_calibration_error(labels, probs),
               "brier": float(brier_score_loss(labels[known], np.asarray(probs)[known])),
               "ece_bins": calibration.ECE_BINS}
    if uncalibrated is not None:
        metrics["ece_uncalibrated"] = calibration.expected_calibration_error(labels, uncalibrated)
        metrics["brier_uncalibrated"] = float(brier_score_loss(labels[known], np.asarray(uncalibrated)[known]))
    return metrics


def save_reliability_diagram(
    path: str, entries: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray | None]]
) -> None:
    """Writes the reliability diagram: per entry (name, labels, probs, uncalibrated or None), the
    fraction abnormal against the mean P(abnormal) in each of `calibration.ECE_BINS` bins; the curve
    before the temperature dotted in the same colour."""
    figure = Figure(figsize=(6, 6))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], linestyle=":", color="gray", label="perfectly calibrated")
    for index, (name, labels, probs, uncalibrated) in enumerate(entries):
        color = f"C{index % 10}"
        for values, style, suffix in ((probs, "-", ""), (uncalibrated, "--", " before temperature")):
            if values is None:
                continue
            bins = calibration.reliability_bins(labels, values)
            ece = calibration.expected_calibration_error(labels, values)
            axes.plot([b["mean_p"] for b in bins], [b["fraction_abnormal"] for b in bins], style, marker="o",
                      markersize=3, color=color, label=f"{name}{suffix} (ECE {ece:.3f})")
    axes.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted P(abnormal) in the bin",
             ylabel="fraction abnormal in the bin", title=f"Reliability ({calibration.ECE_BINS} bins)")
    axes.legend(loc="upper left", fontsize="x-small")
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=100)
