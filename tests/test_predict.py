"""Batch prediction: every id once, outputs tied to the right ids, sidecars, reports and refusals."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

import models
from contracts import records, run_folder
from contracts.errors import UserInputError
from contracts.manifest import ShardFolder
from contracts.prediction_files import read_predictions
from contracts.run_folder import RunFolder
from evaluation import prediction
from evaluation.settings import PredictConfig
from pipeline.service import free_local_ports
from tests.shard_factory import write_shards

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 32
RECORDS = 13  # not a multiple of any batch size used below


def _save_model(model_dir, shards, policy="float32"):
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = models.build_model("tiny_test", SIZE, weights="none")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    os.makedirs(model_dir, exist_ok=True)
    model.save(os.path.join(model_dir, run_folder.MODEL))
    with open(os.path.join(model_dir, run_folder.CONFIG), "w") as f:
        json.dump({"backbone": "tiny_test", "image_size": SIZE, "data_dir": shards}, f)
    return model


@pytest.fixture(scope="module")
def labeled(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    shards = str(root / "shards")
    written = write_shards(shards, {"eval": RECORDS}, image_size=SIZE, shards_per_split=2)["eval"]
    model = _save_model(str(root / "run"), shards)
    return {"root": root, "shards": shards, "written": written, "model": model, "model_dir": str(root / "run")}


def test_every_record_once_with_its_own_prediction(labeled, tmp_path, caplog):
    output = str(tmp_path / "preds.csv")
    result = prediction.run_prediction(PredictConfig(model_dir=[labeled["model_dir"]],
                                                     data_dir=labeled["shards"], split="eval", output=output,
                                                     global_batch_size=4, bootstrap=20, progress=False))
    assert f"{labeled['model_dir']} has no fitted temperature" in caplog.text  # said, not silent
    assert result.outputs == {"tiny_test": output} and result.records == RECORDS
    frame = pd.read_csv(output, dtype={"image_id": str})
    assert list(frame.columns) == ["image_id", "p_abnormal", "label", "p_uncalibrated", "patient_id",
                                   "view_position", "patient_sex", "patient_age", "triage"]
    assert set(frame.triage) == {"review"}  # no val_predictions.csv: no triage fitted
    # The patient columns come from each image's own record; without a fitted temperature (this run
    # has no val_predictions.csv) the model hands over its raw output.
    written = {r["image_id"]: r for r in labeled["written"]}
    assert [(written[i]["view"], written[i]["sex"], written[i]["age"] or -1) for i in frame.image_id] == list(
        zip(frame.view_position, frame.patient_sex, frame.patient_age))
    assert [int(i.split("_")[1][:5]) // 3 for i in frame.image_id] == list(frame.patient_id)  # write_shards' patients
    np.testing.assert_array_equal(frame.p_uncalibrated, frame.p_abnormal)
    assert result.metrics["tiny_test"]["scored"] == "p_abnormal"
    frame = frame[["image_id", "p_uncalibrated", "label"]]
    assert sorted(frame.image_id) == sorted(r["image_id"] for r in labeled["written"])
    assert frame.image_id.is_unique and list(frame.image_id) == sorted(frame.image_id)
    # Each row holds the model's output for that very image, whatever the batching.
    pixels = np.stack([np.repeat(r["pixels"][..., None], 3, axis=-1) for r in labeled["written"]])
    pixels = pixels.astype("float32")
    direct = labeled["model"].predict(pixels, verbose=0)
    by_id = {r["image_id"]: (p, r["label"]) for r, p in zip(labeled["written"], direct)}
    softmax = np.load(str(tmp_path / "preds.npy"))
    assert softmax.shape == (RECORDS, 2) and softmax.dtype == np.float32
    for row, (image_id, p_uncalibrated, label) in enumerate(frame.itertuples(index=False)):
        np.testing.assert_allclose(softmax[row], by_id[image_id][0], atol=1e-5)
        assert p_uncalibrated == pytest.approx(softmax[row, 1]) and label == by_id[image_id][1]
    sidecar = json.loads((tmp_path / "preds.json").read_text())
    assert sidecar["backbone"] == "tiny_test" and sidecar["records"] == RECORDS and sidecar["split"] == "eval"
    assert sidecar["prediction_format_version"] == 2
    assert sidecar["crop"] == "none" and sidecar["train_crop"] == "none" and sidecar["image_size"] == SIZE
    assert read_predictions(output).backbone == "tiny_test"  # the ensemble can read it back
    metrics = json.loads((tmp_path / "preds_report" / "metrics.json").read_text())
    assert metrics["tiny_test"]["records"] == RECORDS and metrics["tiny_test"]["threshold"] == 0.5
    assert metrics["tiny_test"]["crop"] == "none"
    assert result.report_dir == str(tmp_path / "preds_report")


@pytest.mark.parametrize("batch_size", [1, 5, 64])
def test_any_batch_size_gives_every_id_once(labeled, tmp_path, batch_size):
    output = str(tmp_path / "p.csv")
    prediction.run_prediction(PredictConfig(model_dir=[labeled["model_dir"]], data_dir=labeled["shards"],
                                            split="eval", output=output, global_batch_size=batch_size,
                                            bootstrap=0, progress=False))
    ids = pd.read_csv(output, dtype={"image_id": str}).image_id
    assert ids.is_unique and len(ids) == RECORDS


def test_unlabeled_split_has_no_label_column_and_no_report(tmp_path, labeled):
    shards = str(tmp_path / "unlabeled")
    write_shards(shards, {"eval": 5}, image_size=SIZE, labeled=False)
    result = prediction.run_prediction(PredictConfig(model_dir=[labeled["model_dir"]], data_dir=shards,
                                                     split="eval", output=str(tmp_path / "p.csv"),
                                                     global_batch_size=2, progress=False))
    assert list(pd.read_csv(tmp_path / "p.csv").columns)[:2] == ["image_id", "p_abnormal"]
    assert "label" not in pd.read_csv(tmp_path / "p.csv").columns
    assert result.metrics is None and result.report_dir is None
    assert not (tmp_path / "p_report").exists()


def test_several_models_write_one_file_each_and_one_report(labeled, tmp_path):
    second = str(tmp_path / "run_b")
    shutil.copytree(labeled["model_dir"], second)
    result = prediction.run_prediction(PredictConfig(model_dir=[labeled["model_dir"], second],
                                                     data_dir=labeled["shards"], split="eval",
                                                     output=str(tmp_path / "p.csv"), global_batch_size=4,
                                                     bootstrap=0, progress=False))
    assert result.outputs == {"tiny_test.run": str(tmp_path / "p.tiny_test.run.csv"),
                              "tiny_test.run_b": str(tmp_path / "p.tiny_test.run_b.csv")}
    a, b = (read_predictions(p) for p in result.outputs.values())
    np.testing.assert_allclose(a.probs, b.probs)
    assert (tmp_path / "p.tiny_test.run_b.npy").exists()
    assert set(json.loads((tmp_path / "p_report" / "metrics.json").read_text())) == set(result.outputs)


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_models_run_under_the_requested_precision(labeled, tmp_path, precision):
    reference = str(tmp_path / "reference.csv")
    prediction.run_prediction(PredictConfig(model_dir=[labeled["model_dir"]], data_dir=labeled["shards"],
                                            split="eval", output=reference, global_batch_size=4,
                                            precision="float32", bootstrap=0, progress=False))
    # Saved under one policy, run under the other: the weights carry over, the policy does not.
    saved_as = "mixed_bfloat16" if precision == "float32" else "float32"
    model_dir = str(tmp_path / saved_as)
    _save_model(model_dir, labeled["shards"], policy=saved_as)
    path = os.path.join(model_dir, run_folder.MODEL)
    loaded = keras.models.load_model(path)
    loaded.set_weights(labeled["model"].get_weights())  # same architecture: the weights fit either policy
    loaded.save(path)
    output = str(tmp_path / "p.csv")
    prediction.run_prediction(PredictConfig(model_dir=[model_dir], data_dir=labeled["shards"], split="eval",
                                            output=output, global_batch_size=4, precision=precision,
                                            bootstrap=0, progress=False))
    softmax = np.load(str(tmp_path / "p.npy"))
    assert softmax.dtype == np.float32 and softmax.shape == (RECORDS, 2)
    np.testing.assert_allclose(softmax.sum(axis=1), 1.0, atol=1e-3)
    np.testing.assert_allclose(read_predictions(output).probs, read_predictions(reference).probs, atol=0.05)
    assert json.loads((tmp_path / "p.json").read_text())["precision"] == precision
    assert keras.mixed_precision.global_policy().name == "float32"  # the caller's policy is restored


def test_shards_that_disagree_with_the_manifest_are_refused(labeled, tmp_path):
    shards = str(tmp_path / "shards")
    shutil.copytree(labeled["shards"], shards)
    manifest_path = os.path.join(shards, "manifest.json")
    with open(manifest_path) as f:
        manifest = json.load(f)
    manifest["splits"]["eval"]["records"] = RECORDS + 1
    with open(manifest_path, "w") as f:
        json.dump(manifest, f)
    with pytest.raises(UserInputError, match=rf"lists {RECORDS + 1} records but its shards hold {RECORDS}"):
        prediction.run_prediction(PredictConfig(model_dir=[labeled["model_dir"]], data_dir=shards,
                                                split="eval", output=str(tmp_path / "p.csv"), progress=False))
    assert not (tmp_path / "p.csv").exists()


def test_duplicate_ids_are_refused(labeled):
    shards = ShardFolder.open(labeled["shards"])
    ids = np.array([r["image_id"] for r in labeled["written"]])
    prediction.check_one_row_per_record(ids, shards, "eval")
    ids[1] = ids[0]
    with pytest.raises(UserInputError, match=rf"1 image id\(s\) occur in several records: {ids[0]}"):
        prediction.check_one_row_per_record(ids, shards, "eval")


def test_bad_model_and_data_folders_are_refused(labeled, tmp_path):
    run = [labeled["model_dir"]]
    with pytest.raises(UserInputError, match="config.json not found"):
        prediction.run_prediction(PredictConfig(model_dir=[str(tmp_path)], data_dir=labeled["shards"],
                                                split="eval", output=str(tmp_path / "p.csv")))
    with pytest.raises(UserInputError, match=r"split 'test' not in .*manifest\.json; it has: eval"):
        prediction.run_prediction(PredictConfig(model_dir=run, data_dir=labeled["shards"], split="test",
                                                output=str(tmp_path / "p.csv")))
    with pytest.raises(UserInputError, match="must name a .csv"):
        prediction.run_prediction(PredictConfig(model_dir=run, data_dir=labeled["shards"], split="eval",
                                                output=str(tmp_path / "p.txt")))
    other = str(tmp_path / "big")
    write_shards(other, {"eval": 2}, image_size=SIZE * 2)
    with pytest.raises(UserInputError, match=rf"built at {SIZE * 2} px, not {SIZE}.*--image_size={SIZE}"):
        prediction.run_prediction(PredictConfig(model_dir=run, data_dir=other, split="eval",
                                                output=str(tmp_path / "p.csv")))


def _predict_cli(*args):
    return subprocess.run([sys.executable, "predict.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_cli_exits_1_with_a_one_line_message(tmp_path, labeled):
    result = _predict_cli(f"--model_dir={tmp_path}", f"--data_dir={labeled['shards']}",
                          f"--output={tmp_path / 'p.csv'}")
    assert result.returncode == 1
    message = [line for line in result.stderr.splitlines() if line.startswith("predict.py: ")]
    assert message and "config.json not found" in message[0] and "Traceback" not in result.stderr


def test_cli_predicts_and_reports(tmp_path, labeled):
    result = _predict_cli(f"--model_dir={labeled['model_dir']}", f"--data_dir={labeled['shards']}",
                          f"--output={tmp_path / 'p.csv'}", "--global_batch_size=4", "--bootstrap=10", "--threshold=0.4",
                          "--transfer=uint8")
    assert result.returncode == 0, result.stderr
    assert len(pd.read_csv(tmp_path / "p.csv")) == RECORDS
    assert json.loads((tmp_path / "p.json").read_text())["transfer"] == "uint8"
    assert json.loads((tmp_path / "p_report" / "metrics.json").read_text())["tiny_test"]["threshold"] == 0.4
    assert "img/s" in result.stderr and "AUROC" in result.stdout


def test_a_default_build_of_the_real_sample_is_predicted_on_its_test_split(nih_sample, labeled, tmp_path):
    from preprocess import builder
    from preprocess.config import BuildConfig

    shards = str(tmp_path / "shards")  # every builder default but the tiny model's image size
    manifest = builder.build(BuildConfig(data_entry_csv=os.path.join(nih_sample, "Data_Entry_2017_v2020.csv.gz"),
                                         image_dir=nih_sample, output_dir=shards, image_size=SIZE, workers=2)).manifest
    assert manifest["config"]["crop"] == "none" and set(manifest["splits"]) == {"train", "val", "test"}
    result = _predict_cli(f"--model_dir={labeled['model_dir']}", f"--data_dir={shards}",
                          f"--output={tmp_path / 'p.csv'}", "--bootstrap=0")
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((tmp_path / "p.json").read_text())["split"] == "test"
    test_ids = set()
    for name in manifest["splits"]["test"]["shards"]:
        test_ids |= {records.example_to_dict(r.numpy())["image_id"]
                     for r in tf.data.TFRecordDataset(os.path.join(shards, name))}
    assert set(pd.read_csv(tmp_path / "p.csv", dtype={"image_id": str})["image_id"]) == test_ids


@pytest.mark.parametrize("splits, chosen", [({"train": 4, "val": 3}, "val"), ({"eval": 3}, "eval"),
                                            ({"train": 4, "val": 3, "test": 2}, "test")])
def test_without_split_the_unambiguous_one_is_read(splits, chosen):
    assert ShardFolder("shards", {"splits": splits}, SIZE, None).default_split() == chosen


def test_without_split_an_ambiguous_folder_is_refused_naming_its_splits(labeled, tmp_path):
    shards = str(tmp_path / "shards")
    write_shards(shards, {"train": 4, "val": 3, "eval": 3}, image_size=SIZE)
    result = _predict_cli(f"--model_dir={labeled['model_dir']}", f"--data_dir={shards}", f"--output={tmp_path / 'p.csv'}")
    message = [line for line in result.stderr.splitlines() if line.startswith("predict.py: ")]
    assert result.returncode == 1 and len(message) == 1 and "Traceback" not in result.stderr
    assert "has splits eval, train, val; pass --split" in message[0]
    assert not os.path.exists(tmp_path / "p.csv")


_MIRRORED_SCRIPT = textwrap.dedent("""
    import sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from evaluation import prediction
    from evaluation.settings import PredictConfig
    prediction.run_prediction(PredictConfig(model_dir=[sys.argv[1]], data_dir=sys.argv[2], split="eval",
                                            output=sys.argv[3], global_batch_size=4, strategy="mirrored",
                                            bootstrap=0, progress=False))
""")


def _same_predictions(path, reference):
    a, b = read_predictions(path), read_predictions(reference)
    assert list(a.ids) == list(b.ids)
    np.testing.assert_allclose(a.probs, b.probs, atol=1e-5)


@pytest.mark.slow
def test_mirrored_over_two_replicas_matches_default(labeled, tmp_path):
    reference = str(tmp_path / "default.csv")
    prediction.run_prediction(PredictConfig(model_dir=[labeled["model_dir"]], data_dir=labeled["shards"],
                                            split="eval", output=reference, global_batch_size=4, bootstrap=0,
                                            progress=False))
    output = str(tmp_path / "mirrored.csv")
    script = [sys.executable, "-c", _MIRRORED_SCRIPT, labeled["model_dir"], labeled["shards"], output]
    result = subprocess.run(script,
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    _same_predictions(output, reference)
    sidecar = json.loads((tmp_path / "mirrored.json").read_text())
    assert sidecar["strategy"] == "mirrored" and sidecar["replicas"] == 2


_WORKER_SCRIPT = textwrap.dedent("""
    import json, os, sys
    index, ports = int(sys.argv[1]), sys.argv[2].split(",")
    os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": [f"localhost:{p}" for p in ports]},
                                          "task": {"type": "worker", "index": index}})
    from evaluation import prediction
    from evaluation.settings import PredictConfig
    prediction.run_prediction(PredictConfig(model_dir=[sys.argv[3]], data_dir=sys.argv[4], split="eval",
                                            output=os.path.join(sys.argv[5], f"w{index}", "p.csv"),
                                            global_batch_size=4, strategy="multi_worker", bootstrap=0,
                                            progress=False))
""")


@pytest.mark.slow
def test_two_workers_gather_every_record_and_only_the_chief_writes(labeled, tmp_path):
    reference = str(tmp_path / "default.csv")
    prediction.run_prediction(PredictConfig(model_dir=[labeled["model_dir"]], data_dir=labeled["shards"],
                                            split="eval", output=reference, global_batch_size=4, bootstrap=0,
                                            progress=False))
    ports = ",".join(map(str, free_local_ports(2)))
    workers = [subprocess.Popen([sys.executable, "-c", _WORKER_SCRIPT, str(i), ports, labeled["model_dir"],
                                 labeled["shards"], str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        for worker in workers:
            _, stderr = worker.communicate(timeout=300)
            assert worker.returncode == 0, stderr[-3000:]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    _same_predictions(str(tmp_path / "w0" / "p.csv"), reference)  # each worker read one of the two shards
    assert not (tmp_path / "w1").exists()


def test_training_crop_comes_from_config_then_val_sidecar_then_manifest(tmp_path, labeled):
    def crop(**config):
        (tmp_path / run_folder.CONFIG).write_text(json.dumps({"backbone": "resnet50", **config}))
        return RunFolder.open(str(tmp_path)).crop

    assert crop(crop="bbox", data_dir=labeled["shards"]) == "bbox"
    assert crop(data_dir=labeled["shards"]) == "none"  # the manifest's
    assert crop(data_dir="relative/elsewhere") is None
    (tmp_path / run_folder.VAL_SIDECAR).write_text(json.dumps({"backbone": "resnet50", "train_crop": "bbox"}))
    assert crop(data_dir="relative/elsewhere") == "bbox"


def test_trains_and_predicts_from_shards_on_another_file_system(tmp_path):
    """ram:// stands for gs:// here: TensorFlow's in-memory file system, seen by this process only."""
    from training.config import TrainConfig
    from training.loop import run_training

    local, remote = str(tmp_path / "shards"), "ram://predict-test/shards"
    write_shards(local, {"train": 16, "val": 8}, image_size=SIZE, seed=3)
    tf.io.gfile.makedirs(remote)
    for name in os.listdir(local):
        tf.io.gfile.copy(os.path.join(local, name), f"{remote}/{name}", overwrite=True)
    model_dir = str(tmp_path / "run")
    run_training(TrainConfig(backbone="tiny_test", data_dir=remote, model_dir=model_dir, weights="none",
                             global_batch_size=8, epochs=1, precision="float32", strategy="default"))
    output = str(tmp_path / "p.csv")
    result = prediction.run_prediction(PredictConfig(model_dir=[model_dir], data_dir=remote, output=output,
                                                     global_batch_size=4, bootstrap=0, progress=False))
    assert result.records == 8 and json.loads((tmp_path / "p.json").read_text())["data_dir"] == remote
    # The same images through training's validation pass and through prediction: the same outputs.
    predicted = read_predictions(output)
    validated = read_predictions(os.path.join(model_dir, run_folder.VAL_PREDICTIONS))
    assert sorted(predicted.ids) == sorted(validated.ids) and len(predicted.ids) == 8
    order = pd.Series(np.arange(8), index=validated.ids)[predicted.ids].to_numpy()
    np.testing.assert_allclose(predicted.uncalibrated, validated.uncalibrated[order], atol=1e-5)


def test_a_second_label_set_rescores_the_same_predictions(labeled, tmp_path):
    """--other_labels_csv on a shard folder: the report scores the predictions against another reading."""
    from sklearn.metrics import cohen_kappa_score, roc_auc_score

    written = sorted(labeled["written"], key=lambda r: r["image_id"])
    other = {r["image_id"]: 1 - r["label"] if i % 4 == 0 else r["label"] for i, r in enumerate(written[:-2])}
    path = tmp_path / "panel.csv"
    path.write_text("image_id,label\n" + "".join(f"{k},{v}\n" for k, v in other.items()))
    output = str(tmp_path / "preds.csv")
    result = prediction.run_prediction(PredictConfig(model_dir=[labeled["model_dir"]],
                                                     data_dir=labeled["shards"], split="eval", output=output,
                                                     global_batch_size=4, bootstrap=0, progress=False,
                                                     other_labels_csv=str(path)))
    frame = pd.read_csv(output, dtype={"image_id": str}).set_index("image_id")
    shared = sorted(other)
    rescored = json.loads((tmp_path / "preds_report" / "other_labels.json").read_text())
    assert (rescored["shared"], rescored["only_in_predictions"]) == (len(written) - 2, 2)
    expected = roc_auc_score([other[i] for i in shared], frame.loc[shared, "p_abnormal"])
    assert rescored["metrics"]["tiny_test"]["auroc"] == pytest.approx(expected)
    own = [int(frame.loc[i, "label"]) for i in shared]
    assert rescored["agreement_with_own_labels"]["kappa"] == pytest.approx(
        cohen_kappa_score(own, [other[i] for i in shared]))
    assert "Cohen's kappa" in prediction.summary(result)
