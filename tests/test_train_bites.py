"""Training promises that a one-line deletion would break: resume, mixed precision, the replica
loss scaling, and exporting the best epoch. Each test names the regression it catches."""

import dataclasses
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from contracts import run_folder
from contracts.manifest import ShardFolder
from models import all_layers, build_model
from pipeline import input_pipeline
from tests.shard_factory import write_shards
from training import loop, outputs, validation
from training import step as step_lib
from training.config import TrainConfig
from training.state import Checkpoints, LoopState

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
    fields = dict(backbone="tiny_test", data_dir=data_dir, model_dir="unused", weights="none", global_batch_size=8,
                  epochs=1, steps_per_epoch=3, precision="float32", strategy="default")
    fields.update(overrides)
    return TrainConfig(**fields)


class _Observed:
    """What a `Checkpoints` saw: the model and optimizer the loop built, and their values at each event."""

    def __init__(self):
        self.model = None
        self.optimizer = None
        self.saved = None  # (model weights, optimizer variables) handed to the last save
        self.restored = None  # the same, right after restore_latest returned a checkpoint


def _values(model: keras.Model, optimizer: keras.optimizers.Optimizer):
    return ([np.array(w) for w in model.get_weights()],
            [np.array(keras.ops.convert_to_numpy(v)) for v in optimizer.variables])


def _observe_checkpoints(monkeypatch) -> _Observed:
    """Puts a `Checkpoints` in the loop that records the objects it checkpoints; the loop is unchanged."""
    observed = _Observed()

    class ObservedCheckpoints(Checkpoints):
        def __init__(self, model, optimizer, *args, **kwargs):
            super().__init__(model, optimizer, *args, **kwargs)
            observed.model, observed.optimizer = model, optimizer

        def save(self, *args, **kwargs):
            observed.saved = _values(observed.model, observed.optimizer)
            super().save(*args, **kwargs)

        def restore_latest(self):
            state = super().restore_latest()
            if state is not None:
                observed.restored = _values(observed.model, observed.optimizer)
            return state

    monkeypatch.setattr(loop, "Checkpoints", ObservedCheckpoints)
    return observed


def _assert_lists_equal(actual, expected, what: str) -> None:
    assert len(actual) == len(expected), what
    for index, (a, e) in enumerate(zip(actual, expected)):
        np.testing.assert_array_equal(a, e, err_msg=f"{what} #{index}")


def test_resume_restores_weights_moving_statistics_and_adam_state(data_dir, tmp_path, monkeypatch):
    # Regressions: dropping `model=` from Checkpoints' tf.train.Checkpoint (the BatchNorm moving
    # statistics are reachable only through the model; the trainable weights also through the
    # optimizer); deleting `optimizer.build(...)` before the restore in loop._build (Adam's m/v
    # are then not restored). Dropping `optimizer=` alone loses nothing while the model is compiled
    # with its optimizer: the checkpoint then reaches it as `model/optimizer`.
    model_dir = str(tmp_path / "run")
    config = _config(data_dir, validation=False)
    first = _observe_checkpoints(monkeypatch)
    loop.run_training(dataclasses.replace(config, model_dir=model_dir))
    saved_weights, saved_optimizer = first.saved
    keras.utils.set_random_seed(config.seed)  # the loop's initial weights, as it seeds them
    initial = build_model("tiny_test", SIZE, weights="none", augment=False).get_weights()
    # Every weight moved, the BatchNorm statistics included, so a restore that skips any is seen.
    assert all(not np.array_equal(s, i) for s, i in zip(saved_weights, initial))

    # The second call restores through the loop's own build-then-restore path, then returns at once
    # because the checkpoint says the run finished: nothing runs between the restore and the check.
    second = _observe_checkpoints(monkeypatch)
    result = loop.run_training(dataclasses.replace(config, model_dir=model_dir))
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
    observed = _observe_checkpoints(monkeypatch)
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


def _script_val_auroc(monkeypatch, first_epoch: int = 1) -> None:
    """Makes validation.summarize report VAL_AUROC[epoch - 1] as the validation AUROC, counting the
    epochs this process validates from `first_epoch`.

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
            metrics["auroc"] = VAL_AUROC[first_epoch + len(val_labels) - 2]
        return metrics

    monkeypatch.setattr(validation, "score", score)
    monkeypatch.setattr(validation, "summarize", summarize)


def _checkpoint_weights(model_dir: str, epoch: int) -> list[np.ndarray]:
    model = build_model("tiny_test", SIZE, weights="none", augment=False)
    path = os.path.join(model_dir, "checkpoints", f"ckpt-{epoch}")
    tf.train.Checkpoint(model=model).restore(path).expect_partial().assert_existing_objects_matched()
    return model.get_weights()


def _assert_exports_are_epoch(model_dir: str, data_dir: str, epoch: int) -> None:
    """model.keras holds `epoch`'s checkpoint, and val_predictions.csv is what it predicts (computed
    here on a second path), after the temperature its sidecar records."""
    assert run_folder.exported_epochs(model_dir) == (epoch, epoch)
    exported = keras.saving.load_model(os.path.join(model_dir, "model.keras"), compile=False, safe_mode=True)
    _assert_lists_equal(exported.get_weights(), _checkpoint_weights(model_dir, epoch),
                        f"model.keras vs ckpt-{epoch}")
    batches = list(input_pipeline.make_eval_dataset(ShardFolder.open(data_dir), "val", 16))
    ids = np.concatenate([b["image_id"].numpy() for b in batches]).astype(str)
    probabilities = np.concatenate([exported(b["image"], training=False).numpy()[:, 1] for b in batches])
    written = pd.read_csv(os.path.join(model_dir, "val_predictions.csv")).set_index("image_id")
    np.testing.assert_allclose(written.loc[ids, "p_uncalibrated"].to_numpy(), probabilities, atol=1e-5)
    with open(os.path.join(model_dir, "val_predictions.json")) as f:
        temperature = json.load(f)["temperature"]
    assert temperature is not None and abs(temperature - 1) > 1e-3  # else the check below cannot bite
    raw = np.clip(written["p_uncalibrated"].to_numpy(), 1e-7, 1 - 1e-7)
    np.testing.assert_allclose(written["p_abnormal"], 1 / (1 + np.exp(-np.log(raw / (1 - raw)) / temperature)),
                               rtol=1e-9)


def test_model_keras_holds_the_best_validation_epoch_not_the_last(data_dir, tmp_path, monkeypatch):
    # Regressions: `better = True` in LoopState.after_epoch (the last epoch exported); dropping
    # `run.checkpoints.restore_best(best)` in loop._export_best (the best epoch named, the last one's
    # weights exported).
    _script_val_auroc(monkeypatch)
    model_dir = str(tmp_path / "run")
    epochs = len(VAL_AUROC)
    config = _config(data_dir, epochs=epochs, learning_rate=1e-2, keep_checkpoints=epochs,
                     early_stopping_patience=epochs, model_dir=model_dir)
    result = loop.run_training(config)
    assert [r["val_auroc"] for r in result["history"]] == list(VAL_AUROC)
    best, last = _checkpoint_weights(model_dir, BEST_EPOCH), _checkpoint_weights(model_dir, epochs)
    assert any(not np.array_equal(b, x) for b, x in zip(best, last)), "the epochs must differ"
    _assert_exports_are_epoch(model_dir, data_dir, BEST_EPOCH)
    _assert_lists_equal(result["model"].get_weights(), best, "the returned model vs the best epoch")


class _Killed(BaseException):
    """Stands in for SIGKILL at one write: nothing after it runs."""


def test_a_run_killed_between_epochs_still_exports_its_best_epoch(data_dir, tmp_path, monkeypatch):
    # Regression: `return LoopState(learning_rate=..., epoch=..., step=...)` from the saved JSON in
    # Checkpoints.restore_latest (the best epoch forgotten: epoch 4 becomes the first and the best).
    model_dir = str(tmp_path / "run")
    epochs = len(VAL_AUROC)
    config = _config(data_dir, epochs=epochs, learning_rate=1e-2, keep_checkpoints=epochs,
                     early_stopping_patience=epochs)
    real_save = Checkpoints.save

    def killed_after_epoch_3(self, state, **kwargs):
        real_save(self, state, **kwargs)
        if state.epoch == 3:
            raise _Killed

    _script_val_auroc(monkeypatch)
    monkeypatch.setattr(Checkpoints, "save", killed_after_epoch_3)
    with pytest.raises(_Killed):
        loop.run_training(dataclasses.replace(config, model_dir=model_dir))
    assert run_folder.exported_epochs(model_dir) == (None, None)
    monkeypatch.setattr(Checkpoints, "save", real_save)

    _script_val_auroc(monkeypatch, first_epoch=4)
    result = loop.run_training(dataclasses.replace(config, model_dir=model_dir))
    assert result["resumed_from_epoch"] == 3 and [r["epoch"] for r in result["history"]] == [4]
    assert result["history"][0]["val_auroc"] == VAL_AUROC[3]
    _assert_exports_are_epoch(model_dir, data_dir, BEST_EPOCH)


@pytest.mark.parametrize("killed_at", ["model.keras", "val_predictions.csv"])
def test_a_kill_during_the_exports_is_repaired_on_restart(data_dir, tmp_path, monkeypatch, killed_at):
    # Regression: `if model_epoch == best:` alone in loop._export_best, or no _export_best for a
    # finished run (a restart then keeps model.keras and val_predictions.csv missing or apart).
    model_dir = str(tmp_path / "run")
    config = _config(data_dir, epochs=2, learning_rate=1e-2, keep_checkpoints=2, early_stopping_patience=2)
    _script_val_auroc(monkeypatch)  # 0.6 then 0.9: epoch 2 is the best
    target = (outputs, "export_model" if killed_at == "model.keras" else "write_val_predictions")
    real = getattr(*target)

    def killed(*args):
        raise _Killed

    monkeypatch.setattr(*target, killed)
    with pytest.raises(_Killed):
        loop.run_training(dataclasses.replace(config, model_dir=model_dir))
    assert run_folder.exported_epochs(model_dir) == ((None, None) if killed_at == "model.keras" else (2, None))
    monkeypatch.setattr(*target, real)

    result = loop.run_training(dataclasses.replace(config, model_dir=model_dir))  # finished: nothing retrained
    assert result["history"] == [] and result["epochs_done"] == 2
    _assert_exports_are_epoch(model_dir, data_dir, 2)


@pytest.mark.parametrize("early_patience, plateau_patience", [(2, 2), (4, 1)])
def test_the_loop_state_decides_as_keras_early_stopping_and_reduce_lr_on_plateau(early_patience,
                                                                                  plateau_patience):
    # Regressions: `>` for `>=` on either patience in LoopState.after_epoch; dropping the loss's
    # min_delta (epoch 3's 0.89995 then counts as lower); the learning rate floor ignored.
    # The reference is Keras' own callbacks, which the loop ran before it kept its own state.
    aurocs = (0.5, 0.7, 0.6, 0.7, 0.65, 0.8, 0.6, 0.6, 0.6, 0.6)
    losses = (1.0, 0.9, 0.89995, 0.95, 0.8, 0.85, 0.9, 0.9, 0.9, 0.9)
    config = _config("unused", epochs=len(aurocs), early_stopping_patience=early_patience,
                     reduce_lr_patience=plateau_patience, reduce_lr_factor=0.5, min_learning_rate=0.3)
    inputs = keras.Input((1,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer=keras.optimizers.SGD(1.0))
    early = keras.callbacks.EarlyStopping(monitor="val_auroc", mode="max", patience=early_patience)
    plateau = keras.callbacks.ReduceLROnPlateau(monitor="val_loss", mode="min", factor=0.5,
                                                patience=plateau_patience, min_lr=0.3)
    callbacks = keras.callbacks.CallbackList([early, plateau], model=model)
    callbacks.on_train_begin()
    state = LoopState(learning_rate=1.0)
    for index, (auroc, loss) in enumerate(zip(aurocs, losses)):
        callbacks.on_epoch_end(index, {"val_auroc": auroc, "val_loss": loss})
        state = state.after_epoch(config, 1, auroc, loss)
        assert state.best_epoch == early.best_epoch + 1, index
        assert state.learning_rate == pytest.approx(float(model.optimizer.learning_rate.numpy())), index
        assert state.finished == bool(model.stop_training), index
        if state.finished:
            break
    assert state.finished and state.learning_rate < 1.0  # both rules fired


def test_a_run_folder_checkpointed_without_the_loop_state_is_refused_in_one_line(data_dir, tmp_path):
    # Regression: dropping the `has_tensor(STATE_KEY)` check in Checkpoints.restore_latest (the
    # restore then fails with a bare AssertionError about unmatched objects).
    from contracts.errors import UserInputError

    model_dir = str(tmp_path / "old_run")
    model = build_model("tiny_test", SIZE, weights="none", augment=False)
    old = tf.train.Checkpoint(model=model, epoch=tf.Variable(1, dtype=tf.int64))  # an older layout
    tf.train.CheckpointManager(old, os.path.join(model_dir, "checkpoints"), max_to_keep=1).save(1)
    with pytest.raises(UserInputError, match=r"old_run holds checkpoints of an older version.*new model_dir"):
        loop.run_training(_config(data_dir, model_dir=model_dir))
