"""predict.py's test-time augmentation (--tta) and each model's own triage column, against NumPy."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from contracts import run_folder
from contracts.prediction_files import write_predictions
from evaluation import conformal, prediction
from evaluation import report as report_lib
from evaluation.settings import PredictConfig
from models import tta
from tests.shard_factory import write_shards
from tests.test_predict import SIZE, _save_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORDS = 13  # not a multiple of the batch size: the last batch is partial
BATCH = 4
TEMPERATURE = 2.0
# The validation file's shape (see `_write_validation`): at the default α = 0.05, δ = 0.1 the rule-out
# bound needs 45 abnormal images without a miss, and at β = 0.1 the rule-in one 22 normal images
# without a false alarm; one error more fails each, so the thresholds land on chosen test scores.
ABNORMAL, NORMAL = 45, 25
RULE_OUT_AT, NORMAL_AT, RULE_IN_AT = 3, 7, 9  # ranks among the test images' sorted scores


def _config(world, output, **overrides):
    return PredictConfig(model_dir=[world["run"]], data_dir=world["shards"], split="eval", output=str(output),
                         global_batch_size=BATCH, bootstrap=0, progress=False, **overrides)


def _write_validation(run, test_scores):
    """A val_predictions.csv whose raw scores hold three test images' exact scores (ties on purpose),
    and whose p_abnormal column is deliberately not the raw scores through the temperature."""
    ranked = np.sort(test_scores)
    assert len(np.unique(ranked)) == RECORDS
    high = 1 - np.linspace(0.1, 0.5, ABNORMAL - 2) * (1 - ranked.max())  # above every test score
    low = np.linspace(0.1, 0.5, NORMAL - 1) * ranked.min()  # below every test score
    raw = np.concatenate([[ranked[RULE_OUT_AT], ranked[RULE_IN_AT]], high, [ranked[NORMAL_AT]], low])
    labels = np.array([1] * ABNORMAL + [0] * NORMAL)
    ids = [f"val_{k:03d}.png" for k in range(len(raw))]
    write_predictions(os.path.join(run, run_folder.VAL_PREDICTIONS), ids, 1.0 - raw, labels,
                      {run_folder.TEMPERATURE: TEMPERATURE}, uncalibrated=raw)


def _sensitive_model(run, shards, pixels):
    """The tiny model (fixed seed) with its head's batch norm standardising these images' pooled
    features, so that its P(abnormal) spreads over ~0.4..0.6 and a 2 px shift moves it by 1e-3 or more
    (untrained, it moves by ~1e-5, too close to the float32 noise the comparisons allow)."""
    keras.utils.set_random_seed(0)
    model = _save_model(run, shards)
    pooled = keras.Model(model.input, model.get_layer("head_pool").output)(pixels).numpy()
    gamma, beta, _, _ = model.get_layer("head_bn").get_weights()
    model.get_layer("head_bn").set_weights([gamma, beta, pooled.mean(0), pooled.var(0)])
    model.save(os.path.join(run, run_folder.MODEL))
    return model


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict_triage")
    shards = str(root / "shards")
    written = write_shards(shards, {"eval": RECORDS}, image_size=SIZE, shards_per_split=2)["eval"]
    pixels = {r["image_id"]: np.repeat(r["pixels"][..., None], 3, -1).astype("float32") for r in written}
    model = _sensitive_model(str(root / "run"), shards, np.stack(list(pixels.values())))
    world = {"root": root, "shards": shards, "run": str(root / "run"), "model": model, "pixels": pixels}
    shutil.copytree(world["run"], root / "bare")  # no val_predictions.csv: no triage
    probe = prediction.run_prediction(_config(world, root / "probe.csv"))
    _write_validation(world["run"], pd.read_csv(probe.outputs["tiny_test"]).p_uncalibrated.to_numpy())
    return world


def _sigmoid_t(p):  # the run's temperature, in NumPy
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return 1.0 / (1.0 + np.exp(-(np.log(p) - np.log1p(-p)) / TEMPERATURE))


def _expected_groups(run, p_abnormal):
    """cleared / review / prioritized from the run's val_predictions.csv read here, not by the library."""
    val = pd.read_csv(os.path.join(run, run_folder.VAL_PREDICTIONS))
    labels, calibrated = val.label.to_numpy(), _sigmoid_t(val.p_uncalibrated.to_numpy())
    rule_out = conformal.rule_out_threshold(labels, calibrated).threshold
    rule_in = conformal.rule_in_threshold(labels, calibrated).threshold
    groups = np.where(p_abnormal < rule_out, "cleared", np.where(p_abnormal >= rule_in, "prioritized", "review"))
    return groups, rule_out, rule_in


def _views_directly(world, ids, count):
    """(N, count) the keras model's P(abnormal) on each of the first `count` views, called here."""
    images = tf.constant(np.stack([world["pixels"][i] for i in ids]))
    stacked = tta.views(images, count).numpy()
    return np.stack([world["model"](v, training=False).numpy()[:, 1] for v in stacked], axis=1)


def test_tta_1_is_the_output_without_the_flag(world, tmp_path):
    plain = prediction.run_prediction(_config(world, tmp_path / "plain.csv")).outputs["tiny_test"]
    one = prediction.run_prediction(_config(world, tmp_path / "one.csv", tta=1)).outputs["tiny_test"]
    with open(plain) as a, open(one) as b:
        assert a.read() == b.read()
    np.testing.assert_array_equal(np.load(tmp_path / "plain.npy"), np.load(tmp_path / "one.npy"))
    sidecars = [json.loads((tmp_path / f"{s}.json").read_text()) for s in ("plain", "one")]
    assert sidecars[0] == sidecars[1] and "tta" not in sidecars[0]  # an old file reads as 1 view
    assert "p_spread" not in pd.read_csv(plain).columns  # one model, one view: no spread


def test_tta_averages_the_views_and_reports_their_calibrated_spread(world, tmp_path, monkeypatch):
    handed = []
    write_report = report_lib.write_report
    monkeypatch.setattr(report_lib, "write_report", lambda d, scores, **kw: handed.extend(scores) or
                        write_report(d, scores, **kw))
    result = prediction.run_prediction(_config(world, tmp_path / "p.csv", tta=3))
    frame = pd.read_csv(tmp_path / "p.csv", dtype={"image_id": str})
    per_view = _views_directly(world, frame.image_id, 3)
    # Tolerance: the same graph on other batches (4 there, 13 here) differs in the last float32 bits.
    np.testing.assert_allclose(frame.p_uncalibrated, per_view.mean(axis=1), atol=1e-6, rtol=0)
    np.testing.assert_allclose(frame.p_abnormal, _sigmoid_t(frame.p_uncalibrated), atol=1e-12, rtol=0)
    np.testing.assert_allclose(frame.p_spread, _sigmoid_t(per_view).std(axis=1), atol=1e-6, rtol=0)
    assert frame.p_spread.min() > 1e-4  # the views differ: a std of copies of one view would be 0
    np.testing.assert_allclose(np.load(tmp_path / "p.npy")[:, 1], frame.p_uncalibrated, atol=1e-7)
    sidecar = json.loads((tmp_path / "p.json").read_text())
    assert sidecar["tta"] == {"views": 3, "transforms": ["identity", "shift_right", "shift_left"]}
    groups, rule_out, rule_in = _expected_groups(world["run"], frame.p_abnormal.to_numpy())
    assert list(frame.triage) == list(groups)
    (scores,) = handed
    np.testing.assert_array_equal(scores.spread, frame.p_spread)
    assert (scores.triage.rule_out.threshold, scores.triage.rule_in.threshold) == (rule_out, rule_in)
    assert len(result.triage_lines) == 1


_MIRRORED_TTA = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from evaluation import prediction
from evaluation.settings import PredictConfig
prediction.run_prediction(PredictConfig(model_dir=[sys.argv[1]], data_dir=sys.argv[2], split="eval",
                                        output=sys.argv[3], global_batch_size=4, strategy="mirrored",
                                        bootstrap=0, progress=False, tta=3))
"""


@pytest.mark.slow
def test_tta_over_two_replicas_matches_one(world, tmp_path):
    prediction.run_prediction(_config(world, tmp_path / "one.csv", tta=3))
    result = subprocess.run([sys.executable, "-c", _MIRRORED_TTA, world["run"], world["shards"],
                             str(tmp_path / "two.csv")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = (pd.read_csv(tmp_path / f"{n}.csv", dtype={"image_id": str}) for n in ("one", "two"))
    assert list(one.image_id) == list(two.image_id)
    for column in ("p_uncalibrated", "p_spread"):
        np.testing.assert_allclose(two[column], one[column], atol=1e-6, rtol=0)


def test_tta_views_act_on_the_float_pixels_under_uint8_transfer(world, tmp_path):
    prediction.run_prediction(_config(world, tmp_path / "p.csv", tta=tta.MAX_VIEWS, transfer="uint8"))
    frame = pd.read_csv(tmp_path / "p.csv", dtype={"image_id": str})
    per_view = _views_directly(world, frame.image_id, tta.MAX_VIEWS)
    np.testing.assert_allclose(frame.p_uncalibrated, per_view.mean(axis=1), atol=1e-6, rtol=0)


def test_each_model_triage_follows_its_validation_file_and_the_tie_rules(world, tmp_path):
    result = prediction.run_prediction(_config(world, tmp_path / "p.csv"))
    frame = pd.read_csv(tmp_path / "p.csv", dtype={"image_id": str})
    p = frame.p_abnormal.to_numpy()
    groups, rule_out, rule_in = _expected_groups(world["run"], p)
    # The file was made so that one test image sits exactly at each threshold.
    assert (p == rule_out).sum() == 1 and (p == rule_in).sum() == 1
    assert list(frame.triage) == list(groups)
    counts = {g: int((groups == g).sum()) for g in ("cleared", "review", "prioritized")}
    assert counts == {"cleared": RULE_OUT_AT, "review": RULE_IN_AT - RULE_OUT_AT,
                      "prioritized": RECORDS - RULE_IN_AT}
    record = json.loads((tmp_path / "p.json").read_text())["triage"]
    assert record["rule_out"]["threshold"] == rule_out and record["rule_in"]["threshold"] == rule_in
    assert (record["alpha"], record["beta"], record["delta"]) == (0.05, 0.1, 0.1)
    assert record["calibration"]["files"] == [os.path.join(world["run"], "val_predictions.csv")]
    assert record["calibration"]["exact"] is False and record["calibration"]["abnormal"] == ABNORMAL
    line = result.triage_lines["tiny_test"]
    assert f"{counts['cleared']} cleared / {counts['review']} review / {counts['prioritized']} prioritized" in line
    assert f"rule-out {rule_out:.4f}" in line and f"rule-in {rule_in:.4f}" in line
    assert line in prediction.summary(result)


def test_without_validation_predictions_every_row_is_review_and_the_sidecar_says_why(world, tmp_path):
    config = _config(world, tmp_path / "p.csv")
    result = prediction.run_prediction(dataclasses.replace(config, model_dir=[str(world["root"] / "bare")]))
    assert set(pd.read_csv(tmp_path / "p.csv").triage) == {"review"}
    why = json.loads((tmp_path / "p.json").read_text())["triage"]["why"]
    assert "val_predictions.csv" in why and why in result.triage_lines["tiny_test"]


def test_triage_flags_beside_an_ensemble_are_refused_before_any_work(tmp_path):
    output = tmp_path / "p.csv"
    result = subprocess.run([sys.executable, "predict.py", f"--model_dir={tmp_path}", f"--data_dir={tmp_path}",
                             f"--output={output}", f"--ensemble={tmp_path / 'e.json'}", "--triage_alpha=0.1"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = [row for row in result.stderr.splitlines() if row.startswith("predict.py: ")]
    assert "--triage_alpha with --ensemble" in line and not output.exists()
