"""serving.api.Classifier: files, bytes and pixels scored in-process as predict.py --images scores them."""

import io
import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import predict
from contracts import ensemble_file
from contracts.errors import UserInputError
from contracts.export_folder import EXPORT_SCHEMA_VERSION
from contracts.labels import FINDINGS
from evaluation import ensembling, prediction
from evaluation.settings import EnsembleConfig, PredictConfig
from preprocess import images as builder_images
from serving import exporter
from serving.api import SKIPPED, Classifier, member_column
from serving.config import ExportConfig
from tests.dicom_factory import write_dicom
from tests.shard_factory import synthetic_pixels, write_shards
from training.config import TrainConfig
from training.loop import run_training

SIZE = 32
THRESHOLD = 0.3
META = ["patient_id", "view_position", "patient_sex", "patient_age"]

# Served (SavedModel) against predict.py (model.keras): two graphs of the same weights, whose float32
# sums oneDNN may order differently by instruction set; the bound test_export.py uses for the same pair.
PARITY = 1e-5


def _train(data_dir, model_dir, seed):
    run_training(TrainConfig(backbone="tiny_test", data_dir=data_dir, weights="none", global_batch_size=8,
                             epochs=2, precision="float32", strategy="default", seed=seed, model_dir=model_dir))
    return model_dir


def _studies(folder):
    """Square PNGs (8-bit, 16-bit, RGB), a JPEG, a DICOM with its header, a truncated PNG and a note."""
    rng = np.random.default_rng(5)
    (folder / "series").mkdir(parents=True)
    pixels = [synthetic_pixels(rng, 128, abnormal=k % 2 == 0) for k in range(5)]
    Image.fromarray(pixels[0]).save(folder / "0001.png")
    Image.fromarray(pixels[1].astype(np.uint16) * 257).save(folder / "0002.png")
    Image.fromarray(pixels[2]).convert("RGB").save(folder / "0003.png")
    Image.fromarray(pixels[3]).save(folder / "0004.jpg", quality=90)
    write_dicom(str(folder / "series" / "1.dcm"), pixels[4], patient_id="P77", age="054Y", sex="F", view="AP")
    whole = (folder / "0001.png").read_bytes()
    (folder / "0005.png").write_bytes(whole[: len(whole) // 2])
    (folder / "notes.txt").write_text("not an image")


def train_ensemble(root, names=("run0", "run1"), weights=(0.7, 0.3)):
    """Tiny runs at 32 px trained on shards under `root` into `root / name`, and ensemble.py's file
    over them with `weights`."""
    data_dir = str(root / "shards")
    write_shards(data_dir, {"train": 32, "val": 16}, image_size=SIZE, findings_known=True)  # findings head on
    dirs = [_train(data_dir, str(root / name), seed=i) for i, name in enumerate(names)]
    result = prediction.run_prediction(PredictConfig(model_dir=dirs, data_dir=data_dir, split="val",
                                                     output=str(root / "pred" / "val.csv"), global_batch_size=8,
                                                     strategy="default", precision="float32", bootstrap=0,
                                                     progress=False))
    submission = str(root / "submission.csv")
    ensembling.run_ensemble(EnsembleConfig(list(result.outputs.values()), submission, blend_weight=list(weights),
                                           threshold=0.45, bootstrap=0))
    return dirs, ensemble_file.ensemble_path(submission)


def predict_images(root, images, name, **kwargs):
    """predict.py --images, in-process: (its CSV by image id, its sidecar, its path)."""
    output = str(root / "preds" / f"{name}.csv")
    predict.main(PredictConfig(images=images, output=output, global_batch_size=8, strategy="default",
                               precision="float32", bootstrap=0, progress=False, workers=1, **kwargs))
    frame = pd.read_csv(output, dtype={"image_id": str, "patient_id": str}, keep_default_na=False)
    with open(output[:-4] + ".json") as f:
        return frame.set_index("image_id"), json.load(f), output


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two tiny runs, their ensemble file, both exports, a folder of studies."""
    root = tmp_path_factory.mktemp("api")
    dirs, ensemble = train_ensemble(root)
    exporter.run_export(ExportConfig([dirs[0]], str(root / "served_one"), threshold=THRESHOLD))
    exporter.run_export(ExportConfig(dirs, str(root / "served_ensemble"), ensemble=ensemble))
    _studies(root / "studies")
    return {"root": root, "dirs": dirs, "ensemble": ensemble, "studies": str(root / "studies"),
            "one": Classifier.load(str(root / "served_one")),
            "blend": Classifier.load(str(root / "served_ensemble"))}


def _predict_images(world, images, name, **kwargs):
    return predict_images(world["root"], images, name, **kwargs)


def test_a_folder_scores_as_predict_images_scores_it(world):
    expected, sidecar, _ = _predict_images(world, world["studies"], "one", model_dir=[world["dirs"][0]],
                                           threshold=THRESHOLD)
    table = world["one"].score_files(world["studies"])
    assert list(table.index) == sorted(expected.index) == ["0001.png", "0002.png", "0003.png", "0004.jpg",
                                                          "series/1.dcm"]
    expected = expected.loc[table.index]
    np.testing.assert_allclose(table["p_abnormal"], expected["p_abnormal"], atol=PARITY, rtol=0)
    np.testing.assert_allclose(table["p_uncalibrated"], expected["p_uncalibrated"], atol=PARITY, rtol=0)
    assert (table["decision"] == (expected["p_abnormal"] >= THRESHOLD).astype(int)).all()
    logit = np.log(expected["p_abnormal"] / (1 - expected["p_abnormal"]))
    np.testing.assert_allclose(table["logit"], logit, atol=1e-4)
    # One column per finding, named and ordered as predict.py's, holding its numbers.
    findings = [f"p_{f}" for f in FINDINGS]
    assert [c for c in table.columns if c.startswith("p_") and c[2:] in FINDINGS] == findings
    gap = np.abs(table[findings].to_numpy() - expected[findings].to_numpy()).max()
    print(f"score_files: max |p_<finding> - predict.py --images| = {gap:.2e}")
    assert gap <= PARITY and np.ptp(expected[findings].to_numpy(), axis=0).max() > 1e-3
    assert table.loc["series/1.dcm", META].tolist() == ["P77", "AP", "F", 54]
    assert table[META].astype(str).equals(expected[META].astype(str))
    # The truncated PNG is skipped by both, the others scored; the note is ignored by both.
    assert [s["image"] for s in table.attrs[SKIPPED]] == [s["image"] for s in sidecar["skipped"]] == ["0005.png"]
    assert "PNG" in table.attrs[SKIPPED][0]["reason"], table.attrs[SKIPPED]
    assert table.attrs["ignored_files"] == sidecar["ignored_files"] == 1


def test_an_ensemble_from_runs_scores_as_predict_images_ensemble(world):
    expected, _, output = _predict_images(world, world["studies"], "blend", model_dir=world["dirs"],
                                          ensemble=world["ensemble"])
    model = Classifier.from_runs(world["dirs"], ensemble=world["ensemble"])
    table = model.score_files(world["studies"])
    np.testing.assert_allclose(table["p_abnormal"], expected.loc[table.index, "p_abnormal"], atol=PARITY, rtol=0)
    threshold = ensemble_file.load_ensemble(world["ensemble"]).threshold
    assert (table["decision"] == (expected.loc[table.index, "p_abnormal"] >= threshold).astype(int)).all()
    # Each member's column holds the p_uncalibrated of predict.py's file for that member's run.
    stem = output[:-4]
    for member in ensemble_file.load_ensemble(world["ensemble"]).members:
        files = [f for f in os.listdir(os.path.dirname(stem)) if f.startswith("blend.") and f.endswith(".json")]
        for name in files:
            with open(os.path.join(os.path.dirname(stem), name)) as f:
                if json.load(f).get("model_dir") == member.model_dir:
                    frame = pd.read_csv(os.path.join(os.path.dirname(stem), name[:-5] + ".csv"), index_col=0)
        np.testing.assert_allclose(table[member_column(member.name)], frame.loc[table.index, "p_uncalibrated"],
                                   atol=PARITY, rtol=0)


def test_an_ensemble_with_finding_weights_scores_each_finding_as_its_members_blend(world, tmp_path):
    rng = np.random.default_rng(11)  # a weight and a temperature per member and finding, all different
    weights, temperatures = rng.uniform(0.1, 3.0, (2, len(FINDINGS))), rng.uniform(0.4, 2.5, (2, len(FINDINGS)))
    path = str(tmp_path / "hand.probabilities.json")
    inputs = [{"name": f"m{m}", "weight": 0.5, "model_dir": d, ensemble_file.FINDING_WEIGHTS: weights[m].tolist(),
               ensemble_file.FINDING_TEMPERATURES: temperatures[m].tolist()} for m, d in enumerate(world["dirs"])]
    with open(path, "w") as f:
        json.dump({"schema_version": ensemble_file.SCHEMA_VERSION, "inputs": inputs, "threshold": 0.5}, f)
    _, _, output = _predict_images(world, world["studies"], "hand", model_dir=world["dirs"], ensemble=path)
    table = Classifier.from_runs(world["dirs"], ensemble=path).score_files(world["studies"])
    # Independently: predict.py's member files, raw sigmoid -> each finding's temperature -> its weights.
    folder, by_dir = os.path.dirname(output), {}
    for name in (n for n in os.listdir(folder) if n.startswith("hand.") and n.endswith(".json")):
        with open(os.path.join(folder, name)) as f:
            by_dir[json.load(f).get("model_dir")] = os.path.join(folder, name[:-5] + ".csv")
    raw = np.stack([pd.read_csv(by_dir[os.path.abspath(d)], index_col=0).loc[
        table.index, [f"p_uncalibrated_{f}" for f in FINDINGS]].to_numpy() for d in world["dirs"]])
    clipped = np.clip(raw, 1e-7, 1 - 1e-7)
    calibrated = 1 / (1 + np.exp(-(np.log(clipped) - np.log1p(-clipped)) / temperatures[:, None, :]))
    expected = np.einsum("mnf,mf->nf", calibrated, weights / weights.sum(axis=0))
    gap = np.abs(table[[f"p_{f}" for f in FINDINGS]].to_numpy() - expected).max()
    print(f"ensemble score_files: max |p_<finding> - blend of predict.py's members| = {gap:.2e}")
    assert gap <= PARITY and np.ptp(raw[0] - raw[1]) > 1e-3


def test_from_runs_equals_the_loaded_export(world):
    files = world["studies"]
    for loaded, built in [(world["one"], Classifier.from_runs(world["dirs"][0], threshold=THRESHOLD)),
                          (world["blend"], Classifier.from_runs(world["dirs"], ensemble=world["ensemble"]))]:
        a, b = loaded.score_files(files), built.score_files(files)
        assert list(a.columns) == list(b.columns) and list(a.index) == list(b.index)
        for column in a.columns:
            if column in META or not pd.api.types.is_numeric_dtype(a[column]):  # and the triage words
                assert (a[column] == b[column]).all(), column
            else:
                np.testing.assert_allclose(a[column], b[column], atol=1e-6, rtol=0, err_msg=column)


def test_bytes_pixels_and_paths_agree_with_the_folder(world):
    model, folder = world["blend"], world["studies"]
    table = model.score_files(folder, batch_size=2)
    paths = {i: os.path.join(folder, i) for i in table.index}
    by_bytes = model.score_bytes({i: open(p, "rb").read() for i, p in paths.items()})
    pd.testing.assert_frame_equal(by_bytes, table.loc[by_bytes.index], check_exact=True)
    listed = model.score_files([p for i, p in paths.items() if "/" not in i])
    pd.testing.assert_frame_equal(listed, table.drop(index="series/1.dcm"), check_exact=True)
    # The builder's stored pixels of each file, computed here by its own code, through `pixels`.
    stored = np.stack([np.asarray(Image.open(io.BytesIO(builder_images.process(
        open(p, "rb").read(), box=None, image_size=SIZE, image_format="png").encoded))) for p in paths.values()])
    by_pixels = model.score_pixels(stored, ids=list(paths))
    np.testing.assert_allclose(by_pixels["p_abnormal"], table["p_abnormal"], atol=1e-6, rtol=0)
    float_rgb = np.repeat(stored[..., None], 3, axis=-1).astype(np.float32)
    np.testing.assert_array_equal(model.score_pixels(float_rgb)["p_abnormal"], by_pixels["p_abnormal"])


def test_bad_input_is_skipped_or_refused_in_one_line(world, tmp_path):
    model, folder = world["one"], world["studies"]
    good = open(os.path.join(folder, "0001.png"), "rb").read()
    table = model.score_bytes({"a.png": good, "cut.png": good[:100], "b.png": good, "x.txt": b"hello"})
    assert list(table.index) == ["a.png", "b.png"]
    assert sorted(s["image"] for s in table.attrs[SKIPPED]) == ["cut.png", "x.txt"]
    assert all(s["reason"].endswith("; skipped") for s in table.attrs[SKIPPED])
    for dcm in ("a", "b"):
        os.makedirs(tmp_path / dcm)
        shutil.copy(os.path.join(folder, "0001.png"), tmp_path / dcm / "same.png")
    with pytest.raises(UserInputError, match="share the file name same.png"):
        model.score_files([str(tmp_path / "a" / "same.png"), str(tmp_path / "b" / "same.png")])
    with pytest.raises(UserInputError, match="no readable PNG, JPEG or DICOM image .1 skipped: cut.png"):
        model.score_bytes({"cut.png": good[:100]})
    with pytest.raises(UserInputError, match="neither a folder"):
        model.score_files(str(tmp_path / "missing"))
    with pytest.raises(UserInputError, match=r"expected uint8 \(N, 32, 32\)"):
        model.score_pixels(np.zeros((1, 16, 16), np.uint8))
    old = shutil.copytree(world["root"] / "served_one", tmp_path / "old")
    info = json.loads((old / "export.json").read_text())
    (old / "export.json").write_text(json.dumps({**info, "schema_version": 1}))
    with pytest.raises(UserInputError, match=f"schema 1, not {EXPORT_SCHEMA_VERSION} .other output names.; export"):
        Classifier.load(str(old))
    with pytest.raises(UserInputError, match="no export.json, not a folder export.py wrote"):
        Classifier.load(str(tmp_path / "a"))


def test_the_real_dicoms_score_as_predict_images_scores_them(world, shared_dicom):
    expected, _, _ = _predict_images(world, shared_dicom, "dicom", model_dir=[world["dirs"][0]],
                                     threshold=THRESHOLD)
    table = world["one"].score_files(shared_dicom)
    assert list(table.index) == sorted(expected.index) and len(table) == 2
    np.testing.assert_allclose(table["p_abnormal"], expected.loc[table.index, "p_abnormal"], atol=PARITY, rtol=0)
    assert table[META].astype(str).equals(expected.loc[table.index, META].astype(str))
