"""The training library and train.py: the step, the loop's outputs, resume, strategies, the NaN guard."""

import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from contracts.errors import UserInputError
from contracts.manifest import ShardFolder
from models import distribute
from pipeline.service import free_local_ports
from tests.shard_factory import write_shards
from training import config as config_lib
from training import step as step_lib
from training.config import TrainConfig
from training.loop import run_training
from training.state import STATE_KEY

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPLITS = {"train": 48, "val": 13}
SIZE = 32
RUN_TIMEOUT_S = 240  # one subprocess run of a few tiny epochs; generous for a loaded 2-core machine
POLL_S = 0.05


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """A shard folder (48 train, 13 val records, two shards each) and what was written."""
    data_dir = str(tmp_path_factory.mktemp("shards"))
    written = write_shards(data_dir, SPLITS, image_size=SIZE, shards_per_split=2)
    return data_dir, written


def _config(data_dir: str, **overrides) -> TrainConfig:
    fields = dict(backbone="tiny_test", data_dir=data_dir, model_dir="", weights="none", global_batch_size=8,
                  epochs=2, steps_per_epoch=4, precision="float32", strategy="default")
    fields.update(overrides)
    return TrainConfig(**fields)


def _runner(config: TrainConfig, model_dir: str, result: str, env: dict) -> subprocess.Popen:
    import dataclasses

    return subprocess.Popen(
        [sys.executable, "-m", "tests.distributed_runner", json.dumps(dataclasses.asdict(config)),
         model_dir, result],
        cwd=REPO, env=dict(os.environ, **env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process: subprocess.Popen) -> str:
    try:
        output, _ = process.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"run did not finish in {RUN_TIMEOUT_S}s:\n{output[-4000:]}")
    assert process.returncode == 0, output[-4000:]
    return output


def _metrics(model_dir: str) -> list[dict]:
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_short_run_lowers_the_loss_and_writes_every_output(shards, tmp_path):
    data_dir, written = shards
    model_dir = str(tmp_path / "run")
    result = run_training(_config(data_dir, epochs=4, steps_per_epoch=6, augment="on", model_dir=model_dir))

    losses = [r["train_loss"] for r in result["history"]]
    assert losses[-1] < losses[0]
    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)
    assert (config["backbone"], config["image_size"], config["data_dir"]) == ("tiny_test", SIZE, data_dir)
    assert config["precision"] == "float32" and config["augment"] == "on"
    records = _metrics(model_dir)
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    for key in ("learning_rate", "train_loss", "train_accuracy", "train_auroc", "val_loss",
                "val_accuracy", "val_auroc", "images_per_second"):
        assert all(isinstance(r[key], float) for r in records), key

    predictions = pd.read_csv(os.path.join(model_dir, "val_predictions.csv"))
    expected = {r["image_id"]: r["label"] for r in written["val"]}
    assert len(predictions) == SPLITS["val"]
    assert dict(zip(predictions.image_id, predictions.label)) == expected
    # The patient of each image (write_shards gives image i to patient i // 3), for the intervals.
    assert {i: str(p) for i, p in zip(predictions.image_id, predictions.patient_id)} == {
        r["image_id"]: str(int(r["image_id"].split("_")[1][:5]) // 3) for r in written["val"]}
    with open(os.path.join(model_dir, "val_predictions.json")) as f:
        assert json.load(f)["backbone"] == "tiny_test"

    # model.keras is the epoch the val predictions came from, and loads without unsafe code.
    model = keras.models.load_model(os.path.join(model_dir, "model.keras"), safe_mode=True)
    assert "augmentation" not in [layer.name for layer in model.layers]  # the inference model
    pixels = np.stack([np.repeat(r["pixels"][..., None], 3, axis=-1) for r in written["val"]])
    reloaded = model.predict(pixels.astype("float32"), verbose=0)[:, 1]
    by_id = dict(zip(predictions.image_id, predictions.p_uncalibrated))
    np.testing.assert_allclose(reloaded, [by_id[r["image_id"]] for r in written["val"]], atol=1e-5)

    # tensorboard is a dependency (setup.cfg), so the events must be there.
    events = os.path.join(model_dir, "tensorboard", "train")
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(events))


def test_a_finished_run_is_not_repeated(shards, tmp_path):
    data_dir, _ = shards
    model_dir = str(tmp_path / "run")
    first = run_training(_config(data_dir, model_dir=model_dir))
    again = run_training(_config(data_dir, model_dir=model_dir))
    assert first["epochs_done"] == 2 and first["step"] == 8
    assert again["resumed_from_epoch"] == 2 and again["history"] == []
    assert len(_metrics(model_dir)) == 2


def test_resuming_with_another_backbone_is_refused(shards, tmp_path):
    data_dir, _ = shards
    model_dir = str(tmp_path / "run")
    run_training(_config(data_dir, epochs=1, model_dir=model_dir))
    with open(os.path.join(model_dir, "config.json")) as f:
        previous = json.load(f)
    previous["backbone"] = "resnet50"
    with open(os.path.join(model_dir, "config.json"), "w") as f:
        json.dump(previous, f)
    with pytest.raises(UserInputError, match="another model_dir"):
        run_training(_config(data_dir, epochs=2, model_dir=model_dir))


def test_a_loss_that_turns_nan_stops_the_run_naming_the_step(shards, tmp_path):
    data_dir, _ = shards
    # Adam moves every weight by about the learning rate: the first step makes them infinite,
    # so the second step's loss is NaN.
    config = _config(data_dir, learning_rate=float("inf"), epochs=3, steps_per_epoch=4, model_dir=str(tmp_path / "run"))
    with pytest.raises(FloatingPointError, match=r"training loss is nan at step 2 \(epoch 1\)"):
        run_training(config)


def test_wrong_image_size_and_missing_split_name_the_fix(shards, tmp_path):
    data_dir, _ = shards
    with pytest.raises(UserInputError, match="built at 32 px, not 64; pass image_size=32"):
        config_lib.resolve_config(_config(data_dir, image_size=64))
    with pytest.raises(UserInputError, match="it has: train, val"):
        config_lib.resolve_config(_config(data_dir, val_split="validation"))
    with pytest.raises(UserInputError, match="lower global_batch_size"):
        config_lib.resolve_config(_config(data_dir, global_batch_size=64, steps_per_epoch=None))


def test_defaults_come_from_the_backbone_and_the_data(shards):
    data_dir, _ = shards
    resolved = config_lib.resolve_config(TrainConfig(backbone="resnet50", data_dir=data_dir, model_dir=""))
    assert (resolved.image_size, resolved.epochs, resolved.learning_rate) == (32, 5, 1e-3)
    assert resolved.augment == "off"
    assert resolved.steps_per_epoch == SPLITS["train"] // 32
    assert config_lib.resolve_config(TrainConfig(backbone="densenet121", data_dir=data_dir, model_dir="")).augment == "on"


def test_balanced_class_weights_follow_the_manifest_counts(shards):
    data_dir, written = shards
    labels = [r["label"] for r in written["train"]]
    normal, abnormal = labels.count(0), labels.count(1)
    shards = ShardFolder.open(data_dir)
    weights = config_lib.class_weights(_config(data_dir, class_weight="balanced"), shards)
    assert weights == pytest.approx((len(labels) / (2 * normal), len(labels) / (2 * abnormal)))
    assert config_lib.class_weights(_config(data_dir), shards) is None


def test_step_loss_is_the_class_weighted_sum_over_the_global_batch():
    strategy = tf.distribute.get_strategy()
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs))
    optimizer = step_lib.make_optimizer("sgd", 0.1, "float32")
    optimizer.build(model.trainable_variables)
    images = np.random.default_rng(1).normal(size=(4, 3)).astype("float32")
    labels = np.array([0, 1, 1, 1], np.int32)
    batch = {"image": tf.constant(images), "label": tf.constant(labels)}
    iterator = iter(strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch).repeat()))
    probabilities = model(images).numpy()
    weights = (2.0, 0.5)
    step = step_lib.make_train_step(strategy, model, optimizer, global_batch_size=4, class_weights=weights)
    loss, _, _ = step(iterator)
    cross_entropy = -np.log(probabilities[np.arange(4), labels])
    expected = np.sum(cross_entropy * np.take(weights, labels)) / 4
    assert float(loss) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("precision, jit_compile", [("mixed_float16", False), ("mixed_bfloat16", True)])
def test_mixed_precision_and_xla_runs_train(shards, tmp_path, caplog, precision, jit_compile):
    data_dir, _ = shards
    # With augmentation on, XLA compiles the model without its augmentation block.
    config = _config(data_dir, epochs=1, precision=precision, jit_compile=jit_compile, augment="on",
                     model_dir=str(tmp_path / "run"))
    result = run_training(config)
    # The test machine has no GPU: asking for float16 is said once, in one line; bfloat16 is not.
    said = [r.getMessage() for r in caplog.records if "sees no GPU" in r.getMessage()]
    assert said == (["precision=mixed_float16 but TensorFlow sees no GPU: float16 on a CPU is slower "
                     "than float32; use precision=float32 or mixed_bfloat16 here"]
                    if precision == "mixed_float16" else [])
    assert result["config"]["precision"] == precision
    assert np.isfinite(result["history"][0]["train_loss"])
    assert keras.mixed_precision.global_policy().name == "float32"  # put back afterwards


def test_strategy_and_precision_names():
    assert distribute.strategy_name(distribute.resolve_strategy("default")) == "default"
    with pytest.raises(ValueError, match="auto, default, mirrored, multi_worker"):
        distribute.resolve_strategy("tpu")
    with pytest.raises(ValueError, match="mixed_bfloat16"):
        distribute.resolve_precision("float64")


def test_tf_config_worker_count(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert distribute.tf_config_workers() == 0
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:2"]},
                                                "task": {"type": "worker", "index": 0}}))
    assert distribute.tf_config_workers() == 2
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG"):
        distribute.tf_config_workers()


@pytest.mark.slow
def test_mirrored_over_two_logical_cpus(shards, tmp_path):
    data_dir, _ = shards
    model_dir = str(tmp_path / "run")
    config = _config(data_dir, strategy="mirrored", precision="mixed_float16", epochs=2)
    _finish(_runner(config, model_dir, str(tmp_path / "weights.npz"), {"CXR_LOGICAL_CPUS": "2"}))
    with open(os.path.join(model_dir, "config.json")) as f:
        written = json.load(f)
    assert written["strategy"] == "mirrored" and written["runtime"]["replicas"] == 2
    records = _metrics(model_dir)
    assert [r["step"] for r in records] == [4, 8]
    assert all(np.isfinite(r["train_loss"]) for r in records)
    assert len(pd.read_csv(os.path.join(model_dir, "val_predictions.csv"))) == SPLITS["val"]


@pytest.mark.slow
def test_two_workers_train_in_step_and_only_the_chief_writes(shards, tmp_path):
    data_dir, _ = shards
    model_dir = str(tmp_path / "run")
    ports = free_local_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    # Augmentation on: its random layers must not set the workers apart either.
    config = _config(data_dir, strategy="auto", epochs=2, steps_per_epoch=3, augment="on")
    workers = [
        _runner(config, model_dir, str(tmp_path / f"weights{i}.npz"),
                {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})})
        for i in range(2)
    ]
    for worker in workers:
        _finish(worker)
    chief, other = (np.load(tmp_path / f"weights{i}.npz") for i in range(2))
    assert len(chief.files) == len(other.files) > 0
    for name in chief.files:
        np.testing.assert_array_equal(chief[name], other[name])
    with open(os.path.join(model_dir, "config.json")) as f:
        written = json.load(f)
    assert written["strategy"] == "multi_worker" and written["runtime"]["workers"] == 2
    assert [r["epoch"] for r in _metrics(model_dir)] == [1, 2]  # written once, by the chief
    assert sorted(os.listdir(model_dir)) == sorted(
        ["checkpoints", "config.json", "metrics.jsonl", "model.keras", "val_predictions.csv",
         "val_predictions.json", "tensorboard"])


def _train_py(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S)


def test_train_py_reads_every_flag_and_reports_bad_input_in_one_line(shards, tmp_path):
    data_dir, _ = shards
    common = ["--backbone=resnet50", f"--model_dir={tmp_path / 'run'}", "--weights=none"]
    wrong_size = _train_py(*common, f"--data_dir={data_dir}", "--image_size=64")
    assert wrong_size.returncode == 1
    assert "pass --image_size=32" in wrong_size.stderr and "Traceback" not in wrong_size.stderr
    no_data = _train_py(*common, f"--data_dir={tmp_path / 'nowhere'}")
    assert no_data.returncode == 1 and "build_tfrecords.py" in no_data.stderr
    test_only = _train_py("--backbone=tiny_test", f"--data_dir={data_dir}", f"--model_dir={tmp_path / 'x'}")
    assert test_only.returncode != 0 and "efficientnet_b3" in test_only.stderr


def _checkpointed_epochs(model_dir: str) -> int:
    path = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    return 0 if path is None else json.loads(tf.train.load_variable(path, STATE_KEY))["epoch"]


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_last_epoch(shards, tmp_path):
    data_dir, _ = shards
    model_dir = str(tmp_path / "run")
    epochs, steps = 6, 20
    config = _config(data_dir, epochs=epochs, steps_per_epoch=steps, early_stopping_patience=epochs,
                     augment="on")
    first = _runner(config, model_dir, str(tmp_path / "first.npz"), {})
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while _checkpointed_epochs(model_dir) < 1:
        assert first.poll() is None, "the first run ended before it could be killed"
        assert time.monotonic() < deadline, "the first run saved no checkpoint in time"
        time.sleep(POLL_S)
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=RUN_TIMEOUT_S)
    epochs_done = _checkpointed_epochs(model_dir)
    assert 1 <= epochs_done < epochs, "the first run was not killed before its end"
    before = _metrics(model_dir)[:epochs_done]

    _finish(_runner(config, model_dir, str(tmp_path / "second.npz"), {}))
    with open(tmp_path / "second.npz.json") as f:
        assert json.load(f)["resumed_from_epoch"] == epochs_done
    records = _metrics(model_dir)
    assert [r["epoch"] for r in records] == list(range(1, epochs + 1))
    assert records[:epochs_done] == before  # the epochs done before the kill were not trained again
    assert [r["step"] for r in records] == [steps * e for e in range(1, epochs + 1)]
