"""Three-way triage: the groups, the spread, the record, and ensemble.py's thresholds recomputed
independently from the calibration files (pandas, numpy, scipy), through predict.py --ensemble too."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from contracts import ensemble_file
from contracts.errors import UserInputError
from contracts.prediction_files import write_predictions
from evaluation import ensemble_apply, ensembling, triage
from evaluation.settings import EnsembleConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKBONES = ("efficientnet_b3", "resnet50")


def _triage(rule_out, rule_in, limit=None):
    settings = triage.TriageSettings()
    def threshold(value):
        return triage.GuaranteedThreshold(value, 0.05, 0.1, 50, 0.04, 0.0, 0)
    return triage.Triage(threshold(rule_out), threshold(rule_in), limit, settings, {"exact": True})


def test_groups_follow_the_tie_rules_the_crossing_and_the_spread_limit():
    # Catches: an image at the rule-out threshold cleared (p <= t), one at the rule-in threshold not
    # prioritized (p > t), images in both groups kept in one, a spread at the limit sent to review.
    probs = np.array([0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 0.15])
    spread = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.3])
    plain = triage.groups(probs, _triage(0.2, 0.7))
    assert list(plain) == ["cleared", "review", "review", "review", "prioritized", "prioritized", "cleared"]
    crossed = triage.groups(probs, _triage(0.6, 0.3))  # p in [0.3, 0.6) would be both: review
    assert list(crossed) == ["cleared", "cleared", "review", "review", "prioritized", "prioritized", "cleared"]
    limited = triage.groups(probs, _triage(0.2, 0.7, limit=0.3), spread)
    assert limited[-1] == "cleared"  # at the limit: not above it
    assert triage.groups(probs, _triage(0.2, 0.7, limit=0.29), spread)[-1] == "review"
    assert set(triage.groups(probs, None)) == {"review"}
    assert set(triage.groups(probs, _triage(None, None))) == {"review"}


def test_the_spread_is_the_total_weighted_spread_of_every_member_and_view():
    # Catches: the members' TTA spreads left out, or the members' spread taken unweighted.
    rng = np.random.default_rng(0)
    views = rng.uniform(0, 1, (30, 3, 4))  # (images, members, views): calibrated probabilities
    weights = np.array([0.5, 0.3, 0.2])
    members, own = views.mean(axis=2), views.std(axis=2)
    blend = members @ weights
    brute = np.sqrt(np.einsum("m,nmv->n", weights, (views - blend[:, None, None]) ** 2) / views.shape[2])
    np.testing.assert_allclose(triage.spread(members, weights, own), brute, rtol=1e-12)
    alone = np.sqrt(((members - blend[:, None]) ** 2) @ weights)
    np.testing.assert_allclose(triage.spread(members, weights), alone, rtol=1e-12)
    assert triage.blend_spread(members[:, :1], np.ones(1), None) is None


@pytest.mark.parametrize("edit", [
    lambda r: r.pop("rule_in"), lambda r: r["rule_out"].update(threshold=1.7),
    lambda r: r["rule_out"].update(threshold=float("nan")), lambda r: r["rule_in"].update(threshold="0.3"),
    lambda r: r.update(spread_limit=-1.0), lambda r: r.update(calibration={}), lambda r: r.update(alpha=True),
    lambda r: r.update(alpha=0.0)],
    ids=["missing", "above-1", "nan", "text", "negative-limit", "no-calibration", "bool", "alpha-0"])
def test_the_record_round_trips_and_a_broken_one_is_one_line(edit):
    # Catches (found in review): a threshold of 1.7, NaN or text accepted (the summary then clears
    # what it should not), a negative spread limit (all review), an empty calibration (a KeyError later).
    rng = np.random.default_rng(1)
    labels = (rng.uniform(size=400) < 0.5).astype(int)
    probs = np.clip(0.3 * labels + rng.uniform(0, 0.7, 400), 0, 1)
    fitted = triage.fit(labels, probs, rng.uniform(0, 0.1, 400), triage.TriageSettings(), files=["c.csv"],
                        exact=True)
    again = triage.from_record(json.loads(json.dumps(triage.to_record(fitted))), "x.json")
    assert again == fitted
    record = json.loads(json.dumps(triage.to_record(fitted)))
    edit(record)
    with pytest.raises(UserInputError, match=r"^x\.json: its triage record is not one ensemble\.py writes \("):
        triage.from_record(record, "x.json")


def _brute_rule_out(labels, probs, alpha, delta):
    """Learn-then-Test by a plain loop: ascending candidate thresholds, the (1 − δ) Clopper–Pearson
    bound of the miss rate from scipy's beta quantile, stop at the first failure."""
    positives = probs[labels == 1]
    best = None
    for t in np.unique(probs):
        misses, n = int((positives < t).sum()), len(positives)
        bound = 1.0 if misses == n else stats.beta.ppf(1 - delta, misses + 1, n - misses)
        if bound > alpha:
            break
        best = t
    return best


def _brute_rule_in(labels, probs, beta, delta):
    negatives = probs[labels == 0]
    best = None
    for t in np.concatenate([[np.nextafter(probs.max(), 2)], np.unique(probs)[::-1]]):
        alarms, n = int((negatives >= t).sum()), len(negatives)
        bound = 1.0 if alarms == n else stats.beta.ppf(1 - delta, alarms + 1, n - alarms)
        if bound > beta:
            break
        best = t
    return best


def _split(folder, name, count, seed, spread_members=False):
    """Two members' prediction files of one split: 0/1 labels, scores that separate them."""
    rng = np.random.default_rng(seed)
    ids = [f"{name}{i:05d}_000.png" for i in range(count)]
    labels = (rng.uniform(size=count) < 0.5).astype(int)
    paths = []
    for m, backbone in enumerate(BACKBONES):
        probs = 1 / (1 + np.exp(-(2.5 * (labels - 0.5) * (1 + m) + rng.normal(0, 1.2, count))))
        path = str(folder / f"{name}.{backbone}.csv")
        meta = {"p_spread": rng.uniform(0, 0.05, count)} if spread_members else None
        write_predictions(path, ids, probs, labels, {"backbone": backbone}, uncalibrated=probs, meta=meta)
        paths.append(path)
    return paths


def _blend(paths, record):
    """The calibrated members (N, M) and the blend, from the CSVs and the ensemble file, with numpy."""
    members = []
    for path, member in zip(paths, record["inputs"]):
        p = np.clip(pd.read_csv(path)["p_uncalibrated"].to_numpy(), 1e-7, 1 - 1e-7)
        t = member["temperature"]
        members.append(p if t == 1.0 else 1 / (1 + np.exp(-np.log(p / (1 - p)) / t)))
    weights = np.array([member["weight"] for member in record["inputs"]])
    members = np.stack(members, axis=1)
    return members, members @ (weights / weights.sum()), weights / weights.sum()


def test_ensemble_thresholds_and_groups_equal_an_independent_computation(tmp_path):
    # Catches: thresholds fitted on the --fit_on files instead of --calibrate_on, on uncalibrated
    # members, on the empirical rate instead of its bound; the spread limit on the wrong quantile.
    val, cal, test = (_split(tmp_path, name, n, seed) for name, n, seed in
                      (("val", 300, 1), ("cal", 500, 2), ("test", 400, 3)))
    result = ensembling.run_ensemble(EnsembleConfig(test, str(tmp_path / "sub.csv"), fit_on=val, calibrate_on=cal,
                                                    fit_step=0.25, bootstrap=0))
    with open(ensemble_file.ensemble_path(result.submission)) as f:
        record = json.load(f)
    fitted = record[ensemble_file.TRIAGE]
    labels = pd.read_csv(cal[0])["label"].to_numpy()
    members, blend, weights = _blend(cal, record)
    assert fitted["rule_out"]["threshold"] == _brute_rule_out(labels, blend, 0.05, 0.1)
    assert fitted["rule_in"]["threshold"] == _brute_rule_in(labels, blend, 0.1, 0.1)
    assert fitted["rule_out"]["threshold"] is not None and fitted["calibration"]["exact"] is True
    spread = np.sqrt(((members - blend[:, None]) ** 2) @ weights)
    assert fitted["spread_limit"] == pytest.approx(np.sort(spread)[int(np.ceil(0.95 * (len(spread) - 1)))],
                                                   rel=1e-12)
    # The blend file's groups, recomputed from the test files.
    written = pd.read_csv(result.probabilities)
    test_members, test_blend, _ = _blend(test, record)
    test_spread = np.sqrt(((test_members - test_blend[:, None]) ** 2) @ weights)
    np.testing.assert_allclose(written["p_spread"], test_spread, atol=1e-12)
    cleared = test_blend < fitted["rule_out"]["threshold"]
    prioritized = test_blend >= fitted["rule_in"]["threshold"]
    sure = (test_spread <= fitted["spread_limit"]) & ~(cleared & prioritized)
    expected = np.where(sure & cleared, "cleared", np.where(sure & prioritized, "prioritized", "review"))
    assert list(written["triage"]) == list(expected)
    assert {"cleared", "review", "prioritized"} <= set(expected)
    assert any(line.startswith("triage: rule-out") for line in result.triage)


def test_predict_ensemble_applies_the_files_triage_to_the_same_groups(tmp_path):
    # Catches: predict.py --ensemble ignoring the file's triage, or its spread computed differently.
    val, cal, test = (_split(tmp_path, name, n, seed) for name, n, seed in
                      (("val", 200, 4), ("cal", 400, 5), ("test", 300, 6)))
    result = ensembling.run_ensemble(EnsembleConfig(test, str(tmp_path / "sub.csv"), fit_on=val, calibrate_on=cal,
                                                    fit_step=0.25, bootstrap=0))
    path = ensemble_file.ensemble_path(result.submission)
    with open(path) as f:
        record = json.load(f)
    dirs = []
    for member in record["inputs"]:  # model folders the ensemble file can name
        folder = tmp_path / member["name"]
        folder.mkdir()
        member["model_dir"] = str(folder)
        dirs.append(str(folder))
    with open(path, "w") as f:
        json.dump(record, f)
    out = str(tmp_path / "applied.csv")
    ensemble_apply.apply_ensemble(path, dirs, test, out)
    applied, blended = pd.read_csv(out), pd.read_csv(result.probabilities)
    assert (applied["triage"] == blended["triage"]).all()
    np.testing.assert_allclose(applied["p_spread"], blended["p_spread"], atol=1e-12)
    with open(os.path.splitext(out)[0] + ".json") as f:
        assert json.load(f)["triage"] == record[ensemble_file.TRIAGE]


def test_without_calibration_files_the_fit_on_files_calibrate_approximately_or_nothing_does(tmp_path):
    # Catches: a triage fitted silently on nothing, or an approximate one called exact.
    val, test = _split(tmp_path, "val", 300, 7), _split(tmp_path, "test", 200, 8)
    approximate = ensembling.run_ensemble(EnsembleConfig(test, str(tmp_path / "a.csv"), fit_on=val,
                                                         fit_step=0.25, bootstrap=0))
    with open(ensemble_file.ensemble_path(approximate.submission)) as f:
        calibration = json.load(f)[ensemble_file.TRIAGE]["calibration"]
    assert calibration["exact"] is False and calibration["note"] == triage.APPROXIMATE
    assert calibration["files"] == list(val) and calibration["images"] == 300
    bare = ensembling.run_ensemble(EnsembleConfig(test, str(tmp_path / "b.csv"), bootstrap=0))
    with open(ensemble_file.ensemble_path(bare.submission)) as f:
        record = json.load(f)
    assert record[ensemble_file.TRIAGE] is None and record["triage_why"].startswith("no triage")
    assert set(pd.read_csv(bare.probabilities)["triage"]) == {"review"}


def test_too_few_abnormal_calibration_images_say_by_how_many(tmp_path):
    # Catches: a rule-out threshold picked silently where the bound cannot be met.
    val, cal, test = (_split(tmp_path, name, n, seed) for name, n, seed in
                      (("val", 200, 9), ("cal", 40, 10), ("test", 100, 11)))
    result = ensembling.run_ensemble(EnsembleConfig(test, str(tmp_path / "sub.csv"), fit_on=val, calibrate_on=cal,
                                                    fit_step=0.25, bootstrap=0))
    abnormal = int(pd.read_csv(cal[0])["label"].sum())
    assert abnormal < 45
    assert (f"triage: no rule-out threshold: {abnormal} abnormal calibration images, 45 needed (all without "
            f"error) to bound the miss rate by 0.05 at δ=0.1; short by {45 - abnormal}") in result.triage
    assert "cleared" not in set(pd.read_csv(result.probabilities)["triage"])


def _ensemble(*args):
    return subprocess.run([sys.executable, "ensemble.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_bad_calibration_input_is_one_line(tmp_path):
    test, cal = _split(tmp_path, "test", 60, 12), _split(tmp_path, "cal", 60, 13)
    flags = [f"--predictions={p}" for p in test] + [f"--output={tmp_path / 'sub.csv'}"]
    cases = [([f"--calibrate_on={cal[0]}"], r"--calibrate_on has 1 file\(s\) but --predictions has 2"),
             ([f"--calibrate_on={p}" for p in cal[::-1]], r"is from resnet50 but its partner .* is from "
                                                          r"efficientnet_b3"),
             ([f"--calibrate_on={p}" for p in cal] + ["--triage_alpha=0"], r"triage_alpha=0.0: must be strictly")]
    for extra, message in cases:
        done = _ensemble(*flags, *extra)
        assert done.returncode == 1, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and pytest.importorskip("re").search(message, lines[0]), done.stderr
    assert not (tmp_path / "sub.csv").exists()


def test_calibration_images_that_are_not_a_split_of_their_own_give_an_approximate_guarantee(tmp_path):
    # Catches (found in review): "exact" kept when the calibration images are the scored ones, or come
    # from the validation split (their sidecar says so), without any --fit_on to overlap with.
    test, cal = _split(tmp_path, "test", 200, 14), _split(tmp_path, "cal", 300, 15)
    scored = ensembling.run_ensemble(EnsembleConfig(test, str(tmp_path / "a.csv"), calibrate_on=test,
                                                    bootstrap=0))
    for path in cal:  # predictions of the validation split, as predict.py's sidecar records it
        frame = pd.read_csv(path)
        write_predictions(path, frame["image_id"], frame["p_abnormal"], frame["label"],
                          {"backbone": path.split(".")[-2], "split": "val"}, uncalibrated=frame["p_uncalibrated"])
    other = ensembling.run_ensemble(EnsembleConfig(test, str(tmp_path / "b.csv"), calibrate_on=cal, bootstrap=0))
    notes = []
    for result in (scored, other):
        with open(ensemble_file.ensemble_path(result.submission)) as f:
            calibration = json.load(f)[ensemble_file.TRIAGE]["calibration"]
        assert calibration["exact"] is False
        notes.append(calibration["note"])
    assert "share 200 images with --predictions" in notes[0]
    assert "come from split val, not calibration" in notes[1]


def test_predict_ensemble_refuses_a_broken_triage_record_or_other_views_before_predicting(tmp_path):
    # Catches (found in review): these checks made only after every model had predicted.
    import predict
    from evaluation.settings import PredictConfig

    dirs = [str(tmp_path / name) for name in ("a", "b")]
    for folder in dirs:
        os.makedirs(folder)
    record = {"schema_version": ensemble_file.SCHEMA_VERSION, "threshold": 0.5,
              "inputs": [{"name": n, "weight": 0.5, "model_dir": d, "tta": 1} for n, d in zip("ab", dirs)],
              ensemble_file.TRIAGE: {"alpha": 0.05}}
    path = str(tmp_path / "e.probabilities.json")
    with open(path, "w") as f:
        json.dump(record, f)
    config = PredictConfig(model_dir=tuple(dirs), output=str(tmp_path / "p.csv"), data_dir=str(tmp_path),
                           ensemble=path)
    with pytest.raises(UserInputError, match="its triage record is not one ensemble.py writes"):
        predict._preflight(config)
    with pytest.raises(UserInputError, match=r"--tta=3: --ensemble=.* was fitted on predictions of 1 test-time"):
        predict._preflight(dataclasses.replace(config, tta=3))
