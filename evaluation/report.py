"""The metrics report of predict.py and ensemble.py: numbers, table, metrics.json, ROC and PR curves.

Every number comes from scikit-learn. Each model is reported with what makes its accuracy
interpretable: the prevalence, the accuracy of always answering the majority class, 95% intervals
that resample patients (evaluation/bootstrap.py), the threshold used and the crop mode of the shards (cropping only the abnormal training
images that have boxes teaches "zoomed in means abnormal", so the reader must see it).
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_curve,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from contracts.atomic import atomic_path, json_ready, write_json
from contracts.prediction_files import PATIENT
from evaluation import bootstrap, settings
from models.metrics import auroc_or_nan

METRICS_FILE = "metrics.json"
ROC_FILE = "roc.png"
PR_FILE = "precision_recall.png"
GAIN_FILE = "ensemble_gain.json"  # ensemble.py: the ensemble against the best single model
SCORED = "scored"  # in each entry: which probability its numbers are computed on (a prediction file column)

# Row order and labels of the printed table.
TABLE_ROWS = (
    ("records", "records"),
    ("prevalence", "prevalence (abnormal)"),
    ("majority_baseline_accuracy", "majority-class accuracy"),
    (SCORED, "probability scored"),
    ("threshold", "threshold"),
    ("accuracy", "accuracy"),
    ("accuracy_ci95", f"  95% CI (by {bootstrap.UNIT})"),
    ("balanced_accuracy", "balanced accuracy"),
    ("auroc", "AUROC"),
    ("auroc_ci95", f"  95% CI (by {bootstrap.UNIT})"),
    ("auprc", "AUPRC"),
    ("sensitivity", "sensitivity"),
    ("specificity", "specificity"),
    ("f1", "F1"),
    ("confusion_matrix", "TN FP / FN TP"),
    ("patients", "patients (the CIs resample them)"),
    ("images_per_patient", "  images per patient"),
    ("images_without_patient", "  images without patient id (own cluster)"),
    ("brier", "Brier score"),
    ("ece", "ECE"),
    ("ece_uncalibrated", "ECE before temperature"),
    ("crop", "crop (shards)"),
    ("train_crop", "crop (training)"),
)


@dataclasses.dataclass(frozen=True)
class Scores:
    """One model's (or the ensemble's) probabilities to report on.

    Attributes:
      name: the key in metrics.json, e.g. "efficientnet_b3" or "ensemble".
      labels: (N,) 1 abnormal, 0 normal, -1 unknown (left out of every number).
      probs: (N,) P(abnormal).
      threshold: P(abnormal) >= threshold is called abnormal.
      context: extra fields copied into the entry, e.g. {"crop": "bbox", "source": "preds.csv"}.
      uncalibrated: (N,) P(abnormal) before the model's temperature when `probs` is after it, for the
        calibration section's "before"; None when no temperature was applied.
      meta: the patient columns (contracts.prediction_files.META_COLUMNS): `PATIENT` groups the
        records of the bootstrap intervals, the others make the subgroup table.
      validation: (labels, probs) on validation, in the same form as `probs`, for the operating
        points (thresholds are chosen there, never on these records); None leaves them out.
    """

    name: str
    labels: np.ndarray
    probs: np.ndarray
    threshold: float
    context: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    uncalibrated: np.ndarray | None = None
    meta: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    validation: tuple[np.ndarray, np.ndarray] | None = None
    ids: np.ndarray | None = None  # (N,) image ids, for rescoring against another label set

    @property
    def patients(self) -> np.ndarray | None:
        """(N,) patient ids ("" unknown) for the intervals, or None when the predictions carry none."""
        return self.meta.get(PATIENT)


def has_known_labels(labels: np.ndarray | None) -> bool:
    """Whether any label is known (0 or 1), i.e. whether there is anything to report."""
    return labels is not None and bool((np.asarray(labels) >= 0).any())


def _auprc(labels: np.ndarray, probs: np.ndarray) -> float:
    return float(average_precision_score(labels, probs)) if labels.any() else math.nan


def intervals(labels: np.ndarray, probs: np.ndarray, threshold: float, resamples: int,
              patients: np.ndarray | None = None) -> dict[str, Any]:
    """Returns patient-bootstrap 95% intervals of accuracy and AUROC, with what they were formed from.

    Args:
      labels: (N,) 0/1.
      probs: (N,) P(abnormal).
      threshold: for accuracy.
      resamples: resamples of the patients, with replacement (0: no intervals).
      patients: (N,) patient ids ("" unknown: that image is its own cluster); None: all unknown.

    Returns:
      accuracy_ci95 and auroc_ci95 ([low, high], or None where none could be formed), the resamples
      each used (AUROC skips those holding one class), and `bootstrap.Clusters.summary`.
    """
    groups = bootstrap.clusters(patients, len(labels))
    correct = ((probs >= threshold).astype(np.int64) == labels)
    drawn = bootstrap.intervals(groups, {"accuracy": bootstrap.rate(correct, np.ones(len(labels))),
                                         "auroc": bootstrap.auroc(labels, probs)}, resamples)
    return {**groups.summary(),
            **{f"{name}_ci95": value["ci95"] for name, value in drawn.items()},
            **{f"{name}_resamples_used": value["resamples_used"] for name, value in drawn.items()}}


def paired_auroc_difference(labels: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray, resamples: int,
                            patients: np.ndarray | None = None) -> dict[str, Any]:
    """AUROC(a) - AUROC(b) on the same records, with a paired patient-bootstrap 95% interval.

    Each resample draws the patients once and scores both on their images, so the interval is that
    of the difference itself (narrower than comparing two separate intervals when a and b agree often).

    Returns:
      {"difference", "ci95": [low, high] or None, "ci95_absent": why it is None, "resamples",
      "resamples_used", and `bootstrap.Clusters.summary`}.
    """
    groups = bootstrap.clusters(patients, len(labels))
    drawn = bootstrap.intervals(groups, {"difference": bootstrap.difference(
        bootstrap.auroc(labels, probs_a), bootstrap.auroc(labels, probs_b))}, resamples)["difference"]
    return {"difference": auroc_or_nan(labels, probs_a) - auroc_or_nan(labels, probs_b),
            "ci95": drawn["ci95"], "ci95_absent": drawn["absent"], "resamples": int(resamples),
            "resamples_used": drawn["resamples_used"],
            **groups.summary()}


def compute_metrics(
    labels: np.ndarray, probs: np.ndarray, threshold: float, *, bootstrap: int = settings.BOOTSTRAP,
    patients: np.ndarray | None = None,
) -> dict[str, Any]:
    """Returns the report's numbers for one model on the records whose label is known.

    Args:
      labels: (N,) 1 abnormal, 0 normal, -1 unknown (excluded).
      probs: (N,) P(abnormal).
      threshold: P(abnormal) >= threshold is called abnormal.
      bootstrap: resamples of the patients for the 95% intervals (0: none).
      patients: (N,) patient ids ("" unknown), or None; the intervals resample patients.

    Returns:
      accuracy, balanced_accuracy, auroc, auprc, sensitivity, specificity, f1, confusion_matrix
      ([[TN, FP], [FN, TP]], rows true, columns predicted), prevalence, majority_baseline_accuracy,
      threshold, records, unlabeled_excluded, and the intervals of `intervals`. Undefined values are NaN.

    Raises:
      ValueError: no record has a known label.
    """
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    known = labels >= 0
    if not known.any():
        raise ValueError("no record has a known label; there is nothing to report")
    y, p = labels[known], probs[known]
    decisions = (p >= threshold).astype(np.int64)
    prevalence = float(np.mean(y))
    majority = int(prevalence > 0.5)
    metrics = {
        "records": int(known.sum()),
        "unlabeled_excluded": int((~known).sum()),
        "threshold": float(threshold),
        "prevalence": prevalence,
        "majority_baseline_accuracy": float(accuracy_score(y, np.full_like(y, majority))),
        "accuracy": float(accuracy_score(y, decisions)),
        "balanced_accuracy": float(balanced_accuracy_score(y, decisions)) if len(np.unique(y)) == 2 else math.nan,
        "auroc": auroc_or_nan(y, p),
        "auprc": _auprc(y, p),
        "sensitivity": float(recall_score(y, decisions, pos_label=1, zero_division=np.nan)),
        "specificity": float(recall_score(y, decisions, pos_label=0, zero_division=np.nan)),
        "f1": float(f1_score(y, decisions, zero_division=np.nan)),
        "confusion_matrix": confusion_matrix(y, decisions, labels=[0, 1]).tolist(),
        "bootstrap_resamples": int(bootstrap),
    }
    metrics.update(intervals(y, p, threshold, bootstrap, None if patients is None else np.asarray(patients)[known]))
    return metrics


def cell(value: Any) -> str:
    """Returns one table cell: 4 decimals, "n/a" for NaN, "-" for None, a confusion matrix as "TN FP / FN TP"."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4f}"
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, list) for v in value):
        (tn, fp), (fn, tp) = value
        return f"{tn} {fp} / {fn} {tp}"
    if isinstance(value, list):
        return "[" + ", ".join(f"{v:.4f}" for v in value) + "]"
    return str(value)


def format_table(metrics: Mapping[str, Mapping[str, Any]]) -> str:
    """Returns the report as a text table: one row per metric, one column per model."""
    names = list(metrics)
    rows = [["metric"] + names]
    rows += [[label] + [cell(metrics[n].get(key)) for n in names] for key, label in TABLE_ROWS]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def _save_curves(path: str, scores: Sequence[Scores], kind: str) -> None:
    # A bare Figure with the Agg canvas: no pyplot, no global backend switch, no display needed.
    figure = Figure(figsize=(6, 6))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for entry in scores:
        known = entry.labels >= 0
        y, p = entry.labels[known], entry.probs[known]
        if len(np.unique(y)) < 2:
            continue
        if kind == "roc":
            fpr, tpr, _ = roc_curve(y, p)
            axes.plot(fpr, tpr, label=f"{entry.name} (AUROC {roc_auc_score(y, p):.3f})")
        else:
            precision, recall, _ = precision_recall_curve(y, p)
            axes.step(recall, precision, where="post",
                      label=f"{entry.name} (AUPRC {average_precision_score(y, p):.3f})")
    if kind == "roc":
        axes.plot([0, 1], [0, 1], linestyle="--", color="gray", label="chance")
        axes.set(xlabel="1 - specificity (false positive rate)", ylabel="sensitivity (true positive rate)",
                 title="ROC")
    else:
        prevalence = float(np.mean(scores[0].labels[scores[0].labels >= 0]))
        axes.axhline(prevalence, linestyle="--", color="gray", label=f"chance (prevalence {prevalence:.3f})")
        axes.set(xlabel="recall (sensitivity)", ylabel="precision", title="Precision-recall")
    axes.set(xlim=(0, 1), ylim=(0, 1.02))
    axes.legend(loc="lower right" if kind == "roc" else "lower left", fontsize="small")
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=100)


def write_report(
    report_dir: str, scores: Sequence[Scores], *, bootstrap: int = settings.BOOTSTRAP
) -> dict[str, Any]:
    """Computes every entry's metrics and writes metrics.json, roc.png, precision_recall.png, the
    calibration diagram, the subgroup table (entries with patient columns) and the operating points
    (entries with validation predictions); see `sections.write_sections`.

    Args:
      report_dir: created if missing.
      scores: the models (and ensemble) to report, with unique names and labels known somewhere.
      bootstrap: resamples for the 95% intervals.

    Returns:
      {name: metrics} as written to metrics.json (NaN shown as None).

    Raises:
      ValueError: duplicate names, or an entry without any known label.
    """
    names = [entry.name for entry in scores]
    if len(set(names)) != len(names):
        raise ValueError(f"report entries need unique names, got {names}")
    from evaluation import calibration_report, sections

    metrics = {}
    for entry in scores:
        metrics[entry.name] = {**compute_metrics(entry.labels, entry.probs, entry.threshold, bootstrap=bootstrap,
                                                 patients=entry.patients),
                               **calibration_report.calibration_metrics(entry.labels, entry.probs, entry.uncalibrated),
                               **entry.context}
    metrics = json_ready(metrics)  # JSON has no NaN: undefined metrics are null
    os.makedirs(report_dir, exist_ok=True)
    write_json(os.path.join(report_dir, METRICS_FILE), metrics)
    _save_curves(os.path.join(report_dir, ROC_FILE), scores, "roc")
    _save_curves(os.path.join(report_dir, PR_FILE), scores, "pr")
    sections.write_sections(report_dir, scores, bootstrap)
    return metrics
