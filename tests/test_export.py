"""export.py: one SavedModel (bytes or pixels in) that computes what predict.py and ensemble.py computed."""

import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

from contracts import ensemble_file
from contracts.labels import FINDINGS
from contracts.manifest import ShardFolder
from evaluation import ensemble_apply, ensembling, prediction
from evaluation.settings import EnsembleConfig, PredictConfig
from preprocess import images as builder_images
from preprocess import raw_images
from serving import decode, exporter
from serving.config import ExportConfig
from tests.shard_factory import write_shards
from training.config import TrainConfig
from training.loop import run_training

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 32
PARITY = 1e-5  # served (SavedModel) against predict.py (model.keras): the same weights in two graphs
PROJECT_PACKAGES = ("models", "pipeline", "preprocess", "training", "evaluation", "serving", "flags")


def _train(data_dir, model_dir, seed):
    run_training(TrainConfig(backbone="tiny_test", data_dir=data_dir, weights="none", global_batch_size=8,
                             epochs=2, precision="float32", strategy="default", seed=seed, model_dir=model_dir))
    return model_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Shards, two trained tiny runs, their val predictions and an ensemble file over them."""
    root = tmp_path_factory.mktemp("export")
    data_dir = str(root / "shards")
    written = write_shards(data_dir, {"train": 32, "val": 16}, image_size=SIZE)
    dirs = [_train(data_dir, str(root / f"run{i}"), seed=i) for i in range(2)]
    out = str(root / "pred" / "val.csv")
    result = prediction.run_prediction(PredictConfig(model_dir=dirs, data_dir=data_dir, split="val",
                                                     output=out, global_batch_size=8, strategy="default",
                                                     precision="float32", bootstrap=0, progress=False))
    files = list(result.outputs.values())
    submission = str(root / "ens" / "submission.csv")
    ensembling.run_ensemble(EnsembleConfig(files, submission, blend_weight=[0.7, 0.3], threshold=0.45,
                                           bootstrap=0))
    return {"root": root, "data_dir": data_dir, "dirs": dirs, "predictions": files, "written": written,
            "submission": submission, "ensemble": ensemble_file.ensemble_path(submission)}


@pytest.fixture(scope="module")
def finding_runs(tmp_path_factory):
    """Two tiny runs with the findings head, on shards whose records name their findings (abnormal:
    Mass), and predict.py's member files on their val split."""
    root = tmp_path_factory.mktemp("findings")
    data_dir = str(root / "shards")
    written = write_shards(data_dir, {"train": 32, "val": 16}, image_size=SIZE, findings_known=True)
    dirs = [_train(data_dir, str(root / f"run{i}"), seed=i) for i in range(2)]
    result = prediction.run_prediction(PredictConfig(model_dir=dirs, data_dir=data_dir, split="val",
                                                     output=str(root / "pred" / "val.csv"), global_batch_size=8,
                                                     strategy="default", precision="float32", bootstrap=0,
                                                     progress=False))
    return {"dirs": dirs, "predictions": list(result.outputs.values()), "written": written}


def _png(pixels: np.ndarray, mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


def _serve_in_clean_process(export_dir, image_bytes, pixels, tmp_path):
    """Calls both signatures in a Python that cannot import the project; returns their outputs."""
    np.save(tmp_path / "pixels.npy", pixels)
    with open(tmp_path / "bytes.json", "w") as f:
        json.dump([b.hex() for b in image_bytes], f)
    script = f"""
import importlib.abc, json, sys
import numpy as np

class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {PROJECT_PACKAGES!r}:
            raise ImportError("the project is not importable here: " + name)
        return None

sys.meta_path.insert(0, Blocked())
import tensorflow as tf
loaded = tf.saved_model.load({str(export_dir)!r})
images = [bytes.fromhex(h) for h in json.load(open({str(tmp_path / 'bytes.json')!r}))]
by_bytes = loaded.signatures["serving_default"](image_bytes=tf.constant(images))
by_pixels = loaded.signatures["pixels"](pixels=tf.constant(np.load({str(tmp_path / 'pixels.npy')!r})))
refused = []
for name, call in [("bytes", lambda: loaded.signatures["serving_default"](image_bytes=tf.constant([b"not an image"]))),
                   ("signature", lambda: loaded.signatures["serving_default"](image_bytes=tf.constant([{decode.PNG_SIGNATURE!r}]))),
                   ("size", lambda: loaded.signatures["pixels"](pixels=tf.zeros([2, {SIZE // 2}, {SIZE // 2}, 3])))]:
    try:
        call()
        refused.append(name + ": answered")
    except tf.errors.InvalidArgumentError as err:
        refused.append(name + ": InvalidArgumentError " + str(err))
as_array = lambda v: v.numpy().astype(str) if v.dtype == tf.string else v.numpy()
np.savez({str(tmp_path / 'out.npz')!r}, **{{"bytes_" + k: as_array(v) for k, v in by_bytes.items()}},
         **{{"pixels_" + k: as_array(v) for k, v in by_pixels.items()}}, refused=np.array(refused))
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", script], cwd=str(tmp_path), env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = dict(np.load(tmp_path / "out.npz"))
    # Not an image, a PNG signature alone, pixels of half the size: each request fails, none answers.
    bytes_refused, signature_refused, size_refused = [str(r) for r in out.pop("refused")]
    assert bytes_refused.startswith("bytes: InvalidArgumentError"), bytes_refused
    assert "truncated PNG" in signature_refused, signature_refused
    assert f"pixels must be float32 [batch, {SIZE}, {SIZE}, 3]" in size_refused, size_refused
    assert f"[2 {SIZE // 2} {SIZE // 2} 3]" in size_refused, size_refused
    return out


def _val_rows(runs):
    rows = sorted(runs["written"]["val"], key=lambda r: r["image_id"])
    pixels = np.stack([np.repeat(r["pixels"][..., None], 3, axis=-1) for r in rows]).astype(np.float32)
    return [r["image_id"] for r in rows], [_png(r["pixels"]) for r in rows], pixels


def _same_by_name(out, frame, member_frames=()):
    """Checks that every served output whose name is also a column of predict.py's CSV holds that
    column's numbers (and `member_<column>`, each member's CSV column, members on the last axis);
    returns the names compared. The CSVs' rows must be in the served order."""
    compared = set()
    for key, values in out.items():
        name = key.split("_", 1)[1]  # bytes_<name> or pixels_<name>
        if name in frame.columns:
            expected = frame[name].to_numpy()
        elif name.startswith("member_") and member_frames and name[len("member_"):] in member_frames[0].columns:
            expected = np.stack([f[name[len("member_"):]].to_numpy() for f in member_frames], axis=1)
        else:
            continue
        if values.dtype.kind == "U":  # a string output (triage): the same words
            np.testing.assert_array_equal(values, expected.astype(str), err_msg=f"served {key}")
        else:
            np.testing.assert_allclose(values, expected, atol=1e-5, err_msg=f"served {key} against predict.py's {name}")
        compared.add(name)
    return compared


def test_single_model_serves_what_predict_computed_and_loads_without_the_project(runs, tmp_path):
    export_dir = tmp_path / "served"
    info = exporter.run_export(ExportConfig([runs["dirs"][0]], str(export_dir), threshold=0.3))
    ids, image_bytes, pixels = _val_rows(runs)
    out = _serve_in_clean_process(export_dir, image_bytes, pixels, tmp_path)
    frame = pd.read_csv(runs["predictions"][0]).set_index("image_id").loc[ids]
    # One name, one quantity: each output that predict.py's CSV also names holds the same numbers.
    assert _same_by_name(out, frame) == {"p_abnormal", "p_uncalibrated", "triage"}
    raw, predicted = frame["p_uncalibrated"].to_numpy(), frame["p_abnormal"].to_numpy()
    # The run's temperature, fitted here independently: the inverse slope of an intercept-free
    # logistic regression of the validation labels on the validation logits.
    from sklearn.linear_model import LogisticRegression

    val = pd.read_csv(os.path.join(runs["dirs"][0], "val_predictions.csv"))
    clipped = np.clip(val.p_uncalibrated, 1e-7, 1 - 1e-7)
    z = np.log(clipped) - np.log1p(-clipped)
    slope = LogisticRegression(fit_intercept=False, C=np.inf, tol=1e-10).fit(z.to_numpy()[:, None], val.label).coef_
    temperature = 1 / float(slope[0, 0])
    assert info["members"][0]["temperature"] == pytest.approx(temperature, rel=1e-3) and temperature != 1.0
    np.testing.assert_allclose(predicted, 1 / (1 + np.exp(-np.log(raw / (1 - raw)) / temperature)), atol=1e-4)
    np.testing.assert_allclose(out["pixels_p_abnormal"], predicted, atol=1e-5)
    np.testing.assert_allclose(out["bytes_p_abnormal"], predicted, atol=1e-5)  # same size: exact decode
    np.testing.assert_allclose(out["bytes_p_uncalibrated"], raw, atol=1e-5)
    assert np.ptp(predicted) > 1e-3  # the comparison bites only if the output depends on the image
    # The logit is the pre-softmax margin over the temperature: its sigmoid is the served probability.
    np.testing.assert_allclose(1 / (1 + np.exp(-out["bytes_logit"].astype(np.float64))), predicted, atol=1e-5)
    np.testing.assert_array_equal(out["bytes_decision"], (predicted >= 0.3).astype(np.int32))
    assert set(out) == {f"{s}_{k}" for s in ("bytes", "pixels")
                        for k in ("p_abnormal", "logit", "decision", "p_uncalibrated", "triage", "implausible")}
    # The val images are 32 px PNGs, under the builder's 128 px minimum, but not flat: the bytes are
    # marked implausible (the builder would have skipped them), the pixels (no source size) are not.
    assert out["bytes_implausible"].all() and not out["pixels_implausible"].any()
    with open(export_dir / exporter.EXPORT_INFO) as f:
        assert json.load(f) == info
    # Trained without finding labels: the binary model alone, served as before, and export.json says why.
    assert info["findings"] == {"output": None, "why": "no p_findings: no findings head in tiny_test "
                                                      "(trained with --findings_weight=0)"}
    assert info["members"][0]["finding_weights"] is None
    assert info["threshold"] == 0.3 and info["image_size"] == SIZE and info["backbones"] == ["tiny_test"]
    assert info["signatures"]["serving_default"]["inputs"] == {"image_bytes": "string [None]"}


def test_ensemble_serves_the_blend_ensemble_py_wrote(runs, tmp_path):
    export_dir = tmp_path / "served"
    # Given in the other order: members are matched by folder, and blended in the file's order.
    info = exporter.run_export(ExportConfig(runs["dirs"][::-1], str(export_dir), ensemble=runs["ensemble"]))
    ids, image_bytes, pixels = _val_rows(runs)
    out = _serve_in_clean_process(export_dir, image_bytes, pixels, tmp_path)
    blended = pd.read_csv(ensemble_file.blend_path(runs["ensemble"])).set_index("image_id").loc[ids]
    submission = pd.read_csv(runs["submission"]).set_index("image_id").loc[ids]
    np.testing.assert_allclose(out["bytes_p_abnormal"], blended["p_abnormal"], atol=1e-5)
    np.testing.assert_array_equal(out["bytes_decision"], submission["decision"])
    # No temperatures were fitted: the members' softmax outputs are blended as they are.
    members = [pd.read_csv(p).set_index("image_id").loc[ids, "p_uncalibrated"] for p in runs["predictions"]]
    np.testing.assert_allclose(out["bytes_member_p_uncalibrated"], np.stack(members, axis=1), atol=1e-5)
    # Independent of the blend code: the weighted mean of the member columns.
    np.testing.assert_allclose(out["pixels_p_abnormal"], 0.7 * members[0] + 0.3 * members[1], atol=1e-5)
    assert [m["weight"] for m in info["members"]] == pytest.approx([0.7, 0.3])
    assert info["threshold"] == pytest.approx(0.45)


def test_an_ensemble_with_fitted_temperatures_serves_what_ensemble_py_blended(runs, tmp_path):
    submission = str(tmp_path / "fitted" / "submission.csv")
    fit_on = [os.path.join(d, "val_predictions.csv") for d in runs["dirs"]]
    ensembling.run_ensemble(EnsembleConfig(runs["predictions"], submission, fit_on=fit_on, fit_step=0.1,
                                           bootstrap=0))
    info = exporter.run_export(ExportConfig(runs["dirs"], str(tmp_path / "served"),
                                            ensemble=ensemble_file.ensemble_path(submission)))
    temperatures = [m["temperature"] for m in info["members"]]
    assert all(abs(t - 1.0) > 1e-3 for t in temperatures)  # the comparison bites only with real temperatures
    ids, image_bytes, pixels = _val_rows(runs)
    out = _serve_in_clean_process(tmp_path / "served", image_bytes, pixels, tmp_path)
    blended = pd.read_csv(ensemble_file.blend_path(submission)).set_index("image_id").loc[ids, "p_abnormal"]
    np.testing.assert_allclose(out["bytes_p_abnormal"], blended, atol=1e-5)
    # predict.py --ensemble: the members' CSVs blended into one; the served outputs by name against them.
    predicted = str(tmp_path / "predicted.csv")
    ensemble_apply.apply_ensemble(ensemble_file.ensemble_path(submission), runs["dirs"], runs["predictions"], predicted)
    member_frames = [pd.read_csv(p).set_index("image_id").loc[ids] for p in runs["predictions"]]
    compared = _same_by_name(out, pd.read_csv(predicted).set_index("image_id").loc[ids], member_frames)
    assert compared == {"p_abnormal", "member_p_uncalibrated", "member_p_abnormal", "p_spread", "triage"}
    # Independently: each member's raw probability through its temperature, then the weighted mean.
    raw = np.stack([f["p_uncalibrated"] for f in member_frames], axis=1)
    calibrated = 1 / (1 + np.exp(-np.log(raw / (1 - raw)) / np.array(temperatures)))
    weights = np.array([m["weight"] for m in info["members"]])
    np.testing.assert_allclose(out["pixels_p_abnormal"], calibrated @ weights, atol=1e-5)
    np.testing.assert_array_equal(out["bytes_decision"], (calibrated @ weights >= info["threshold"]).astype(np.int32))


def _through_temperatures(raw, temperatures):
    """sigmoid(logit(p) / T) per column in float64, p clipped as the calibration clips it; None: p."""
    clipped = np.clip(raw.astype(np.float64), 1e-7, 1 - 1e-7)
    scaled = 1 / (1 + np.exp(-(np.log(clipped) - np.log1p(-clipped)) / [t or 1.0 for t in temperatures]))
    return np.where([t is None for t in temperatures], raw, scaled)


def _served_findings(finding_runs, export_dir, tmp_path):
    ids, image_bytes, pixels = _val_rows(finding_runs)
    out = _serve_in_clean_process(export_dir, image_bytes, pixels, tmp_path)
    np.testing.assert_array_equal(out["bytes_p_findings"], out["pixels_p_findings"])  # same size: exact decode
    frames = [pd.read_csv(p).set_index("image_id").loc[ids] for p in finding_runs["predictions"]]
    return out, frames


def test_one_model_serves_predicts_finding_columns_through_its_finding_temperatures(finding_runs, tmp_path):
    run_dir = finding_runs["dirs"][0]
    info = exporter.run_export(ExportConfig([run_dir], str(tmp_path / "served")))
    out, (frame, _) = _served_findings(finding_runs, tmp_path / "served", tmp_path)
    assert info["findings"] == {"output": "p_findings", "names": list(FINDINGS)}
    assert info["signatures"]["pixels"]["outputs"]["p_findings"] == "float32 [None, 14]"
    served = out["bytes_p_findings"]
    assert served.shape == (16, len(FINDINGS)) and served.dtype == np.float32
    predicted = frame[[f"p_{f}" for f in FINDINGS]].to_numpy()
    gap = np.abs(served - predicted).max()
    print(f"one model: max |served p_findings - predict.py p_<finding>| = {gap:.2e}")
    assert gap <= PARITY
    # Independently: the run's own per-finding temperatures (its val sidecar) on the raw sigmoids.
    with open(os.path.join(run_dir, "val_predictions.json")) as f:
        fitted = json.load(f)["finding_temperatures"]
    temperatures = [fitted[f] for f in FINDINGS]
    assert abs(temperatures[FINDINGS.index("Mass")] - 1.0) > 1e-2  # the comparison bites on Mass
    assert info["members"][0]["finding_temperatures"] == [t or 1.0 for t in temperatures]
    assert info["members"][0]["finding_weights"] == [1.0] * len(FINDINGS)
    raw = frame[[f"p_uncalibrated_{f}" for f in FINDINGS]].to_numpy()
    np.testing.assert_allclose(served, _through_temperatures(raw, temperatures), atol=PARITY, rtol=0)
    # The parity bites: the outputs depend on the image, and reversing the columns changes them. Not
    # every column need vary: a finding's fitted temperature may flatten it to ~0.5 on these few images.
    assert np.ptp(served, axis=0).max() > 1e-3 and np.abs(served - served[:, ::-1]).max() > 1e-3


def _hand_written_ensemble(finding_runs, path, per_finding=True):
    """A schema 5 ensemble file over the finding runs with (unnormalised) weights and temperatures per
    finding, different for every member and finding; returns them, (members, 14) each."""
    rng = np.random.default_rng(7)
    weights, temperatures = rng.uniform(0.1, 3.0, (2, len(FINDINGS))), rng.uniform(0.4, 2.5, (2, len(FINDINGS)))
    inputs = [{"name": f"m{m}", "path": p, "weight": 0.5, "temperature": 1.0, "model_dir": d,
               "backbone": "tiny_test",
               **({ensemble_file.FINDING_WEIGHTS: weights[m].tolist(),
                   ensemble_file.FINDING_TEMPERATURES: temperatures[m].tolist()} if per_finding else {})}
              for m, (d, p) in enumerate(zip(finding_runs["dirs"], finding_runs["predictions"]))]
    with open(path, "w") as f:
        json.dump({"schema_version": ensemble_file.SCHEMA_VERSION, "inputs": inputs, "threshold": 0.5}, f)
    return weights, temperatures


def test_an_ensemble_serves_each_finding_blended_by_its_own_weights_and_temperatures(finding_runs, tmp_path):
    path = str(tmp_path / "hand.probabilities.json")
    weights, temperatures = _hand_written_ensemble(finding_runs, path)
    info = exporter.run_export(ExportConfig(finding_runs["dirs"], str(tmp_path / "served"), ensemble=path))
    out, frames = _served_findings(finding_runs, tmp_path / "served", tmp_path)
    # Independently of the serving code: each member's predict.py raw columns through its temperature
    # per finding, then each finding's weighted mean with that finding's normalised weights.
    raw = np.stack([f[[f"p_uncalibrated_{n}" for n in FINDINGS]].to_numpy() for f in frames])
    calibrated = np.stack([_through_temperatures(r, t) for r, t in zip(raw, temperatures.tolist())])
    expected = np.einsum("mnf,mf->nf", calibrated, weights / weights.sum(axis=0))
    gap = np.abs(out["bytes_p_findings"] - expected).max()
    print(f"ensemble: max |served p_findings - blend of predict.py's members| = {gap:.2e}")
    assert gap <= PARITY
    assert np.ptp(raw[0] - raw[1]) > 1e-3  # the members differ: the weights matter
    np.testing.assert_allclose([m["finding_weights"] for m in info["members"]], weights / weights.sum(axis=0))
    np.testing.assert_allclose([m["finding_temperatures"] for m in info["members"]], temperatures)
    assert info["signatures"]["serving_default"]["outputs"]["p_findings"] == "float32 [None, 14]"


def test_an_ensemble_file_without_finding_weights_serves_the_binary_outputs_and_says_why(finding_runs, tmp_path):
    path = str(tmp_path / "old.probabilities.json")
    _hand_written_ensemble(finding_runs, path, per_finding=False)
    info = exporter.run_export(ExportConfig(finding_runs["dirs"], str(tmp_path / "served"), ensemble=path))
    assert info["findings"]["output"] is None and "no per-finding weights" in info["findings"]["why"]
    assert "p_findings" not in info["signatures"]["serving_default"]["outputs"]
    served = tf.saved_model.load(str(tmp_path / "served")).signatures["serving_default"]
    assert "p_findings" not in served.structured_outputs


def _as_format_1(run_dir, folder):
    """A copy of a run folder whose val_predictions.csv is as written before the format version:
    p_abnormal the softmax output (today's p_uncalibrated), no version in the sidecar."""
    shutil.copytree(run_dir, folder)
    path = os.path.join(folder, "val_predictions.csv")
    frame = pd.read_csv(path, dtype={"image_id": str})
    frame["p_abnormal"] = frame.pop("p_uncalibrated")
    frame.to_csv(path, index=False, float_format="%.17g")
    with open(os.path.join(folder, "val_predictions.json")) as f:
        sidecar = json.load(f)
    del sidecar["prediction_format_version"]
    with open(os.path.join(folder, "val_predictions.json"), "w") as f:
        json.dump(sidecar, f)
    return folder


def test_a_run_folder_from_before_the_format_version_gives_todays_numbers(runs, tmp_path):
    from evaluation import operating_points

    old = [_as_format_1(d, str(tmp_path / f"old{i}")) for i, d in enumerate(runs["dirs"])]
    # ensemble.py --fit_on: the same temperatures, weights, threshold and blend from either file.
    blends = []
    for name, dirs in (("new", runs["dirs"]), ("old", old)):
        submission = str(tmp_path / name / "submission.csv")
        ensembling.run_ensemble(EnsembleConfig(runs["predictions"], submission,
                                               fit_on=[os.path.join(d, "val_predictions.csv") for d in dirs],
                                               fit_step=0.1, bootstrap=0))
        with open(ensemble_file.ensemble_path(submission)) as f:
            chosen = json.load(f)
        blends.append((chosen["temperatures"], chosen["weights"], chosen["threshold"],
                       pd.read_csv(ensemble_file.blend_path(submission))["p_abnormal"].tolist()))
    assert blends[0] == blends[1]
    # predict.py: the same p_abnormal, and the same operating points chosen on validation.
    written = []
    for name, run_dir in (("new", runs["dirs"][0]), ("old", old[0])):
        out = str(tmp_path / name / "val.csv")
        prediction.run_prediction(PredictConfig(model_dir=[run_dir], data_dir=runs["data_dir"], split="val",
                                                output=out, global_batch_size=8, strategy="default",
                                                precision="float32", bootstrap=0, progress=False))
        with open(os.path.join(tmp_path, name, "val_report", operating_points.OPERATING_POINTS_FILE)) as f:
            written.append((pd.read_csv(out)["p_abnormal"].tolist(), json.load(f)))
    assert written[0] == written[1]
    # export.py: the run's temperature, as recorded.
    info = exporter.run_export(ExportConfig([old[0]], str(tmp_path / "served")))
    with open(os.path.join(runs["dirs"][0], "val_predictions.json")) as f:
        assert info["members"][0]["temperature"] == json.load(f)["temperature"]


def _encoded(mode: str, height: int, width: int) -> bytes:
    """A smooth, noisy test image of `mode` ("JPEG" for an RGB JPEG), with values over the full range."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:height, 0:width]
    base = (np.sin(yy / 17.0) * 60 + np.cos(xx / 11.0) * 50 + 128 + rng.normal(0, 8, yy.shape)).clip(0, 255)
    buffer = io.BytesIO()
    if mode == "I;16":  # every 16-bit value, not only multiples of 257
        Image.fromarray((base * 256 + rng.integers(0, 256, base.shape)).astype(np.uint16)).save(buffer, "PNG")
    elif mode == "JPEG":
        Image.fromarray(base.astype(np.uint8)).convert("RGB").save(buffer, format="JPEG", quality=90)
    else:
        colour = Image.fromarray(np.stack([base, base[::-1], base[:, ::-1]], axis=-1).astype(np.uint8))
        (colour.quantize(64) if mode == "P" else colour.convert(mode)).save(buffer, format="PNG")
    return buffer.getvalue()


def _builder_pixels(data: bytes, size: int) -> np.ndarray:
    stored = builder_images.process(data, box=None, image_size=size, image_format="png").encoded
    return np.asarray(Image.open(io.BytesIO(stored)), dtype=np.float64)


MODES = ["L", "LA", "RGB", "RGBA", "P", "I;16", "JPEG"]


@pytest.mark.parametrize("mode", MODES)
def test_graph_grayscale_is_the_builders_exactly(mode):
    data = _encoded(mode, 96, 96)  # stored at its own size: no resize, the conversion alone
    got = decode.bytes_to_pixels(tf.constant(data), 96).numpy().astype(np.float64)
    np.testing.assert_array_equal(got, _builder_pixels(data, 96))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("side, size", [(300, 64), (301, 40), (90, 64), (1024, 224), (20, 32)])
def test_graph_resize_of_square_images_is_the_builders_exactly(mode, side, size):
    # Reduced by 2, by 3 with a fractional box (odd side), scaled without reduction, NIH's 1024 -> 224,
    # enlarged; JPEGs are decoded at their draft scale first (1/1 for a JPEG smaller than the target).
    data = _encoded(mode, side, side)
    got = decode.bytes_to_pixels(tf.constant(data), size).numpy().astype(np.float64)
    np.testing.assert_array_equal(got, _builder_pixels(data, size))


@pytest.mark.parametrize("mode", ["L", "RGB", "JPEG"])
@pytest.mark.parametrize("height, width", [(300, 260), (260, 300), (90, 70), (500, 200)])
def test_graph_resize_of_other_shapes_is_within_one_grey_level(mode, height, width):
    # Pillow resamples horizontally, then vertically; recent Pillow goes vertical-first when the
    # height shrinks much more than the width, and the two orders round differently by one level.
    data = _encoded(mode, height, width)
    gap = np.abs(decode.bytes_to_pixels(tf.constant(data), 64).numpy().astype(np.float64)
                 - _builder_pixels(data, 64))
    assert gap.max() <= 1 and gap.mean() <= 0.5


def test_same_size_gray_png_decodes_exactly():
    pixels = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
    np.testing.assert_array_equal(decode.bytes_to_pixels(tf.constant(_png(pixels)), SIZE).numpy(), pixels)


@pytest.mark.parametrize("data", [b"", b"hello, not an image", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "truncated"])
def test_bytes_that_are_not_an_image_fail_the_request(data):
    if data == "truncated":
        data = _png(np.full((64, 64), 7, np.uint8))[:60]
    with pytest.raises(tf.errors.InvalidArgumentError):
        decode.bytes_to_pixels(tf.constant(data), SIZE).numpy()


@pytest.mark.parametrize("length", [8, 23])
def test_a_png_cut_before_its_width_and_height_is_refused_as_truncated(length):
    # The signature alone, and one byte short of the height: never a Python error from the bytes.
    data = _png(np.full((40, 40), 9, np.uint8))[:length]
    with pytest.raises(tf.errors.InvalidArgumentError, match="truncated PNG"):
        decode.bytes_to_pixels(tf.constant(data), SIZE).numpy()


def test_a_cmyk_jpeg_is_refused_by_the_builder_and_the_served_model_with_one_reason():
    cmyk = io.BytesIO()
    Image.open(io.BytesIO(_encoded("RGB", 64, 64))).convert("CMYK").save(cmyk, "JPEG")
    data = cmyk.getvalue()
    assert Image.open(io.BytesIO(data)).mode == "CMYK"  # Pillow reads it, and would make it gray
    with pytest.raises(builder_images.ImageError) as builder_refusal:
        builder_images.process(data, box=None, image_size=SIZE, image_format="png")
    with pytest.raises(tf.errors.InvalidArgumentError) as served_refusal:
        decode.bytes_to_pixels(tf.constant(data), SIZE).numpy()
    assert builder_images.JPEG_FOUR_COMPONENTS == str(builder_refusal.value)
    assert builder_images.JPEG_FOUR_COMPONENTS in str(served_refusal.value)


def test_dicom_bytes_are_refused_with_the_way_to_score_them(shared_dicom):
    with open(os.path.join(shared_dicom, "siim_chest_pa.dcm"), "rb") as f:
        data = f.read()  # its JPEG frame alone would be served
    with pytest.raises(tf.errors.InvalidArgumentError, match="a DICOM file: .*predict.py --images"):
        decode.bytes_to_pixels(tf.constant(data), SIZE).numpy()


def test_images_over_the_pixel_limit_are_refused_before_decoding():
    data = _png(np.zeros((100, 100), np.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_image_pixels"):
        decode.bytes_to_pixels(tf.constant(data), SIZE, max_pixels=9_999).numpy()
    assert decode.bytes_to_pixels(tf.constant(data), SIZE, max_pixels=10_000).shape == (SIZE, SIZE)


def _export_cli(*args):
    return subprocess.run([sys.executable, "export.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_bad_exports_fail_in_one_line_and_write_nothing(runs, tmp_path):
    target = tmp_path / "out"
    empty_run = tmp_path / "no_model"
    empty_run.mkdir()
    import shutil

    shutil.copy(os.path.join(runs["dirs"][0], "config.json"), empty_run)  # a run folder without model.keras
    cases = {
        "several without --ensemble": ([f"--model_dir={d}" for d in runs["dirs"]], "--ensemble"),
        "ensemble members differ": ([f"--model_dir={runs['dirs'][0]}", f"--ensemble={runs['ensemble']}"],
                                    "missing"),
        "no model.keras": ([f"--model_dir={empty_run}"], "model.keras not found"),
        "threshold and ensemble": ([f"--model_dir={d}" for d in runs["dirs"]]
                                   + [f"--ensemble={runs['ensemble']}", "--threshold=0.3"], "drop --threshold"),
    }
    for name, (args, fragment) in cases.items():
        done = _export_cli(*args, f"--export_dir={target}")
        assert done.returncode == 1, (name, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert lines[-1].startswith("export.py: ") and fragment in lines[-1], (name, lines[-1])
        assert "Traceback" not in done.stderr, name
        assert not target.exists(), name
        assert not [p for p in os.listdir(tmp_path) if p.startswith(".partial")], name


def test_model_dirs_joined_by_commas_get_the_fix(runs):
    from contracts import ensemble_file

    ensemble = ensemble_file.load_ensemble(runs["ensemble"])
    with pytest.raises(prediction.UserInputError, match="give --model_dir once per model"):
        ensemble_file.match_members(ensemble, [",".join(runs["dirs"])])


def test_bbox_trained_model_is_exported_with_a_warning(runs, tmp_path):
    run = tmp_path / "bbox_run"
    import shutil

    shutil.copytree(runs["dirs"][0], run)
    with open(run / "config.json") as f:
        config = json.load(f)
    config["crop"] = "bbox"
    with open(run / "config.json", "w") as f:
        json.dump(config, f)
    info = exporter.run_export(ExportConfig([str(run)], str(tmp_path / "served")))
    assert info["crop"] == "bbox" and any("uncropped" in w for w in info["warnings"])


def test_the_pixel_limit_is_the_one_the_training_shards_were_built_with(runs, tmp_path):
    # Regression: the exporter or predict.py --images falling back to the builder's default limit.
    shards, run = tmp_path / "shards", tmp_path / "run"
    shutil.copytree(runs["data_dir"], shards)
    shutil.copytree(runs["dirs"][0], run)
    manifest = json.loads((shards / "manifest.json").read_text())
    manifest["config"]["max_image_pixels"] = 40 * 40
    (shards / "manifest.json").write_text(json.dumps(manifest))
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "data_dir": str(shards)}))
    info = exporter.run_export(ExportConfig([str(run)], str(tmp_path / "served")))
    assert info["max_image_pixels"] == 1600
    studies = tmp_path / "studies"
    studies.mkdir()
    (studies / "a.png").write_bytes(_png(np.zeros((41, 40), np.uint8)))
    assert raw_images.check_images_inputs([str(run)], str(studies), str(tmp_path / "p.csv")) == (SIZE, 1600)
    signature = tf.saved_model.load(str(tmp_path / "served")).signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_image_pixels"):
        signature(image_bytes=tf.constant([(studies / "a.png").read_bytes()]))


def test_existing_export_is_never_overwritten(runs, tmp_path):
    target = tmp_path / "served"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    with pytest.raises(prediction.UserInputError, match="not an empty folder"):
        exporter.run_export(ExportConfig([runs["dirs"][0]], str(target)))
    assert os.listdir(target) == ["keep.txt"]


def test_real_radiographs_served_from_bytes_match_builder_shards_and_predict(runs, nih_sample, tmp_path):
    """The 116 real NIH PNGs: bytes in the SavedModel against the builder's shards + predict."""
    from pipeline import input_pipeline
    from preprocess import builder
    from preprocess.config import BuildConfig

    shards = str(tmp_path / "shards")
    builder.build(BuildConfig(image_dir=nih_sample, output_dir=shards, split_by="unlabeled", crop="none",
                            image_size=SIZE, workers=1))
    out = str(tmp_path / "real.csv")
    prediction.run_prediction(PredictConfig(model_dir=[runs["dirs"][0]], data_dir=shards, split="eval",
                                            output=out, global_batch_size=16, strategy="default",
                                            precision="float32", bootstrap=0, progress=False))
    offline_frame = pd.read_csv(out).set_index("image_id")
    offline = offline_frame["p_abnormal"]  # served and written: after the run's temperature
    export_dir = tmp_path / "served"
    exporter.run_export(ExportConfig([runs["dirs"][0]], str(export_dir)))
    paths = {os.path.basename(p): p for p in sorted(
        os.path.join(root, name) for root, _, names in os.walk(nih_sample) for name in names if name.endswith(".png"))}
    assert len(paths) == len(offline) == 116
    ids = sorted(paths)
    data = [open(paths[i], "rb").read() for i in ids]
    served = tf.saved_model.load(str(export_dir)).signatures["serving_default"](image_bytes=tf.constant(data))
    gap = np.abs(served["p_abnormal"].numpy() - offline.loc[ids].to_numpy())
    assert gap.max() <= 0.01
    raw_gap = np.abs(served["p_uncalibrated"].numpy() - offline_frame["p_uncalibrated"].loc[ids].to_numpy())
    assert raw_gap.max() <= 0.01
    assert np.ptp(offline.to_numpy()) > 1e-3  # the model's output depends on the pixels
    # And the pixels themselves: the graph's decode + resize against what the builder stored.
    stored = {}
    for batch in input_pipeline.make_eval_dataset(ShardFolder.open(shards), "eval", 32):
        for image_id, image in zip(batch["image_id"].numpy(), batch["image"].numpy()):
            stored[image_id.decode()] = image[..., 0]
    decoded = tf.map_fn(lambda b: decode.bytes_to_pixels(b, SIZE), tf.constant(data),
                        fn_output_signature=tf.uint8).numpy().astype(np.float64)
    np.testing.assert_array_equal(decoded, np.stack([stored[i] for i in ids]))  # bit for bit
