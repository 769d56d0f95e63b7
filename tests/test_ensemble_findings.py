"""ensemble.py and predict.py --ensemble on the fourteen findings: per-finding temperatures and weights
(fitted by AUROC on validation, or the binary weights), checked against numpy and scikit-learn."""

import json
import logging
import os

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, roc_auc_score

from contracts import ensemble_file
from contracts.errors import UserInputError
from contracts.labels import FINDINGS
from contracts.output_names import finding_label, finding_prob, finding_uncalibrated
from contracts.prediction_files import FindingColumns, align, read_predictions, write_predictions
from evaluation import blend, ensemble_apply, ensembling, finding_blend
from evaluation.findings import MIN_POSITIVES
from evaluation.settings import EnsembleConfig

BACKBONES = ("efficientnet_b3", "resnet50")
RUN_TEMPERATURE = 2.5  # each run's own, in p_<finding>: a blend that used p_<finding> would apply it twice
STEP = 0.1
AT_MINIMUM, UNDER_MINIMUM = "Pneumonia", "Hernia"  # MIN_POSITIVES and MIN_POSITIVES - 1 validation positives
# Per finding, how sharply each member separates the classes: they trade places from finding to finding.
STRENGTH = np.array([[2.5 if k % 3 else 0.2 for k in range(len(FINDINGS))],
                     [0.3 if k % 3 else 3.0 for k in range(len(FINDINGS))]])
STRENGTH[:, FINDINGS.index(AT_MINIMUM)] = STRENGTH[:, FINDINGS.index(UNDER_MINIMUM)] = [0.0, 4.0]


def _logit(p):
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _finding_labels(rng, n, unknown, positives):
    labels = np.full((n, len(FINDINGS)), -1)
    labels[unknown:] = 0
    for k, finding in enumerate(FINDINGS):
        count = positives.get(finding, (n - unknown) * 3 // 10)
        labels[unknown + rng.choice(n - unknown, count, replace=False), k] = 1
    return labels


def _write_split(folder, kind, rng, n, positives=None, findings=(True, True)):
    """One prediction file per member (its run folder in the sidecar); returns (paths, finding labels,
    (N, M, 14) uncalibrated finding probabilities)."""
    labels = _finding_labels(rng, n, unknown=n // 10, positives=positives or {})
    latent = np.where(labels < 0, rng.integers(0, 2, labels.shape), labels)
    binary = latent.max(axis=1)
    paths, uncalibrated = [], []
    for m, backbone in enumerate(BACKBONES):
        raw = _sigmoid(STRENGTH[m] * (2 * latent - 1) + rng.normal(0, 1.5, labels.shape))
        raw_binary = _sigmoid((2.0 if m == 0 else 0.5) * (2 * binary - 1) + rng.normal(0, 1.0, n))
        columns = FindingColumns(_sigmoid(_logit(raw) / RUN_TEMPERATURE), raw, labels) if findings[m] else None
        path = os.path.join(folder, f"{kind}.{backbone}.csv")
        write_predictions(path, [f"{kind}{i:04d}.png" for i in range(n)], raw_binary, binary,
                          {"backbone": backbone, "model_dir": os.path.join(folder, backbone)},
                          uncalibrated=raw_binary, findings=columns)
        paths.append(path)
        uncalibrated.append(raw)
    return paths, labels, np.stack(uncalibrated, axis=1)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A fitted ensemble: validation (AT_MINIMUM and UNDER_MINIMUM at the edge of MIN_POSITIVES), a labelled
    test split, and the ensemble file."""
    folder = tmp_path_factory.mktemp("findings")
    rng = np.random.default_rng(0)
    val = _write_split(str(folder), "val", rng, 300, {AT_MINIMUM: MIN_POSITIVES, UNDER_MINIMUM: MIN_POSITIVES - 1})
    test = _write_split(str(folder), "test", rng, 150)
    result = ensembling.run_ensemble(EnsembleConfig(test[0], str(folder / "sub.csv"), fit_on=val[0],
                                                    fit_step=STEP, bootstrap=20))
    with open(ensemble_file.ensemble_path(result.submission)) as f:
        record = json.load(f)
    return folder, val, test, result, record


def _recorded(record, key):
    """(M, 14) of a per-finding key of the ensemble file's members."""
    return np.array([member[key] for member in record["inputs"]])


def _logistic_temperature(labels, probs):
    model = LogisticRegression(fit_intercept=False, C=np.inf, tol=1e-10, max_iter=10_000)
    return 1.0 / float(model.fit(_logit(probs)[:, None], labels).coef_[0, 0])


def _blend(uncalibrated, weights, temperatures):
    """(N, 14) by numpy: each member's finding sigmoid through its temperature, then weighted."""
    return np.einsum("nmk,mk->nk", _sigmoid(_logit(uncalibrated) / temperatures[None]), weights)


def test_blended_findings_equal_a_numpy_recomputation_from_the_member_files(fitted):
    # Catches: blending p_<finding> (the run's temperature applied twice), or skipping the ensemble's.
    folder, (_, val_labels, val_raw), (paths, labels, _), result, record = fitted
    weights, temperatures = (_recorded(record, key) for key in ("finding_weights", "finding_temperatures"))
    # Each member's finding temperature is the inverse slope of an intercept-free logistic regression.
    for k in range(len(FINDINGS)):
        known = val_labels[:, k] >= 0
        expected = [_logistic_temperature(val_labels[known, k], val_raw[known, m, k]) for m in range(2)]
        np.testing.assert_allclose(temperatures[:, k], expected, rtol=1e-3)
    members = [pd.read_csv(p, dtype={"image_id": str}) for p in paths]
    raw = np.stack([np.stack([m[finding_uncalibrated(f)] for f in FINDINGS], axis=1) for m in members], axis=1)
    written = pd.read_csv(result.probabilities, dtype={"image_id": str})
    np.testing.assert_allclose(written[[finding_prob(f) for f in FINDINGS]].to_numpy(),
                               _blend(raw, weights, temperatures), rtol=1e-9)
    np.testing.assert_array_equal(written[[finding_label(f) for f in FINDINGS]].to_numpy(), labels)
    assert not any(c.startswith("p_uncalibrated") for c in written.columns)
    assert list(pd.read_csv(result.submission).columns) == ["image_id", "decision"]  # binary, as before


def _brute_force(labels, members):
    """The step grid's weights by sklearn: max AUROC, then the lower Brier score, then grid order."""
    grid = [np.array([w, 1 - w]) for w in np.round(np.arange(0, 1 + STEP / 2, STEP), 10)]  # blend.simplex_grid order
    keyed = [(-round(roc_auc_score(labels, members @ w), 12), brier_score_loss(labels, np.clip(members @ w, 0, 1)),
              i) for i, w in enumerate(grid)]
    return grid[min(keyed)[2]]


def test_fitted_finding_weights_equal_a_brute_force_auroc_search(fitted):
    # Catches: the finding weights left at the binary ones, or chosen by the lowest AUROC.
    _, (_, val_labels, val_raw), _, result, record = fitted
    weights, temperatures = (_recorded(record, key) for key in ("finding_weights", "finding_temperatures"))
    choices = record["fit"]["findings"]
    differs = 0
    for k, finding in enumerate(FINDINGS):
        if finding == UNDER_MINIMUM:
            continue
        assert choices[finding]["weights"] == finding_blend.FITTED, (finding, choices[finding])
        known = val_labels[:, k] >= 0
        members = _sigmoid(_logit(val_raw[known, :, k]) / temperatures[:, k])
        np.testing.assert_allclose(weights[:, k], _brute_force(val_labels[known, k], members), atol=1e-12)
        differs += not np.allclose(weights[:, k], list(result.weights.values()))
    assert differs >= len(FINDINGS) // 2  # the members trade places, so most findings leave the binary weights
    assert record["fit"]["finding_criterion"] == blend.AUROC_CRITERION


def test_a_finding_under_min_positives_gets_the_binary_weights(fitted):
    # Catches: no minimum (UNDER_MINIMUM fitted) or `<=` for `<` (AT_MINIMUM, exactly at it, not fitted).
    _, (_, val_labels, _), _, result, record = fitted
    weights = _recorded(record, "finding_weights")
    k = FINDINGS.index(UNDER_MINIMUM)
    assert int((val_labels[:, k] == 1).sum()) == MIN_POSITIVES - 1
    np.testing.assert_allclose(weights[:, k], list(result.weights.values()))
    choice = record["fit"]["findings"][UNDER_MINIMUM]
    assert choice["weights"] == finding_blend.BINARY and f"fewer than {MIN_POSITIVES}" in choice["why"]
    assert choice["positives"] == MIN_POSITIVES - 1
    assert f"the binary weights for {UNDER_MINIMUM} (fewer than {MIN_POSITIVES}" in ensembling.summary(result)
    # The same member separates AT_MINIMUM perfectly: fitted, it leaves the binary weights.
    assert record["fit"]["findings"][AT_MINIMUM]["weights"] == finding_blend.FITTED
    assert not np.allclose(weights[:, FINDINGS.index(AT_MINIMUM)], list(result.weights.values()))


def test_the_ensemble_file_round_trips_into_blended_finding_weights(fitted):
    # Catches: member_records leaving out the finding temperatures (the loader then drops both).
    folder, _, _, _, record = fitted
    model_dirs = []
    for backbone in BACKBONES:
        os.makedirs(folder / backbone, exist_ok=True)
        (folder / backbone / "config.json").write_text(json.dumps({"backbone": backbone}))
        model_dirs.append(str(folder / backbone))
    models, _ = ensemble_file.blended_models(model_dirs, str(folder / "sub.probabilities.json"))
    for model, member in zip(models, record["inputs"]):
        assert model.finding_weights == pytest.approx(member["finding_weights"])
        assert model.finding_temperatures == pytest.approx(member["finding_temperatures"])
    np.testing.assert_allclose(np.sum([m.finding_weights for m in models], axis=0), 1.0)


def test_the_report_shows_each_member_and_the_ensemble_finding_by_finding(fitted):
    # Catches: the ensemble's (or a member's) report entry without its finding probabilities.
    _, _, (paths, labels, raw), result, _ = fitted
    written = pd.read_csv(result.probabilities, dtype={"image_id": str})
    entries = {"ensemble": written[[finding_prob(f) for f in FINDINGS]].to_numpy(),
               **{b: raw[:, m] for m, b in enumerate(BACKBONES)}}  # a temperature keeps the AUROC
    scored = 0
    for name, probs in entries.items():
        for k, row in enumerate(result.metrics[name]["findings"]["rows"]):
            if not np.isnan(row["auroc"]):
                known = labels[:, k] >= 0
                assert row["auroc"] == pytest.approx(roc_auc_score(labels[known, k], probs[known, k]))
                scored += 1
    assert scored >= 3 * 10


def test_predict_ensemble_applies_the_recorded_finding_weights_and_temperatures(fitted):
    # Catches: apply_ensemble blending the findings with the binary weights or without their temperatures.
    folder, _, _, _, record = fitted
    paths, _, raw = _write_split(str(folder), "new", np.random.default_rng(3), 50)
    output = str(folder / "new.csv")
    ensemble_apply.apply_ensemble(str(folder / "sub.probabilities.json"),
                              [str(folder / b) for b in BACKBONES], paths, output)
    written = pd.read_csv(output, dtype={"image_id": str})
    expected = _blend(raw, _recorded(record, "finding_weights"), _recorded(record, "finding_temperatures"))
    np.testing.assert_allclose(written[[finding_prob(f) for f in FINDINGS]].to_numpy(), expected, rtol=1e-9)


def test_members_without_findings_give_the_binary_blend_and_one_line(tmp_path, caplog):
    # Catches: the mixed case blended anyway (a crash), or passed over in silence.
    rng = np.random.default_rng(1)
    paths, _, _ = _write_split(str(tmp_path), "test", rng, 60, findings=(True, False))
    with caplog.at_level(logging.WARNING):
        result = ensembling.run_ensemble(EnsembleConfig(paths, str(tmp_path / "sub.csv"), bootstrap=0))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("findings:")]
    assert lines == [f"findings: 1 of 2 prediction files have no finding columns ({paths[1]}); blending the "
                     "binary output only"]
    written = pd.read_csv(result.probabilities)
    assert not [c for c in written.columns if c.startswith("p_") and c not in ("p_abnormal", "p_spread")]
    record = json.loads((tmp_path / "sub.probabilities.json").read_text())
    assert all("finding_weights" not in member for member in record["inputs"])
    assert "findings" not in result.metrics["ensemble"]


def test_align_merges_finding_labels_and_refuses_disagreements(tmp_path):
    # Catches: align merging the finding labels of one file only, or never comparing them.
    width = len(FINDINGS)
    onehot = np.eye(width, dtype=int)[3]

    def read(name, rows, uncalibrated):  # rows: id -> its 14 finding labels, in file order
        probs = np.full((len(rows), width), uncalibrated)
        write_predictions(str(tmp_path / f"{name}.csv"), list(rows), [0.5] * len(rows),
                          findings=FindingColumns(probs, probs, np.array(list(rows.values()))))
        return read_predictions(str(tmp_path / f"{name}.csv"))

    a = read("a", {"x": np.ones(width, int), "y": -np.ones(width, int)}, 0.2)
    b = read("b", {"y": onehot, "x": np.ones(width, int)}, 0.7)
    joined = align([a, b])
    np.testing.assert_array_equal(joined.finding_labels, [np.ones(width, int), onehot])
    np.testing.assert_array_equal(joined.finding_uncalibrated[:, :, 0], [[0.2, 0.7], [0.2, 0.7]])
    c = read("c", {"y": onehot, "x": np.zeros(width, int)}, 0.7)
    with pytest.raises(UserInputError, match=r"c\.csv: finding labels disagree with .*a\.csv for 1 id\(s\): x"):
        align([a, c])


def test_without_fit_on_every_finding_takes_the_binary_weights_and_no_temperature(tmp_path):
    # Catches: findings left unblended without --fit_on, or blended with the runs' own temperatures.
    paths, _, raw = _write_split(str(tmp_path), "test", np.random.default_rng(4), 40)
    result = ensembling.run_ensemble(EnsembleConfig(paths, str(tmp_path / "sub.csv"), bootstrap=0))
    record = json.loads((tmp_path / "sub.probabilities.json").read_text())
    reference = np.array([[0.6 / 0.7], [0.1 / 0.7]])  # the registry's efficientnet_b3 0.6, resnet50 0.1
    np.testing.assert_allclose(_recorded(record, "finding_weights"), np.repeat(reference, len(FINDINGS), axis=1))
    np.testing.assert_array_equal(_recorded(record, "finding_temperatures"), 1.0)
    written = pd.read_csv(result.probabilities)
    np.testing.assert_allclose(written[[finding_prob(f) for f in FINDINGS]].to_numpy(),
                               np.einsum("nmk,m->nk", raw, reference[:, 0]), rtol=1e-9)
    assert record["fit"] is None


def test_fit_on_with_blend_weight_keeps_those_weights_for_every_finding(fitted, tmp_path):
    # Catches: per-finding weights fitted although --blend_weight fixed the weights.
    _, (val_paths, _, _), (paths, _, _), _, _ = fitted
    ensembling.run_ensemble(EnsembleConfig(paths, str(tmp_path / "sub.csv"), fit_on=val_paths, fit_step=STEP,
                                           blend_weight=[1, 3], bootstrap=0))
    record = json.loads((tmp_path / "sub.probabilities.json").read_text())
    np.testing.assert_allclose(_recorded(record, "finding_weights"),
                               np.repeat([[0.25], [0.75]], len(FINDINGS), axis=1))
    assert {c["why"] for c in record["fit"]["findings"].values()} == {"--blend_weight gave the weights"}
    assert (_recorded(record, "finding_temperatures") != 1.0).all()  # still fitted, member by member
