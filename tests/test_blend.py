"""Blending: hand-computed blends and thresholds, joins on ids, fitted weights and thresholds."""

import json
import os

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score

from contracts.errors import UserInputError
from contracts.prediction_files import read_predictions, write_predictions
from evaluation import blend, ensembling
from evaluation.settings import EnsembleConfig

IDS = ["a.png", "b.png", "c.png", "d.png"]
# Columns: efficientnet_b3, densenet121, resnet50.
PROBS = np.array([
    [0.9, 0.5, 0.1],
    [0.2, 0.6, 1.0],
    [0.7, 0.7, 0.7],
    [0.5, 0.8, 0.0],
])
LABELS = np.array([1, 0, 1, 0])
BACKBONES = ("efficientnet_b3", "densenet121", "resnet50")


def _write_models(folder, probs=PROBS, ids=IDS, labels=LABELS, order=None, suffix=""):
    paths = []
    for m, backbone in enumerate(BACKBONES):
        rows = np.arange(len(ids)) if order is None else np.asarray(order[m])
        path = os.path.join(folder, f"{backbone}{suffix}.csv")
        write_predictions(path, [ids[i] for i in rows], probs[rows, m],
                          None if labels is None else labels[rows], {"backbone": backbone, "crop": "none"})
        paths.append(path)
    return paths


def _submission(path, id_column="image_id", label_column="decision"):
    frame = pd.read_csv(path, dtype={id_column: str})
    return dict(zip(frame[id_column], frame[label_column]))


def test_reference_blend_and_threshold_match_hand_computation(tmp_path):
    # 0.6/0.3/0.1 blends: a 0.54+0.15+0.01=0.70, b 0.12+0.18+0.10=0.40, c 0.70, d 0.30+0.24+0=0.54.
    paths = _write_models(str(tmp_path))
    result = ensembling.run_ensemble(EnsembleConfig(paths, str(tmp_path / "sub.csv"), bootstrap=0))
    assert result.weights == pytest.approx({"efficientnet_b3": 0.6, "densenet121": 0.3, "resnet50": 0.1})
    assert result.threshold == 0.6
    assert _submission(result.submission) == {"a.png": 1, "b.png": 0, "c.png": 1, "d.png": 0}
    blended = read_predictions(result.probabilities)
    np.testing.assert_allclose(blended.probs, [0.70, 0.40, 0.70, 0.54])


def test_explicit_weights_are_normalised(tmp_path):
    # 1,1,2 -> 0.25/0.25/0.5: a 0.40, b 0.70, c 0.70, d 0.325; threshold 0.5.
    paths = _write_models(str(tmp_path))
    result = ensembling.run_ensemble(EnsembleConfig(paths, str(tmp_path / "sub.csv"), blend_weight=[1, 1, 2],
                                                    threshold=0.5, submission_id_column="Image Index",
                                                    submission_label_column="Finding", bootstrap=0))
    assert list(result.weights.values()) == pytest.approx([0.25, 0.25, 0.5])
    expected = {"a.png": 0, "b.png": 1, "c.png": 1, "d.png": 0}
    assert _submission(result.submission, "Image Index", "Finding") == expected
    np.testing.assert_allclose(read_predictions(result.probabilities).probs, [0.40, 0.70, 0.70, 0.325])


def test_shuffled_rows_give_the_same_result(tmp_path):
    straight = ensembling.run_ensemble(EnsembleConfig(_write_models(str(tmp_path)), str(tmp_path / "s.csv"),
                                                      bootstrap=0))
    orders = [[0, 1, 2, 3], [3, 1, 0, 2], [2, 0, 3, 1]]  # one row order per model file
    shuffled_paths = _write_models(str(tmp_path), order=orders, suffix="_shuffled")
    shuffled = ensembling.run_ensemble(EnsembleConfig(shuffled_paths, str(tmp_path / "t.csv"), bootstrap=0))
    assert _submission(straight.submission) == _submission(shuffled.submission)
    a, b = read_predictions(straight.probabilities), read_predictions(shuffled.probabilities)
    assert dict(zip(a.ids, a.probs)) == pytest.approx(dict(zip(b.ids, b.probs)))
    assert straight.metrics["ensemble"]["accuracy"] == shuffled.metrics["ensemble"]["accuracy"] == 1.0


def test_missing_sidecar_without_weights_asks_for_weights(tmp_path):
    paths = _write_models(str(tmp_path))
    os.remove(str(tmp_path / "densenet121.json"))
    with pytest.raises(UserInputError, match=r"densenet121\.csv.*--blend_weight"):
        ensembling.run_ensemble(EnsembleConfig(paths, str(tmp_path / "sub.csv"), bootstrap=0))
    result = ensembling.run_ensemble(EnsembleConfig(paths, str(tmp_path / "sub.csv"), blend_weight=[1, 1, 1],
                                                    bootstrap=0))
    assert list(result.weights.values()) == pytest.approx([1 / 3] * 3)


def test_unknown_backbone_has_no_default_weight(tmp_path):
    path = str(tmp_path / "tiny.csv")
    write_predictions(path, IDS, PROBS[:, 0], LABELS, {"backbone": "tiny_test"})
    with pytest.raises(UserInputError, match="tiny_test.*--blend_weight"):
        blend.reference_weights([read_predictions(path)])


@pytest.mark.parametrize("weights, message", [
    ([1, 2], "2 weight.*3 prediction"),
    ([1, -1, 1], "non-negative"),
    ([0, 0, 0], "sum to 0"),
])
def test_bad_weights_are_refused(weights, message):
    with pytest.raises(UserInputError, match=message):
        blend.normalise_weights(weights, 3)


def test_parse_weights_names_the_bad_value():
    assert blend.parse_weights(["0.6", "3e-1", "1"]) == [0.6, 0.3, 1.0]
    with pytest.raises(UserInputError, match="'x'"):
        blend.parse_weights(["0.6", "x"])


def test_simplex_grid_covers_the_simplex():
    grid = blend.simplex_grid(3, 0.25)
    assert len(grid) == 15  # C(4 + 2, 2)
    np.testing.assert_allclose(grid.sum(axis=1), 1.0)
    assert {tuple(row) for row in grid} >= {(1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (0.25, 0.5, 0.25)}
    with pytest.raises(UserInputError, match="must divide 1"):
        blend.simplex_grid(3, 0.3)


def test_best_threshold_is_midway_between_separated_classes():
    labels = np.array([0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    assert blend.best_threshold(labels, scores) == pytest.approx(0.5)


def _validation_set(rng, n=300):
    labels = rng.integers(0, 2, n)
    sharp = np.clip(0.2 + 0.6 * labels + rng.normal(0, 0.12, n), 0, 1)
    weak = np.clip(0.4 + 0.2 * labels + rng.normal(0, 0.3, n), 0, 1)
    noise = rng.uniform(0, 1, n)
    return labels, np.stack([noise, sharp, weak], axis=1)


def test_fit_gives_the_clearly_best_model_the_largest_weight():
    labels, probs = _validation_set(np.random.default_rng(0))
    fit = blend.fit(probs, labels, step=0.05)
    assert int(np.argmax(fit.weights)) == 1
    assert fit.weights.sum() == pytest.approx(1.0)
    assert fit.fitted_weights and fit.fitted_threshold
    assert 0.0 < fit.threshold < 1.0
    # The fit is at least as good as the best single model at its own best threshold.
    alone = blend.decide(probs[:, 1], blend.best_threshold(labels, probs[:, 1]))
    assert fit.balanced_accuracy >= balanced_accuracy_score(labels, alone) - 1e-12


def test_fit_with_a_fixed_threshold_or_fixed_weights_fits_only_the_other():
    labels, probs = _validation_set(np.random.default_rng(1))
    weights_only = blend.fit(probs, labels, step=0.1, threshold=0.5)
    assert weights_only.threshold == 0.5 and not weights_only.fitted_threshold
    assert int(np.argmax(weights_only.weights)) == 1
    threshold_only = blend.fit(probs, labels, weights=np.array([0.0, 1.0, 0.0]))
    np.testing.assert_allclose(threshold_only.weights, [0.0, 1.0, 0.0])
    assert threshold_only.threshold == pytest.approx(blend.best_threshold(labels, probs[:, 1]))
    with pytest.raises(UserInputError, match="nothing to fit"):
        blend.fit(probs, labels, weights=np.array([0.0, 1.0, 0.0]), threshold=0.5)


def _logit(p):
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _logistic_slope(labels, probs):
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(fit_intercept=False, C=np.inf, tol=1e-10, max_iter=10_000)
    return float(model.fit(_logit(probs)[:, None], labels).coef_[0, 0])


RUN_TEMPERATURE = 2.5  # a run's own temperature, which a blend must never apply on top of its own


def _write_scheme(path, ids, raw, labels, backbone, scheme):
    """Writes `raw` (the softmax output) as a file of today's format ("new": p_abnormal after the
    run's temperature, p_uncalibrated raw) or, by hand, of format version 1 ("old": p_abnormal raw,
    p_calibrated after the temperature, a sidecar without the version)."""
    calibrated = _sigmoid(_logit(raw) / RUN_TEMPERATURE)
    sidecar = {"backbone": backbone, "temperature": RUN_TEMPERATURE}
    if scheme == "new":
        write_predictions(path, ids, calibrated, labels, sidecar, uncalibrated=raw)
        return path
    frame = pd.DataFrame({"image_id": ids, "p_abnormal": raw, "p_calibrated": calibrated})
    if labels is not None:
        frame.insert(2, "label", labels)
    frame.to_csv(path, index=False, float_format="%.17g")
    with open(os.path.splitext(path)[0] + ".json", "w") as f:
        json.dump(sidecar, f)
    return path


@pytest.mark.parametrize("scheme", ["new", "old"])
def test_run_ensemble_fits_on_validation_files_and_applies_the_result(tmp_path, scheme):
    # The same softmax outputs, in files of either format: the blend takes their raw column.
    rng = np.random.default_rng(2)
    labels, probs = _validation_set(rng)
    ids = [f"val_{i:04d}.png" for i in range(len(labels))]
    fit_paths = [_write_scheme(str(tmp_path / f"{backbone}_val.csv"), ids, probs[:, m], labels, backbone, scheme)
                 for m, backbone in enumerate(BACKBONES)]
    paths = [_write_scheme(str(tmp_path / f"{backbone}.csv"), IDS, PROBS[:, m], None, backbone, scheme)
             for m, backbone in enumerate(BACKBONES)]
    result = ensembling.run_ensemble(EnsembleConfig(paths, str(tmp_path / "sub.csv"), fit_on=fit_paths,
                                                    fit_step=0.1, bootstrap=0))
    # The one order, computed independently: each member's temperature as the inverse slope of an
    # intercept-free logistic regression on its logit, then weights and threshold on the calibrated members.
    temperatures = [1.0 / _logistic_slope(labels, probs[:, m]) for m in range(probs.shape[1])]
    calibrated = np.stack([_sigmoid(_logit(probs[:, m]) / t) for m, t in enumerate(temperatures)], axis=1)
    expected = blend.fit(calibrated, labels, step=0.1)
    assert list(result.weights.values()) == pytest.approx(list(expected.weights))
    assert result.threshold == pytest.approx(expected.threshold)
    recorded = json.loads(open(tmp_path / "sub.probabilities.json").read())["temperatures"]
    assert list(recorded.values()) == pytest.approx(temperatures, rel=1e-3)
    test_members = np.stack([_sigmoid(_logit(PROBS[:, m]) / t) for m, t in enumerate(temperatures)], axis=1)
    blended = blend.blend(test_members, expected.weights)
    np.testing.assert_allclose(read_predictions(result.probabilities).probs, blended, rtol=1e-6)
    assert _submission(result.submission) == dict(zip(IDS, blend.decide(blended, expected.threshold)))
    assert result.metrics is None  # the test files carry no labels
    assert "balanced accuracy" in ensembling.summary(result)


def test_fit_files_must_pair_with_the_predictions(tmp_path):
    paths = _write_models(str(tmp_path))
    with pytest.raises(UserInputError, match="one validation file per prediction file"):
        ensembling.run_ensemble(EnsembleConfig(paths, str(tmp_path / "sub.csv"), fit_on=paths[:2],
                                               bootstrap=0))
    with pytest.raises(UserInputError, match="same order"):
        ensembling.run_ensemble(EnsembleConfig(paths, str(tmp_path / "sub.csv"), fit_on=paths[::-1],
                                               bootstrap=0))


def test_an_output_that_is_a_folder_is_refused_before_any_work(tmp_path):
    paths = _write_models(str(tmp_path))
    (tmp_path / "sub.csv").mkdir()
    with pytest.raises(UserInputError, match=r"--output=.*sub\.csv is a folder; give a file name in it, e\.g\. "
                                             r"--output=.*sub\.csv/submission\.csv"):
        ensembling.run_ensemble(EnsembleConfig(paths, str(tmp_path / "sub.csv"), bootstrap=0))
    assert os.listdir(tmp_path / "sub.csv") == []


def test_fit_needs_both_classes(tmp_path):
    paths = _write_models(str(tmp_path), labels=np.zeros(4, dtype=int), suffix="_val")
    with pytest.raises(UserInputError, match="one class"):
        ensembling.run_ensemble(EnsembleConfig(paths, str(tmp_path / "sub.csv"), fit_on=paths, bootstrap=0))


def test_the_ensemble_is_compared_with_the_member_best_on_validation_not_on_test(tmp_path):
    from sklearn.metrics import roc_auc_score

    from evaluation import report, statistics

    rng = np.random.default_rng(7)
    names = ["efficientnet_b3", "resnet50"]

    def files(kind: str, n: int, sharp: int) -> tuple[list[str], np.ndarray, np.ndarray]:
        labels = (rng.random(n) < 0.5).astype(int)
        probs = np.stack([np.clip(0.5 + (0.35 if m == sharp else 0.1) * (labels - 0.5) * 2 + rng.normal(0, 0.2, n),
                                  0, 1) for m in range(2)], axis=1)
        paths = []
        for m, name in enumerate(names):
            paths.append(str(tmp_path / f"{kind}.{name}.csv"))
            write_predictions(paths[-1], [f"{kind}{i}" for i in range(n)], probs[:, m], labels, {"backbone": name})
        return paths, labels, probs

    fit_paths, _, _ = files("val", 200, sharp=1)  # resnet50 is the better model on validation...
    test_paths, labels, probs = files("test", 300, sharp=0)  # ...and the worse one on test
    result = ensembling.run_ensemble(EnsembleConfig(test_paths, str(tmp_path / "sub.csv"), fit_on=fit_paths,
                                                    fit_step=0.1, report_dir=str(tmp_path / "report"),
                                                    bootstrap=200))
    gain = result.gain
    assert gain["best_single"] == "resnet50"  # chosen on validation, never on the reported records
    temperatures = json.loads(open(tmp_path / "sub.probabilities.json").read())["temperatures"]
    probs = np.stack([_sigmoid(_logit(probs[:, m]) / temperatures[name]) for m, name in enumerate(names)], axis=1)
    blended = blend.blend(probs, np.array(list(result.weights.values())))
    assert gain["ensemble_auroc"] == pytest.approx(roc_auc_score(labels, blended))
    assert gain["best_single_auroc"] == pytest.approx(roc_auc_score(labels, probs[:, 1]))
    assert gain["difference"] == pytest.approx(roc_auc_score(labels, blended) - roc_auc_score(labels, probs[:, 1]))
    low, high = gain["ci95"]
    assert low <= gain["difference"] <= high and high - low > 0
    with open(tmp_path / "report" / report.GAIN_FILE) as f:
        assert json.load(f)["best_single"] == "resnet50"
    assert "best on validation" in ensembling.summary(result)
    # Paired: a model against itself differs by exactly 0 in every resample, an interval of no width,
    # shown as absent rather than as [0, 0].
    same = statistics.paired_auroc_difference(labels, probs[:, 0], probs[:, 0], 50)
    assert same["difference"] == 0 and same["ci95"] is None and same["resamples_used"] == 50
    assert "(none: it is the same in every resample)" in report.gain_line({**gain, **same})
