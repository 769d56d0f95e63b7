"""Calibration, operating points, subgroups and another label set: each against an independent
implementation (scikit-learn where it has one, a hand formula where it does not)."""

import json
import math

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score, roc_curve

from contracts.errors import UserInputError
from contracts.prediction_files import AGE, SEX, VIEW, read_predictions, write_predictions
from evaluation import agreement, ensembling, operating_points, subgroups
from evaluation.settings import EnsembleConfig
from models import calibration


def _overconfident(rng, n=2000):
    z = rng.normal(0, 1.5, n)  # the true logit: labels are drawn with probability sigmoid(z)...
    labels = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    return labels, 1 / (1 + np.exp(-3.0 * z))  # ...and the model reports a logit three times too large


def test_temperature_is_the_inverse_slope_of_a_logistic_regression_on_the_logit():
    labels, probs = _overconfident(np.random.default_rng(0))
    z = np.log(probs / (1 - probs))
    slope = LogisticRegression(fit_intercept=False, C=np.inf, tol=1e-12, max_iter=10_000).fit(z[:, None], labels)
    temperature = calibration.fit_temperature(labels, probs)
    assert temperature == pytest.approx(1 / slope.coef_[0, 0], rel=1e-4)
    assert 2.5 < temperature < 3.5  # the over-confident model is softened by about its factor 3
    after = calibration.apply_temperature(probs, temperature)
    assert calibration.negative_log_likelihood(labels, after) < calibration.negative_log_likelihood(labels, probs)
    assert roc_auc_score(labels, after) == pytest.approx(roc_auc_score(labels, probs))  # ranking unchanged
    assert calibration.fit_temperature(np.zeros(5, int), np.linspace(0.1, 0.9, 5)) is None  # one class
    unknown = np.concatenate([labels, [-1, -1]])  # unknown labels are ignored
    assert calibration.fit_temperature(unknown, np.concatenate([probs, [0.99, 0.01]])) == pytest.approx(temperature)


def test_expected_calibration_error_matches_scikit_learns_reliability_curve():
    labels, probs = _overconfident(np.random.default_rng(1))
    fraction, mean_p = calibration_curve(labels, probs, n_bins=calibration.ECE_BINS, strategy="uniform")
    counts = np.histogram(probs, bins=np.linspace(0, 1, calibration.ECE_BINS + 1))[0]
    counts = counts[counts > 0]
    expected = float(np.sum(counts * np.abs(fraction - mean_p)) / len(labels))
    assert calibration.expected_calibration_error(labels, probs) == pytest.approx(expected, rel=1e-9)
    bins = calibration.reliability_bins(labels, probs)
    np.testing.assert_allclose([b["fraction_abnormal"] for b in bins], fraction)
    assert calibration.expected_calibration_error(labels, probs) > 0.05  # over-confident: a visible gap


@pytest.mark.parametrize("metric, target", operating_points.TARGETS)
def test_operating_point_thresholds_match_the_roc_curve(metric, target):
    rng = np.random.default_rng(2)
    labels = (rng.random(400) < 0.3).astype(int)
    probs = np.round(np.clip(0.3 + 0.3 * labels + rng.normal(0, 0.2, 400), 0, 1), 2)  # ties on purpose
    fpr, tpr, thresholds = roc_curve(labels, probs, drop_intermediate=False)
    finite = np.isfinite(thresholds) & (thresholds <= 1)
    if metric == "sensitivity":
        expected = thresholds[finite][tpr[finite] >= target].max()
    else:
        expected = thresholds[finite][(1 - fpr[finite]) >= target].min()
    assert operating_points.threshold_for(labels, probs, metric, target) == pytest.approx(expected)


def test_operating_points_are_chosen_on_validation_and_measured_on_test():
    rng = np.random.default_rng(3)
    val_labels = (rng.random(300) < 0.5).astype(int)
    val_probs = np.clip(0.5 + 0.25 * (val_labels - 0.5) * 2 + rng.normal(0, 0.2, 300), 0, 1)
    test_labels = (rng.random(200) < 0.5).astype(int)
    test_probs = np.clip(0.5 + 0.25 * (test_labels - 0.5) * 2 + rng.normal(0, 0.2, 200), 0, 1)
    rows = operating_points.operating_points(val_labels, val_probs, test_labels, test_probs, resamples=200)
    assert [r["target"] for r in rows] == ["sensitivity 0.90", "sensitivity 0.95", "specificity 0.90"]
    for row in rows:
        t = operating_points.threshold_for(val_labels, val_probs, row["metric"], row["value"])
        assert row["threshold"] == t
        decided = test_probs >= t
        assert row["test_sensitivity"] == pytest.approx(decided[test_labels == 1].mean())
        assert row["test_specificity"] == pytest.approx((~decided[test_labels == 0]).mean())
        low, high = row["test_sensitivity_ci95"]
        assert low <= row["test_sensitivity"] <= high
        assert row[f"validation_{row['metric']}"] >= row["value"]


def test_subgroup_rows_match_auroc_on_each_subset():
    rng = np.random.default_rng(4)
    n = 500
    labels = (rng.random(n) < 0.4).astype(int)
    probs = np.clip(0.4 + 0.3 * labels + rng.normal(0, 0.25, n), 0, 1)
    ages = rng.choice([5, 19, 20, 39, 40, 59, 60, 91, -1], n)
    meta = {VIEW: rng.choice(["PA", "AP", ""], n), SEX: rng.choice(["M", "F"], n), AGE: ages}
    rows = subgroups.subgroup_table(labels, probs, meta, resamples=50)
    by_key = {(r["attribute"], r["group"]): r for r in rows}
    band = {5: "<20", 19: "<20", 20: "20-39", 39: "20-39", 40: "40-59", 59: "40-59", 60: ">=60", 91: ">=60",
            -1: "unknown"}
    subsets = {("view", "PA"): meta[VIEW] == "PA", ("view", "AP"): meta[VIEW] == "AP",
               ("view", "unknown"): meta[VIEW] == "", ("sex", "F"): meta[SEX] == "F",
               ("sex", "M"): meta[SEX] == "M",
               **{("age band", b): np.isin(ages, [a for a, name in band.items() if name == b])
                  for b in set(band.values())}}
    assert set(by_key) == set(subsets)
    for key, members in subsets.items():
        assert by_key[key]["n"] == members.sum()
        assert by_key[key]["prevalence"] == pytest.approx(labels[members].mean())
        assert by_key[key]["auroc"] == pytest.approx(roc_auc_score(labels[members], probs[members]))
    assert [r["group"] for r in rows if r["attribute"] == "age band"] == ["<20", "20-39", "40-59", ">=60", "unknown"]


def test_cohens_kappa_by_its_formula():
    own = np.array([1, 1, 1, 0, 0, 0, 1, 0, 1, 1])
    other = np.array([1, 0, 1, 0, 0, 1, 1, 0, 1, 0])
    observed = (own == other).mean()
    chance = own.mean() * other.mean() + (1 - own.mean()) * (1 - other.mean())
    result = agreement.agreement(own, other)
    assert result["kappa"] == pytest.approx((observed - chance) / (1 - chance))
    assert result["agreement"] == observed and result["images"] == 10
    assert math.isnan(agreement.agreement(np.ones(3, int), np.ones(3, int))["kappa"])


def _files(tmp_path, rng):
    ids = np.array([f"img{i:03d}.png" for i in range(120)])
    labels = (rng.random(120) < 0.5).astype(int)
    paths = []
    for m, backbone in enumerate(("resnet50", "densenet121")):
        probs = np.clip(0.5 + (0.2 + 0.1 * m) * (labels - 0.5) * 2 + rng.normal(0, 0.2, 120), 0, 1)
        paths.append(str(tmp_path / f"{backbone}.csv"))
        write_predictions(paths[-1], ids, probs, labels, {"backbone": backbone})
    return ids, labels, paths


def test_ensemble_rescores_against_another_label_set_on_the_shared_images(tmp_path):
    rng = np.random.default_rng(5)
    ids, labels, paths = _files(tmp_path, rng)
    # A panel that read 100 of the 120 images (and 7 the predictions do not hold), flipping 15 calls.
    panel = labels[:100].copy()
    panel[:15] = 1 - panel[:15]
    rows = [f"{i},{'YES' if v else 'NO'}" for i, v in zip(ids[:100], panel)] + [f"other{i}.png,NO" for i in range(7)]
    (tmp_path / "panel.csv").write_text("image_id,panel_abnormal\n" + "\n".join(rows) + "\n")
    result = ensembling.run_ensemble(EnsembleConfig(paths, str(tmp_path / "sub.csv"), blend_weight=[0.5, 0.5],
                                                    threshold=0.5, bootstrap=0,
                                                    other_labels_csv=str(tmp_path / "panel.csv")))
    other = result.other_labels
    assert (other["shared"], other["only_in_predictions"], other["only_in_labels_csv"]) == (100, 20, 7)
    blended = 0.5 * read_predictions(paths[0]).probs + 0.5 * read_predictions(paths[1]).probs
    assert other["metrics"]["ensemble"]["auroc"] == pytest.approx(roc_auc_score(panel, blended[:100]))
    assert other["metrics"]["ensemble"]["records"] == 100
    own, theirs = labels[:100], panel
    observed = (own == theirs).mean()
    chance = own.mean() * theirs.mean() + (1 - own.mean()) * (1 - theirs.mean())
    assert other["agreement_with_own_labels"]["kappa"] == pytest.approx((observed - chance) / (1 - chance))
    with open(tmp_path / "sub_report" / agreement.OTHER_LABELS_FILE) as f:
        assert json.load(f)["shared"] == 100
    assert "Cohen's kappa" in ensembling.summary(result)


@pytest.mark.parametrize("text, message", [("image_id,label\na.png,1\na.png,0\n", "listed twice"),
                                           ("image_id,label\na.png,2\n", "is not a label")])
def test_a_bad_labels_csv_stops_the_ensemble_before_anything_is_written(tmp_path, text, message):
    _, _, paths = _files(tmp_path, np.random.default_rng(6))
    (tmp_path / "bad.csv").write_text(text)
    out = tmp_path / "out"
    with pytest.raises(UserInputError, match=message):
        ensembling.run_ensemble(EnsembleConfig(paths, str(out / "sub.csv"), bootstrap=0,
                                               other_labels_csv=str(tmp_path / "bad.csv")))
    assert not out.exists()


def test_the_ensemble_report_writes_subgroups_operating_points_and_calibration(tmp_path):
    rng = np.random.default_rng(7)
    ids, labels, paths = _files(tmp_path, rng)
    meta = {VIEW: np.array(["PA", "AP"] * 60), SEX: np.array(["M"] * 60 + ["F"] * 60), AGE: np.arange(120) % 90}
    write_predictions(paths[0], ids, read_predictions(paths[0]).probs, labels, {"backbone": "resnet50"}, meta=meta)
    fit_dir = tmp_path / "val"
    fit_dir.mkdir()
    _, val_labels, fit_on = _files(fit_dir, np.random.default_rng(8))
    ensembling.run_ensemble(EnsembleConfig(paths, str(tmp_path / "sub.csv"), fit_on=fit_on, fit_step=0.1,
                                           bootstrap=50))
    report = tmp_path / "sub_report"
    table = json.loads((report / subgroups.SUBGROUPS_FILE).read_text())
    pa = next(r for r in table["ensemble"] if (r["attribute"], r["group"]) == ("view", "PA"))
    assert pa["n"] == 60
    points = json.loads((report / operating_points.OPERATING_POINTS_FILE).read_text())
    assert set(points) == {"resnet50", "densenet121", "ensemble"} and len(points["ensemble"]) == 3
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["resnet50"]["ece_uncalibrated"] is not None and metrics["ensemble"]["ece"] is not None
    assert (report / "reliability.png").stat().st_size > 1000


def test_the_report_page_parses_and_every_image_it_references_exists(tmp_path):
    from html.parser import HTMLParser

    from evaluation import html_report

    rng = np.random.default_rng(9)
    ids, labels, paths = _files(tmp_path, rng)
    fit_dir = tmp_path / "val"
    fit_dir.mkdir()
    _, _, fit_on = _files(fit_dir, np.random.default_rng(10))
    (tmp_path / "panel.csv").write_text("image_id,label\n" + "".join(f"{i},{v}\n" for i, v in zip(ids, labels)))
    meta = {VIEW: np.array(["PA", "AP"] * 60), SEX: np.array(["M", "F"] * 60), AGE: np.arange(120) % 90}
    write_predictions(paths[0], ids, read_predictions(paths[0]).probs, labels, {"backbone": "resnet50"}, meta=meta)
    ensembling.run_ensemble(EnsembleConfig(paths, str(tmp_path / "sub.csv"), fit_on=fit_on, fit_step=0.1,
                                           bootstrap=20, other_labels_csv=str(tmp_path / "panel.csv")))
    report = tmp_path / "sub_report"

    class Collect(HTMLParser):
        def __init__(self):
            super().__init__()
            self.images, self.headings, self.open = [], [], []

        def handle_starttag(self, tag, attrs):
            if tag == "img":
                self.images.append(dict(attrs)["src"])
            if tag not in ("img", "meta", "br"):
                self.open.append(tag)

        def handle_endtag(self, tag):
            assert self.open and self.open.pop() == tag, f"</{tag}> closes nothing"

        def handle_data(self, data):
            if self.open and self.open[-1] == "h2":
                self.headings.append(data)

    page = Collect()
    page.feed((report / html_report.INDEX_FILE).read_text())
    assert not page.open  # every tag closed
    assert page.headings == ["Metrics", "Calibration", "Ensemble against its best member", "Operating points",
                             "Triage", "Subgroups", "Against another label set"]
    assert len(page.images) == 4 and all((report / src).is_file() for src in page.images)
    assert not any(src.startswith(("http:", "https:", "/")) for src in page.images)
