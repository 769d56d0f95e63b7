"""The report: numbers equal scikit-learn's on the same arrays; files and table as promised."""

import json
import math

import numpy as np
import pytest
from sklearn import metrics as skm

from evaluation import report, statistics


@pytest.fixture()
def scored():
    rng = np.random.default_rng(0)
    labels = (rng.random(120) < 0.3).astype(int)
    probs = np.clip(0.3 + 0.35 * labels + rng.normal(0, 0.2, 120), 0, 1)
    return labels, probs


def test_metrics_equal_scikit_learn(scored):
    labels, probs = scored
    threshold = 0.55
    decisions = (probs >= threshold).astype(int)
    got = statistics.compute_metrics(labels, probs, threshold, bootstrap=0)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(labels, decisions))
    assert got["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(labels, decisions))
    assert got["auroc"] == pytest.approx(skm.roc_auc_score(labels, probs))
    assert got["auprc"] == pytest.approx(skm.average_precision_score(labels, probs))
    assert got["sensitivity"] == pytest.approx(skm.recall_score(labels, decisions))
    assert got["specificity"] == pytest.approx(skm.recall_score(1 - labels, 1 - decisions))
    assert got["f1"] == pytest.approx(skm.f1_score(labels, decisions))
    assert got["confusion_matrix"] == skm.confusion_matrix(labels, decisions).tolist()
    assert got["prevalence"] == pytest.approx(labels.mean())
    assert got["majority_baseline_accuracy"] == pytest.approx(1 - labels.mean())  # normal is the majority here
    assert got["threshold"] == threshold and got["records"] == 120
    assert got["accuracy_ci95"] is None and got["auroc_ci95"] is None


def test_majority_baseline_when_abnormal_is_the_majority():
    # NIH's official test split is 61.5% abnormal: always answering "abnormal" scores 61.5%.
    labels = np.array([1] * 123 + [0] * 77)
    probs = np.linspace(0, 1, labels.size)
    got = statistics.compute_metrics(labels, probs, 0.5, bootstrap=0)
    counts = np.bincount(labels, minlength=2)
    assert got["majority_baseline_accuracy"] == pytest.approx(counts.max() / counts.sum()) == pytest.approx(0.615)
    always_abnormal = skm.accuracy_score(labels, np.ones_like(labels))
    assert got["majority_baseline_accuracy"] == pytest.approx(always_abnormal)


def test_bootstrap_intervals_are_reproducible_and_bracket_the_estimate(scored):
    labels, probs = scored
    first = statistics.compute_metrics(labels, probs, 0.5, bootstrap=300)
    second = statistics.compute_metrics(labels, probs, 0.5, bootstrap=300)
    assert first["auroc_ci95"] == second["auroc_ci95"]
    low, high = first["auroc_ci95"]
    assert low < first["auroc"] < high and high - low < 0.3
    low, high = first["accuracy_ci95"]
    assert low < first["accuracy"] < high
    # The intervals are percentiles of scikit-learn scores on resamples drawn with the report's seed.
    rng = np.random.default_rng(statistics.SEED)
    aurocs = []
    for _ in range(300):
        index = rng.integers(0, len(labels), len(labels))
        aurocs.append(skm.roc_auc_score(labels[index], probs[index]))
    assert first["auroc_ci95"] == pytest.approx([np.percentile(aurocs, 2.5), np.percentile(aurocs, 97.5)])


def test_unknown_labels_are_left_out(scored):
    labels, probs = scored
    with_unknown = np.concatenate([labels, [-1, -1]])
    got = statistics.compute_metrics(with_unknown, np.concatenate([probs, [1.0, 0.0]]), 0.5, bootstrap=0)
    assert got["records"] == 120 and got["unlabeled_excluded"] == 2
    assert got["auroc"] == pytest.approx(skm.roc_auc_score(labels, probs))
    with pytest.raises(ValueError, match="no record has a known label"):
        statistics.compute_metrics(np.array([-1, -1]), np.array([0.1, 0.2]), 0.5)


def test_one_class_gives_undefined_not_made_up_numbers(tmp_path):
    written = report.write_report(str(tmp_path), [report.Scores("m", np.zeros(5, int), np.linspace(0, 1, 5), 0.5)],
                                  bootstrap=20)
    entry = json.loads((tmp_path / "metrics.json").read_text())["m"]
    assert entry["auroc"] is None and entry["sensitivity"] is None and entry["auroc_ci95"] is None
    assert entry["specificity"] == pytest.approx(0.4) and written["m"] == entry


def test_write_report_files_and_table(tmp_path, scored):
    labels, probs = scored
    scores = [
        report.Scores("resnet50", labels, probs, 0.6, {"crop": "bbox", "train_crop": "bbox"}),
        report.Scores("ensemble", labels, np.sqrt(probs), 0.6, {"crop": "bbox"}),
    ]
    written = report.write_report(str(tmp_path / "rep"), scores, bootstrap=50)
    on_disk = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert on_disk == written and list(on_disk) == ["resnet50", "ensemble"]
    for key in ("accuracy", "balanced_accuracy", "auroc", "auprc", "sensitivity", "specificity", "f1",
                "confusion_matrix", "prevalence", "majority_baseline_accuracy", "accuracy_ci95", "auroc_ci95",
                "threshold", "crop"):
        assert key in on_disk["ensemble"], key
    assert on_disk["resnet50"]["crop"] == "bbox" and on_disk["resnet50"]["threshold"] == 0.6
    for name in ("roc.png", "precision_recall.png"):
        assert (tmp_path / "rep" / name).read_bytes()[:4] == b"\x89PNG"
    table = report.format_table(written)
    assert "resnet50" in table and "ensemble" in table and "AUROC" in table
    assert f"{written['ensemble']['auroc']:.4f}" in table
    tn, fp = written["resnet50"]["confusion_matrix"][0]
    assert f"{tn} {fp} / " in table
    with pytest.raises(ValueError, match="unique names"):
        report.write_report(str(tmp_path / "dup"), scores[:1] * 2, bootstrap=0)


def test_nan_metrics_print_as_not_available():
    assert "n/a" in report.format_table({"m": {"auroc": math.nan}})


@pytest.mark.parametrize("seed, ties", [(0, False), (1, True), (2, True)])
def test_the_shared_auroc_equals_scikit_learns_with_ties(seed, ties):
    from sklearn.metrics import roc_auc_score

    from models.metrics import auroc_or_nan

    rng = np.random.default_rng(seed)
    labels = (rng.random(300) < 0.3).astype(int)
    scores = rng.random(300) + 0.3 * labels
    if ties:
        scores = np.round(scores, 1)  # many ties, within and across the classes
    assert auroc_or_nan(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert np.isnan(auroc_or_nan(np.ones(4, int), scores[:4]))
