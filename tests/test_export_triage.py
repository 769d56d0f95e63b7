"""The served triage, p_spread, calibrated members and test-time views, against numpy on the same inputs."""

import json
import os

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from contracts import ensemble_file
from contracts.errors import UserInputError
from contracts.output_names import CLEARED, PRIORITIZED, REVIEW, TTA
from contracts.prediction_files import sidecar_path
from contracts.run_folder import RunFolder
from evaluation import triage
from models import calibration, tta
from models.heads import split_outputs
from models.saved import load_classifier
from serving import exporter
from serving.api import Classifier, member_prob_column
from serving.config import ExportConfig
from tests import test_export
from tests.test_export import PARITY, _val_rows

WEIGHTS, TEMPERATURES = (0.7, 0.3), (0.8, 1.7)  # temperatures far from 1: calibrated != raw
TIGHT = triage.TriageSettings(alpha=0.05, beta=0.05, delta=0.1, uncertain_share=0.05)
trained = test_export.runs  # the fixture, here as "trained": two tiny runs, their val files, an ensemble
finding_trained = test_export.finding_runs  # two tiny runs with the findings head


def _member_files(runs):
    """predict.py's member CSVs (val split) in the order of runs["dirs"]."""
    by_dir = {}
    for path in runs["predictions"]:
        with open(sidecar_path(path)) as f:
            by_dir[os.path.realpath(json.load(f)["model_dir"])] = path
    return [by_dir[os.path.realpath(d)] for d in runs["dirs"]]


def _write_ensemble(path, runs, weights, temperatures, record=None, views=1, schema=None):
    """An ensemble file over runs["dirs"] in contracts/ensemble_file.py's format; `record` under TRIAGE."""
    inputs = [{"name": f"m{m}", "path": p, "weight": w, "temperature": t, "model_dir": d, "backbone": "tiny_test",
               TTA: views}
              for m, (d, p, w, t) in enumerate(zip(runs["dirs"], _member_files(runs), weights, temperatures))]
    body = {"schema_version": schema or ensemble_file.SCHEMA_VERSION, "inputs": inputs, "threshold": 0.5}
    if record is not None:
        body[ensemble_file.TRIAGE] = record
    with open(path, "w") as f:
        json.dump(body, f)
    return path


def _fitted(rule_out, rule_in, limit):
    """triage.fit on made-up calibration images built so that the thresholds land exactly on `rule_out`
    and `rule_in` (α = β = 0.05, δ = 0.1: 60 of each, one error fails the bound) and the limit on `limit`."""
    positives = np.concatenate([[rule_out], np.linspace(rule_in, 1.0, 59)])
    negatives = np.linspace(0.0, (rule_out + rule_in) / 2, 60)  # the highest between the thresholds
    labels = np.r_[np.ones(60, int), np.zeros(60, int)]
    spread = None if limit is None else np.full(120, limit)
    fitted = triage.fit(labels, np.r_[positives, negatives], spread, TIGHT, files=["made up"], exact=True)
    assert (fitted.rule_out.threshold, fitted.rule_in.threshold, fitted.spread_limit) == (rule_out, rule_in, limit)
    return fitted


def _cut(values, low, high):
    """The midpoint of the widest gap between sorted `values` at positions low..high."""
    s = np.sort(values)
    k = max(range(low, high + 1), key=lambda k: s[k] - s[k - 1])
    return float((s[k] + s[k - 1]) / 2)


def _numpy_blend(raw, weights, temperatures):
    """(blend, calibrated members, spread) in float64 from (N, M) raw member probabilities."""
    members = np.stack([calibration.apply_temperature(raw[:, m], t) for m, t in enumerate(temperatures)], axis=1)
    weights = np.asarray(weights) / np.sum(weights)
    return members @ weights, members, triage.spread(members, weights)


def _served(export_dir, image_bytes, pixels):
    loaded = tf.saved_model.load(str(export_dir))
    out = {"bytes": loaded.signatures["serving_default"](image_bytes=tf.constant(image_bytes)),
           "pixels": loaded.signatures["pixels"](pixels=tf.constant(pixels))}
    return {s: {k: v.numpy().astype(str) if v.dtype == tf.string else v.numpy() for k, v in o.items()}
            for s, o in out.items()}


def test_served_triage_spread_and_members_equal_numpy_from_the_member_files(trained, tmp_path):
    ids, image_bytes, pixels = _val_rows(trained)
    raw_files = np.stack([pd.read_csv(p).set_index("image_id").loc[ids, "p_uncalibrated"].to_numpy()
                          for p in _member_files(trained)], axis=1)
    blend, _, spread = _numpy_blend(raw_files, WEIGHTS, TEMPERATURES)
    # Thresholds at the widest gaps of the blend, about a third cleared and a third prioritized; the
    # spread limit below the one or two widest spreads among those.
    rule_out, rule_in = _cut(blend, 3, 6), _cut(blend, 10, 13)
    sorted_ones = spread[(blend < rule_out) | (blend >= rule_in)]
    fitted = _fitted(rule_out, rule_in, _cut(sorted_ones, len(sorted_ones) - 2, len(sorted_ones) - 1))
    path = _write_ensemble(str(tmp_path / "e.probabilities.json"), trained, WEIGHTS, TEMPERATURES,
                           triage.to_record(fitted))
    info = exporter.run_export(ExportConfig(trained["dirs"], str(tmp_path / "served"), ensemble=path))
    assert info["triage"] == triage.to_record(fitted)
    assert info["tta"] == [{"name": f"m{m}", "views": 1, "transforms": ["identity"]} for m in range(2)]
    assert {"triage": "string [None]", "p_spread": "float32 [None]", "member_p_abnormal": "float32 [None, members]"
            }.items() <= info["signatures"]["pixels"]["outputs"].items()
    out = _served(tmp_path / "served", image_bytes, pixels)
    # The val images' bytes are 32 px PNGs, under the builder's 128 px minimum: each is marked implausible
    # and served as review (tests/test_served_implausible.py); their pixels carry the groups below.
    assert out["bytes"]["implausible"].all() and set(out["bytes"]["triage"]) == {REVIEW}
    served = out["pixels"]
    # Path 1: the served members' raw outputs through export.json's temperatures and weights, in float64.
    temperatures = [m["temperature"] for m in info["members"]]
    weights = [m["weight"] for m in info["members"]]
    again, members, again_spread = _numpy_blend(served["member_p_uncalibrated"].astype(np.float64), weights,
                                                temperatures)
    recorded = triage.from_record(info["triage"], "export.json")
    np.testing.assert_array_equal(served["triage"], triage.groups(again, recorded, again_spread))
    np.testing.assert_allclose(served["member_p_abnormal"], members, atol=1e-6, rtol=0)
    # Path 2: predict.py's member files, blended by numpy, sorted by the triage written into the file.
    assert np.abs(blend[:, None] - [fitted.rule_out.threshold, fitted.rule_in.threshold]).min() > 2 * PARITY
    assert np.abs(spread - fitted.spread_limit).min() > 2 * PARITY  # the files' values sort as the served
    expected = triage.groups(blend, fitted, spread)
    np.testing.assert_array_equal(served["triage"], expected)
    np.testing.assert_allclose(served["p_spread"], spread, atol=PARITY, rtol=0)
    np.testing.assert_allclose(served["p_abnormal"], blend, atol=PARITY, rtol=0)
    # It bites: every group is served, and the spread limit sends an image the thresholds sorted to review.
    assert set(expected) == {CLEARED, REVIEW, PRIORITIZED}
    assert (triage.groups(blend, fitted) != expected).any()
    # The Python API: the same groups, spread and calibrated members, as columns.
    table = Classifier.load(str(tmp_path / "served")).score_pixels(pixels, ids=ids)
    assert table["triage"].tolist() == expected.tolist()
    np.testing.assert_array_equal(table["p_spread"], served["p_spread"])
    np.testing.assert_array_equal(table[member_prob_column("m1")], served["member_p_abnormal"][:, 1])


def test_the_served_tie_rule_is_numpys_and_a_file_without_triage_serves_review(trained, tmp_path, caplog):
    ids, image_bytes, pixels = _val_rows(trained)
    # Schema 5 (no triage, no views): every image review, export.json and one warning line say why.
    old = _write_ensemble(str(tmp_path / "old.probabilities.json"), trained, (0.5, 0.5), (1.0, 1.0), schema=5)
    with caplog.at_level("WARNING"):
        info = exporter.run_export(ExportConfig(trained["dirs"], str(tmp_path / "served"), ensemble=old))
    why = [r.getMessage() for r in caplog.records if "no triage" in r.getMessage()]
    assert len(why) == 1 and info["triage"] == {"why": why[0]} and "rerun ensemble.py" in why[0]
    served = _served(tmp_path / "served", image_bytes, pixels)["pixels"]
    assert set(served["triage"]) == {REVIEW}
    # Weights 1/2 and no temperatures: the float64 blend of two float32 outputs is exact, so thresholds
    # can sit exactly on served probabilities. p == rule-out is not cleared; p == rule-in is prioritized.
    blend = served["member_p_uncalibrated"].astype(np.float64) @ [0.5, 0.5]
    order = np.argsort(blend)
    at_out, at_in = order[4], order[11]
    fitted = _fitted(float(blend[at_out]), float(blend[at_in]), None)
    plan = exporter.plan(trained["dirs"], old)
    module, _, _, _ = exporter.build_module(exporter.Plan(plan.members, plan.views, plan.threshold, fitted))
    groups = module.serve_pixels(tf.constant(pixels))["triage"].numpy().astype(str)
    np.testing.assert_array_equal(groups, triage.groups(blend, fitted))
    assert (groups[at_out], groups[at_in]) == (REVIEW, PRIORITIZED)
    assert (groups[order[:4]] == CLEARED).all() and (groups[order[12:]] == PRIORITIZED).all()
    # A threshold of None: its group never happens.
    no_rule_in = triage.Triage(fitted.rule_out, triage.conformal.GuaranteedThreshold(None, 0.05, 0.1, 3, 1.0, 0.0, 42),
                               None, TIGHT, fitted.calibration)
    module, _, _, _ = exporter.build_module(exporter.Plan(plan.members, plan.views, plan.threshold, no_rule_in))
    groups = module.serve_pixels(tf.constant(pixels))["triage"].numpy().astype(str)
    np.testing.assert_array_equal(groups, triage.groups(blend, no_rule_in))
    assert PRIORITIZED not in set(groups) and CLEARED in set(groups)


def _keras_outputs(run_dir, pixels, views):
    """(views, N, width): the run's model.keras called directly on each of models.tta's views."""
    classifier = load_classifier(RunFolder.open(run_dir))
    return np.stack([classifier(v, training=False).numpy() for v in tta.views(tf.constant(pixels), views).numpy()])


def _keras_views(run_dir, pixels, views):
    """(N, views) P(abnormal) of the run's model.keras on each view."""
    return np.stack([split_outputs(out)[0][:, 1] for out in _keras_outputs(run_dir, pixels, views)], axis=1)


def test_test_time_views_serve_each_models_mean_over_its_views(trained, tmp_path):
    ids, image_bytes, pixels = _val_rows(trained)
    run_dir = trained["dirs"][0]
    temperature = RunFolder.open(run_dir).temperature
    info = exporter.run_export(ExportConfig([run_dir], str(tmp_path / "served"), tta=3))
    assert info["tta"] == [{"name": "tiny_test", "views": 3, "transforms": list(tta.TRANSFORMS[:3])}]
    assert info["signatures"]["serving_default"]["outputs"]["p_spread"] == "float32 [None]"
    served = _served(tmp_path / "served", image_bytes, pixels)["pixels"]
    # Independently: the keras model on each view; the mean of the softmax, then the run's temperature.
    by_view = _keras_views(run_dir, pixels, 3).astype(np.float64)
    np.testing.assert_allclose(served["p_uncalibrated"], by_view.mean(axis=1), atol=PARITY, rtol=0)
    np.testing.assert_allclose(served["p_abnormal"], calibration.apply_temperature(by_view.mean(axis=1), temperature),
                               atol=PARITY, rtol=0)
    spread = calibration.apply_temperature(by_view, temperature).std(axis=1)
    np.testing.assert_allclose(served["p_spread"], spread, atol=PARITY, rtol=0)
    p = served["p_abnormal"].astype(np.float64)
    np.testing.assert_allclose(served["logit"], np.log(p / (1 - p)), atol=1e-4)
    # One view: the image alone, no spread; the views change the answer (the comparison above bites).
    plan = exporter.plan([run_dir], None, None)
    assert plan.views == [1]
    module, _, _, _ = exporter.build_module(plan)
    alone = {k: v.numpy() for k, v in module.serve_pixels(tf.constant(pixels)).items()}
    assert set(alone) == {"p_abnormal", "logit", "decision", "p_uncalibrated", "triage", "implausible"}
    np.testing.assert_allclose(alone["p_uncalibrated"], _keras_views(run_dir, pixels, 1)[:, 0], atol=PARITY, rtol=0)
    assert np.abs(alone["p_abnormal"] - served["p_abnormal"]).max() > 10 * PARITY
    assert np.ptp(spread) > 10 * PARITY
    # The run's own triage (its 16 validation images: too few for either bound): every image review.
    assert info["triage"] == triage.to_record(triage.run_triage(RunFolder.open(run_dir), triage.TriageSettings()))
    assert info["triage"]["rule_out"]["threshold"] is None and set(served["triage"]) == {REVIEW}


def test_test_time_views_average_each_findings_sigmoid_before_its_temperature(finding_trained):
    _, _, pixels = _val_rows(finding_trained)
    run_dir = finding_trained["dirs"][0]
    module, _, _, _ = exporter.build_module(exporter.plan([run_dir], tta=2))
    served = module.serve_pixels(tf.constant(pixels))["p_findings"].numpy()
    sigmoids = np.stack([split_outputs(out)[1] for out in _keras_outputs(run_dir, pixels, 2)])  # (V, N, 14)
    temperatures = list(RunFolder.open(run_dir).finding_temperatures())
    expected = test_export._through_temperatures(sigmoids.mean(axis=0), temperatures)
    np.testing.assert_allclose(served, expected, atol=PARITY, rtol=0)
    assert np.abs(expected - test_export._through_temperatures(sigmoids[0], temperatures)).max() > 10 * PARITY


def test_ensemble_views_and_a_tta_or_triage_flag_against_the_file_are_refused(trained, tmp_path):
    fitted = _fitted(0.3, 0.7, None)
    path = _write_ensemble(str(tmp_path / "e.probabilities.json"), trained, WEIGHTS, TEMPERATURES,
                           triage.to_record(fitted), views=2)
    target = tmp_path / "served"
    cases = [(dict(tta=3), "--tta=3 with --ensemble: its members' predictions averaged [2, 2] views"),
             (dict(triage_alpha=0.1), "--triage_alpha with --ensemble")]
    for flags, message in cases:
        with pytest.raises(UserInputError, match=message.replace("[", r"\[").replace("]", r"\]")):
            exporter.run_export(ExportConfig(trained["dirs"], str(target), ensemble=path, **flags))
        assert not target.exists()
    too_many = _write_ensemble(str(tmp_path / "many.probabilities.json"), trained, WEIGHTS, TEMPERATURES,
                               views=tta.MAX_VIEWS + 1)
    with pytest.raises(UserInputError, match=f"at most {tta.MAX_VIEWS}"):
        exporter.run_export(ExportConfig(trained["dirs"], str(target), ensemble=too_many))
    # The file's own views are served: each member on 2, the spread over members and views.
    plan = exporter.plan(trained["dirs"], path, None, tta=2)
    assert plan.views == [2, 2] and plan.triage == fitted
    module, _, _, _ = exporter.build_module(plan)
    _, _, pixels = _val_rows(trained)
    out = {k: v.numpy() for k, v in module.serve_pixels(tf.constant(pixels)).items()}
    by_view = np.stack([_keras_views(d, pixels, 2) for d in trained["dirs"]], axis=1).astype(np.float64)  # (N, M, V)
    # Each member's spread over its views at its run's temperature, as predict.py --tta writes p_spread.
    own = [RunFolder.open(d).temperature or 1.0 for d in trained["dirs"]]
    calibrated = np.stack([calibration.apply_temperature(by_view[:, m], t) for m, t in enumerate(own)], axis=1)
    members = np.stack([calibration.apply_temperature(by_view[:, m].mean(axis=1), t)
                        for m, t in enumerate(TEMPERATURES)], axis=1)
    np.testing.assert_allclose(out["member_p_abnormal"], members, atol=PARITY, rtol=0)
    expected = triage.spread(members, np.array(WEIGHTS), calibrated.std(axis=2))
    np.testing.assert_allclose(out["p_spread"], expected, atol=PARITY, rtol=0)


def test_with_views_the_served_spread_and_triage_equal_predict_ensemble_py_and_predict_ensemble(trained, tmp_path):
    # Catches: the served spread over a member's views taken at the ensemble's temperature instead of
    # its run's (as predict.py --tta writes p_spread), which moved it by 7.6e-5 against a spread limit
    # of ~0.01 (found in review); the blend's spread leaving out the members' own view spreads.
    from evaluation import ensemble_apply, ensembling, prediction
    from evaluation.settings import EnsembleConfig, PredictConfig

    result = prediction.run_prediction(PredictConfig(
        model_dir=trained["dirs"], data_dir=trained["data_dir"], split="val", output=str(tmp_path / "val.csv"),
        global_batch_size=8, strategy="default", precision="float32", bootstrap=0, progress=False, tta=3))
    files = list(result.outputs.values())
    temperatures = [RunFolder.open(d).temperature for d in trained["dirs"]]
    assert all(t is not None and abs(t - 1.0) > 1e-3 for t in temperatures)  # runs' T differ from the blend's 1
    submission = str(tmp_path / "ens" / "submission.csv")
    ensembling.run_ensemble(EnsembleConfig(files, submission, blend_weight=[0.7, 0.3], threshold=0.45,
                                           bootstrap=0, calibrate_on=tuple(files)))
    path = ensemble_file.ensemble_path(submission)
    applied = str(tmp_path / "applied.csv")
    ensemble_apply.apply_ensemble(path, trained["dirs"], files, applied)
    ids, image_bytes, pixels = _val_rows(trained)
    exporter.run_export(ExportConfig(trained["dirs"], str(tmp_path / "served"), ensemble=path))
    served = _served(tmp_path / "served", image_bytes, pixels)
    for frame in (pd.read_csv(applied).set_index("image_id").loc[ids],
                  pd.read_csv(ensemble_file.blend_path(submission)).set_index("image_id").loc[ids]):
        for signature in ("bytes", "pixels"):
            np.testing.assert_allclose(served[signature]["p_spread"], frame["p_spread"], atol=PARITY)
        assert list(served["pixels"]["triage"]) == list(frame["triage"])  # the bytes: 32 px, implausible
    own = np.stack([pd.read_csv(p).set_index("image_id").loc[ids, "p_spread"] for p in files], axis=1)
    assert (own > 0).all()  # the members' own view spreads enter the blend's
