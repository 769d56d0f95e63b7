"""Training promises that a one-line deletion would break: resume, mixed precision, the replica
loss scaling, and exporting the best epoch. Each test names the regression it catches."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from models import all_layers, build_model
from tests.shard_factory import write_shards
from training import loop, validation
from training import step as step_lib
from training.checkpoints import RunState
from training.config import TrainConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPLITS = {"train": 32, "val": 13}
SIZE = 32
SUBPROCESS_TIMEOUT_S = 180


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A small shard folder written by the real record writer."""
    path = str(tmp_path_factory.mktemp("shards"))
    write_shards(path, SPLITS, image_size=SIZE, shards_per_split=2)
    return path


def _config(data_dir: str, **overrides) -> TrainConfig:
    fields = dict(backbone="tiny_test", data_dir=data_dir, weights="none", global_batch_size=8,
                  epochs=1, steps_per_epoch=3, precision="float32", strategy="default")
    fields.update(overrides)
    return TrainConfig(**fields)


class _Observed:
    """What a `RunState` saw: the model and optimizer the loop built, and their values at each event."""

    def __init__(self):
        self.model = None
        self.optimizer = None
        self.saved = None  # (model weights, optimizer variables) handed to the last save
        self.restored = None  # the same, right after restore_latest returned a checkpoint


def _values(model: keras.Model, optimizer: keras.optimizers.Optimizer):
    return ([np.array(w) for w in model.get_weights()],
            [np.array(keras.ops.convert_to_numpy(v)) for v in optimizer.variables])


def _observe_run_state(monkeypatch) -> _Observed:
    """Puts a `RunState` in the loop that records the objects it checkpoints; the loop is unchanged."""
    observed = _Observed()

    class ObservedRunState(RunState):
        def __init__(self, model, optimizer, *args, **kwargs):
            super().__init__(model, optimizer, *args, **kwargs)
            observed.model, observed.optimizer = model, optimizer

        def save(self, *args, **kwargs):
            observed.saved = _values(observed.model, observed.optimizer)
            super().save(*args, **kwargs)

        def restore_latest(self):
            path = super().restore_latest()
            if path is not None:
                observed.restored = _values(observed.model, observed.optimizer)
            return path

    monkeypatch.setattr(loop, "RunState", ObservedRunState)
    return observed


def _assert_lists_equal(actual, expected, what: str) -> None:
    assert len(actual) == len(expected), what
    for index, (a, e) in enumerate(zip(actual, expected)):
        np.testing.assert_array_equal(a, e, err_msg=f"{what} #{index}")


def test_resume_restores_weights_moving_statistics_and_adam_state(data_dir, tmp_path, monkeypatch):
    # Regressions: dropping `model=` from RunState's tf.train.Checkpoint (the BatchNorm moving
    # statistics are reachable only through the model; the trainable weights also through the
    # optimizer); deleting `optimizer.build(...)` before the restore in loop._build (Adam's m/v
    # are then not restored). Dropping `optimizer=` alone loses nothing while the model is compiled
    # with its optimizer: the checkpoint then reaches it as `model/optimizer`.
    model_dir = str(tmp_path / "run")
    config = _config(data_dir, validation=False, model_dir=model_dir)
    first = _observe_run_state(monkeypatch)
    loop.run_training(config)
    saved_weights, saved_optimizer = first.saved
    keras.utils.set_random_seed(config.seed)  # the loop's initial weights, as it seeds them
    initial = build_model("tiny_test", SIZE, weights="none", augment=False).get_weights()
    # Every weight moved, the BatchNorm statistics included, so a restore that skips any is seen.
    assert all(not np.array_equal(s, i) for s, i in zip(saved_weights, initial))

    # The second call restores through the loop's own build-then-restore path, then returns at once
    # because the checkpoint says the run finished: nothing runs between the restore and the check.
    second = _observe_run_state(monkeypatch)
    result = loop.run_training(config)
    assert result["resumed_from_epoch"] == 1 and result["history"] == []
    restored_weights, restored_optimizer = second.restored
    _assert_lists_equal(restored_weights, saved_weights, "model weight")
    _assert_lists_equal(restored_optimizer, saved_optimizer, "optimizer variable")
    assert int(second.optimizer.iterations.numpy()) == config.steps_per_epoch
    adam_slots = [v for v in second.optimizer.variables if v.path.split("/")[-1].endswith(
        ("_momentum", "_velocity"))]
    assert len(adam_slots) == 2 * len(second.model.trainable_variables)
    assert all(np.any(keras.ops.convert_to_numpy(v) != 0) for v in adam_slots)


@pytest.mark.parametrize("precision, compute_dtype, loss_scaled", [
    ("mixed_float16", "float16", True),
    ("mixed_bfloat16", "bfloat16", False),
])
def test_mixed_precision_is_in_force_in_the_model_and_optimizer_that_train(
        data_dir, tmp_path, monkeypatch, precision, compute_dtype, loss_scaled):
    # Regressions: deleting `keras.mixed_precision.set_global_policy(name)` in
    # distribute.resolve_precision (the model computes in float32); deleting the
    # LossScaleOptimizer wrapping in step.make_optimizer (float16 gradients underflow unscaled).
    observed = _observe_run_state(monkeypatch)
    loop.run_training(_config(data_dir, precision=precision, steps_per_epoch=1, validation=False,
                              model_dir=str(tmp_path / "run")))
    model, optimizer = observed.model, observed.optimizer
    assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer) == loss_scaled
    convolutions = [layer for layer in all_layers(model) if isinstance(layer, keras.layers.Conv2D)]
    assert convolutions
    for layer in convolutions + [model.get_layer("head_dense")]:
        assert layer.compute_dtype == compute_dtype, layer.name
        assert all(w.dtype == "float32" for w in layer.weights), layer.name
    backbone = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    pixels = np.zeros((1, SIZE, SIZE, 3), np.float32)
    assert backbone(pixels).dtype == compute_dtype  # the feature map, computed in low precision
    assert model(pixels).dtype == "float32"  # the softmax stays float32


def _compare_one_step(out_path: str) -> None:
    """Runs the production train step once under Mirrored (2 CPUs) and once under the default
    strategy, from the same weights on the same global batch; writes losses and new weights.

    Run in a process whose CPU was split into two logical devices before TensorFlow started.
    """
    global_batch = 8
    rng = np.random.default_rng(0)
    batch = {"image": rng.normal(size=(global_batch, 8, 8, 3)).astype("float32"),
             "label": np.array([0, 1, 1, 0, 1, 1, 1, 0], np.int32)}

    def model_fn():
        # No BatchNorm: its per-replica batch statistics would make the two runs differ on purpose.
        inputs = keras.Input((8, 8, 3))
        x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
        x = keras.layers.GlobalAveragePooling2D()(x)
        return keras.Model(inputs, keras.layers.Dense(2, activation="softmax", dtype="float32")(x))

    keras.utils.set_random_seed(0)
    initial = model_fn().get_weights()
    results = {}
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    assert len(devices) == 2, devices
    for name, strategy in (("default", tf.distribute.get_strategy()),
                           ("mirrored", tf.distribute.MirroredStrategy(devices))):
        with strategy.scope():
            model = model_fn()
            model.set_weights(initial)
            optimizer = step_lib.make_optimizer("sgd", 0.5, "float32")
            optimizer.build(model.trainable_variables)
        step = step_lib.make_train_step(strategy, model, optimizer, global_batch_size=global_batch)
        dataset = tf.data.Dataset.from_tensor_slices(batch).batch(global_batch).repeat()
        loss, _, _ = step(iter(strategy.experimental_distribute_dataset(dataset)))
        results[f"{name}_replicas"] = strategy.num_replicas_in_sync
        results[f"{name}_loss"] = float(loss)
        for index, weight in enumerate(model.get_weights()):
            results[f"{name}_weight_{index}"] = weight
    for index, weight in enumerate(initial):
        results[f"initial_weight_{index}"] = weight
    np.savez(out_path, **results)


_SPLIT_THEN_COMPARE = (
    "import sys\n"
    "from tests.distributed_runner import _split_cpu\n"
    "_split_cpu(2)\n"  # before TensorFlow initialises its devices
    "from tests.test_train_bites import _compare_one_step\n"
    "_compare_one_step(sys.argv[1])\n"
)


def test_two_replicas_take_the_same_step_as_one_on_the_same_global_batch(tmp_path):
    # Regression: `tf.reduce_mean(per_example)` instead of `tf.reduce_sum(per_example) /
    # global_batch_size` in step.make_train_step (each replica's mean, summed over replicas,
    # doubles the loss and the gradients with two replicas).
    out = str(tmp_path / "one_step.npz")
    process = subprocess.run([sys.executable, "-c", _SPLIT_THEN_COMPARE, out], cwd=REPO,
                             capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
    assert process.returncode == 0, process.stderr[-4000:]
    results = np.load(out)
    assert (results["default_replicas"], results["mirrored_replicas"]) == (1, 2)
    count = len([k for k in results.files if k.startswith("initial_weight_")])
    moved = 0
    for index in range(count):
        default, mirrored = results[f"default_weight_{index}"], results[f"mirrored_weight_{index}"]
        np.testing.assert_allclose(mirrored, default, atol=1e-5, err_msg=f"weight #{index}")
        moved += int(np.max(np.abs(default - results[f"initial_weight_{index}"])) > 1e-3)
    assert moved == count, "the step must move every weight for the comparison to mean anything"
    assert results["mirrored_loss"] == pytest.approx(results["default_loss"], abs=1e-5)


VAL_AUROC = (0.6, 0.9, 0.8, 0.7)  # epoch 2 is the best; the later ones are worse
BEST_EPOCH = 2


def _script_val_auroc(monkeypatch) -> None:
    """Makes validation.summarize report VAL_AUROC[epoch - 1] as the validation AUROC.

    Only the metric is scripted: the loop's selection of the best epoch runs unchanged on it.
    """
    real_score, real_summarize = validation.score, validation.summarize
    val_labels = []

    def score(*args, **kwargs):
        scores = real_score(*args, **kwargs)
        val_labels.append(scores.labels)
        return scores

    def summarize(labels, probabilities):
        metrics = real_summarize(labels, probabilities)
        if val_labels and labels is val_labels[-1]:  # the validation scores, not the train batch
            metrics["auroc"] = VAL_AUROC[len(val_labels) - 1]
        return metrics

    monkeypatch.setattr(validation, "score", score)
    monkeypatch.setattr(validation, "summarize", summarize)


def _checkpoint_weights(model_dir: str, epoch: int) -> list[np.ndarray]:
    model = build_model("tiny_test", SIZE, weights="none", augment=False)
    path = os.path.join(model_dir, "checkpoints", f"ckpt-{epoch}")
    tf.train.Checkpoint(model=model).restore(path).expect_partial().assert_existing_objects_matched()
    return model.get_weights()


def test_model_keras_holds_the_best_validation_epoch_not_the_last(data_dir, tmp_path, monkeypatch):
    # Regression: `best = True` in loop._epoch (model.keras re-exported after every epoch).
    _script_val_auroc(monkeypatch)
    model_dir = str(tmp_path / "run")
    epochs = len(VAL_AUROC)
    config = _config(data_dir, epochs=epochs, learning_rate=1e-2, keep_checkpoints=epochs,
                     early_stopping_patience=epochs, model_dir=model_dir)
    result = loop.run_training(config)
    assert [r["val_auroc"] for r in result["history"]] == list(VAL_AUROC)

    exported = keras.saving.load_model(os.path.join(model_dir, "model.keras"), compile=False,
                                       safe_mode=True).get_weights()
    best, last = _checkpoint_weights(model_dir, BEST_EPOCH), _checkpoint_weights(model_dir, epochs)
    assert any(not np.array_equal(b, x) for b, x in zip(best, last)), "the epochs must differ"
    _assert_lists_equal(exported, best, f"model.keras weight vs epoch {BEST_EPOCH}'s checkpoint")


class _Killed(BaseException):
    """Stands in for SIGKILL at one write: nothing after it runs."""


@pytest.mark.parametrize("killed_at", ["model.keras", "val_predictions.csv"])
def test_a_kill_between_the_checkpoint_and_the_exports_is_repaired_on_restart(
        data_dir, tmp_path, monkeypatch, killed_at):
    # Regression: drop the `_repair_exports(run, extra)` call in loop.run_training (a restart then
    # keeps model.keras and val_predictions.csv from different epochs).
    from contracts import run_folder
    from pipeline import input_pipeline
    from training import outputs

    model_dir = str(tmp_path / "run")
    config = _config(data_dir, epochs=2, learning_rate=1e-2, keep_checkpoints=2, early_stopping_patience=2,
                     model_dir=model_dir)
    _script_val_auroc(monkeypatch)  # 0.6 then 0.9: both epochs are the best so far, both export
    target = (outputs.ModelExporter, "export") if killed_at == "model.keras" else (outputs, "write_val_predictions")
    real = getattr(*target)

    def killed_at_epoch_2(*args):  # export(self, path, epoch) / write_val_predictions(dir, scores, sidecar, meta)
        epoch = args[-1] if killed_at == "model.keras" else args[2]["epoch"]
        if epoch == 2:
            raise _Killed
        return real(*args)

    monkeypatch.setattr(*target, killed_at_epoch_2)
    with pytest.raises(_Killed):
        loop.run_training(config)
    assert run_folder.exported_epochs(model_dir) == ((1, 1) if killed_at == "model.keras" else (2, 1))
    monkeypatch.setattr(*target, real)

    result = loop.run_training(config)  # the checkpoint says finished: nothing is retrained
    assert result["history"] == [] and result["epochs_done"] == 2
    assert run_folder.exported_epochs(model_dir) == (2, 2)
    exported = keras.saving.load_model(os.path.join(model_dir, "model.keras"), compile=False, safe_mode=True)
    _assert_lists_equal(exported.get_weights(), _checkpoint_weights(model_dir, 2), "model.keras vs ckpt-2")
    # The repaired CSV is what the repaired model.keras predicts, computed here on a second path.
    batches = list(input_pipeline.make_eval_dataset(data_dir, "val", 16, SIZE))
    ids = np.concatenate([b["image_id"].numpy() for b in batches]).astype(str)
    probabilities = np.concatenate([exported(b["image"], training=False).numpy()[:, 1] for b in batches])
    written = pd.read_csv(os.path.join(model_dir, "val_predictions.csv")).set_index("image_id")
    np.testing.assert_allclose(written.loc[ids, "p_uncalibrated"].to_numpy(), probabilities, atol=1e-5)
    # p_abnormal is what the run hands over: that output after the temperature its sidecar records.
    with open(os.path.join(model_dir, "val_predictions.json")) as f:
        temperature = json.load(f)["temperature"]
    assert temperature is not None and abs(temperature - 1) > 1e-3  # else the check below cannot bite
    raw = np.clip(written["p_uncalibrated"].to_numpy(), 1e-7, 1 - 1e-7)
    np.testing.assert_allclose(written["p_abnormal"], 1 / (1 + np.exp(-np.log(raw / (1 - raw)) / temperature)),
                               rtol=1e-9)
