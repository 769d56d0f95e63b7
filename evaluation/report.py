"""The report of predict.py and ensemble.py: a list of `SECTIONS`, each computed from the entries and
written to its own file (metrics, curves, calibration, operating points, triage, subgroups)."""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from contracts.atomic import atomic_path, json_ready, write_json
from contracts.run_folder import PREDICTED_UNDER
from evaluation import agreement, findings, operating_points, settings, statistics, subgroups, triage_report
from evaluation.statistics import Scores
from models import calibration

METRICS_FILE = "metrics.json"
GAIN_FILE = "ensemble_gain.json"  # ensemble.py: the ensemble against the best single model
SCORED = "scored"  # in each entry: which probability its numbers are computed on (a prediction file column)
# In each entry, from its predictions' sidecar: the split and shard folder scored, the model's run folder.
SCORED_ON = ("split", "data_dir", "model_dir", PREDICTED_UNDER)  # from each prediction file's sidecar

TABLE_ROWS = (
    ("split", "split"),
    ("records", "records"),
    ("prevalence", "prevalence (abnormal)"),
    ("majority_baseline_accuracy", "majority-class accuracy"),
    (SCORED, "probability scored"),
    ("threshold", "threshold"),
    ("accuracy", "accuracy"),
    ("accuracy_ci95", f"  95% CI (by {statistics.UNIT})"),
    ("balanced_accuracy", "balanced accuracy"),
    ("auroc", "AUROC"),
    ("auroc_ci95", f"  95% CI (by {statistics.UNIT})"),
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
class Section:
    """`compute(entries, bootstrap)` gives `file`'s content (a Figure for a PNG, else JSON; None: no
    data); compute None: the tool holding the inputs writes the file (the gain, other labels)."""
    name: str
    compute: Callable[[Sequence[Scores], int], Any] | None
    file: str


def has_known_labels(labels: np.ndarray | None) -> bool:
    return labels is not None and bool((np.asarray(labels) >= 0).any())


def _calibration_metrics(labels: np.ndarray, probs: np.ndarray, uncalibrated) -> dict[str, Any]:
    """ECE and Brier score on the known labels of `probs` (and of `uncalibrated` when given)."""
    known = labels >= 0
    metrics: dict[str, Any] = {"ece_bins": calibration.ECE_BINS}
    for suffix, values in (("", probs), ("_uncalibrated", uncalibrated)):
        if values is not None:
            metrics["ece" + suffix] = calibration.expected_calibration_error(labels, values)
            metrics["brier" + suffix] = float(brier_score_loss(labels[known], np.asarray(values)[known]))
    return metrics


def _reliability_diagram(scores: Sequence[Scores], bootstrap: int) -> Figure:
    """Per entry, the fraction abnormal against the mean P(abnormal) per bin (dashed: uncalibrated)."""
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


def _findings(entry: Scores, bootstrap: int) -> dict[str, Any]:
    """{findings.KEY: its per-finding table} for an entry with finding labels, else nothing."""
    if entry.finding_labels is None:
        return {}
    table = findings.table(entry.finding_labels, entry.finding_probs, entry.patients, bootstrap)
    return {findings.KEY: table}


def _metrics(scores: Sequence[Scores], bootstrap: int) -> dict[str, Any]:
    return {s.name: {**statistics.compute_metrics(s.labels, s.probs, s.threshold, bootstrap=bootstrap,
                                                  patients=s.patients),
                     **_calibration_metrics(s.labels, s.probs, s.uncalibrated),
                     **s.context, **_findings(s, bootstrap), **triage_report.section_of(s, bootstrap)}
            for s in scores}


def _curves(scores: Sequence[Scores], kind: str) -> Figure:
    figure = Figure(figsize=(6, 6))  # no pyplot: no global backend, no display needed
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
    return figure


# In page order; adding a section is one entry here (and a renderer in html_report.py for a JSON one).
SECTIONS = (
    Section("metrics", _metrics, METRICS_FILE),
    Section("ROC", lambda scores, _: _curves(scores, "roc"), "roc.png"),
    Section("precision-recall", lambda scores, _: _curves(scores, "pr"), "precision_recall.png"),
    Section("calibration", _reliability_diagram, "reliability.png"),
    Section("ensemble gain", None, GAIN_FILE),
    Section("operating points", operating_points.section, operating_points.OPERATING_POINTS_FILE),
    Section("triage", triage_report.figure, triage_report.FIGURE_FILE),
    Section("subgroups", subgroups.section, subgroups.SUBGROUPS_FILE),
    Section("other labels", None, agreement.OTHER_LABELS_FILE),
)


def write_report(report_dir: str, scores: Sequence[Scores], *,
                 bootstrap: int = settings.BOOTSTRAP) -> dict[str, Any]:
    """Writes every section the entries have data for; returns metrics.json's content (NaN as None).
    ValueError: duplicate names, or an entry without any known label."""
    names = [entry.name for entry in scores]
    if len(set(names)) != len(names):
        raise ValueError(f"report entries need unique names, got {names}")
    computed = [(section, section.compute(scores, bootstrap)) for section in SECTIONS if section.compute]
    os.makedirs(report_dir, exist_ok=True)
    written = {}
    for section, content in computed:
        path = os.path.join(report_dir, section.file)
        if isinstance(content, Figure):
            with atomic_path(path) as tmp:
                content.savefig(tmp, dpi=100)
        elif content is not None:
            written[section.name] = json_ready(content)  # JSON has no NaN: undefined numbers are null
            write_json(path, written[section.name])
    return written["metrics"]


def gain_line(gain: dict[str, Any]) -> str:
    """One line: the ensemble's AUROC against the best single model's, and the paired difference."""
    interval = gain["ci95"]
    shown = f"[{interval[0]:+.3f}, {interval[1]:+.3f}]" if interval else f"(none: {gain.get('ci95_absent')})"
    return (f"ensemble AUROC {gain['ensemble_auroc']:.3f} vs {gain['best_single']} (best on validation) "
            f"{gain['best_single_auroc']:.3f}: difference {gain['difference']:+.3f}, paired bootstrap 95% "
            f"interval by patient {shown} ({gain.get('resamples_used', 'n/a')} of {gain['resamples']} "
            f"resamples of {gain.get('patients', 'n/a')} patients usable)")


def cell(value: Any) -> str:
    """One table cell: 4 decimals, "n/a" for NaN, "-" for None, a confusion matrix "TN FP / FN TP"."""
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
    """The metrics as a text table: one row per metric, one column per model; then the triage table
    and the per-finding table of each entry that has one."""
    names = list(metrics)
    rows = [["metric"] + names]
    rows += [[label] + [cell(metrics[n].get(key)) for n in names] for key, label in TABLE_ROWS]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join([row[0].ljust(widths[0])] + [text.rjust(w) for text, w in zip(row[1:], widths[1:])])
             for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    parts = (triage_report.format_triage(metrics), findings.format_findings(metrics))
    return "\n\n".join(["\n".join(lines), *(part for part in parts if part)])
