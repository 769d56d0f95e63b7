"""`run_training`: the epoch loop around the one distributed step, with resume, validation and outputs.

Outputs in `model_dir` (only the chief writes there) follow `contracts.run_folder`; `model.keras`
holds the best epoch by validation AUROC (the last epoch without validation).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import logging
from tqdm import tqdm

from contracts import manifest as manifest_lib
from contracts import run_folder
from contracts.errors import UserInputError
from models import build_model, get_backbone, inference_model
from models.front import with_uint8_front
from pipeline import input_pipeline, options, service
from pipeline.patient_columns import read_patient_columns
from training import callbacks as callbacks_lib
from training import config as config_lib
from training import distribute, outputs, validation
from training import step as step_lib
from training.checkpoints import RunState
from training.config import TrainConfig


@dataclasses.dataclass
class _Run:
    """Everything one run's epochs share."""

    config: TrainConfig
    model_dir: str
    strategy: tf.distribute.Strategy
    chief: bool
    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    state: RunState
    callbacks: keras.callbacks.CallbackList
    train_step: Any
    sync_state: Any
    train_iterator: Any
    predict_step: Any
    val_dataset: Any
    exporter: outputs.ModelExporter
    metrics: outputs.MetricsLog
    exported_epoch: int | None = None  # the epoch model.keras and val_predictions.csv come from


def _check_replicas(config: TrainConfig, strategy: tf.distribute.Strategy) -> None:
    try:
        distribute.per_replica_batch(config.global_batch_size, strategy, "global_batch_size")
    except ValueError as err:
        raise UserInputError(str(err)) from err


def _build(config: TrainConfig, strategy: tf.distribute.Strategy):
    spec = get_backbone(config.backbone)
    with strategy.scope():
        model = build_model(config.backbone, config.image_size, weights=config.weights,
                            augment=config.augment == "on", seed=config.seed,
                            batchnorm_momentum=config.batchnorm_momentum,
                            feature_layer=config.feature_layer)
        optimizer = step_lib.make_optimizer(spec.optimizer, config.learning_rate, config.precision)
        # Slots exist before a restore, so the checkpoint fills them rather than deferring.
        optimizer.build(model.trainable_variables)
        # Compiling only attaches the optimizer, which the Keras callbacks read and adjust.
        model.compile(optimizer=optimizer)
    return model, optimizer


def _datasets(config: TrainConfig, strategy: tf.distribute.Strategy, start_epoch: int):
    # A resumed run reshuffles with another seed rather than replaying the first epoch's order.
    seed = config.seed + start_epoch
    job_name = distribute.service_job_name(strategy) if config.data_service else None
    if job_name:
        logging.info("training input on the tf.data service at %s, job %s", config.data_service, job_name)
    uint8 = config.transfer == options.UINT8
    train = strategy.distribute_datasets_from_function(
        lambda context: input_pipeline.make_train_dataset(
            config.data_dir, config.train_split, config.global_batch_size, config.image_size,
            seed=seed, deterministic=config.deterministic, shuffle_buffer=config.shuffle_buffer,
            cache=config.cache, input_context=context, uint8_gray=uint8, data_service=config.data_service,
            job_name=job_name).map(step_lib.without_ids))
    val = None
    if config.validation:
        val = validation.make_distributed_split(strategy, config.data_dir, config.val_split,
                                                config.global_batch_size, config.image_size,
                                                cache=config.cache, uint8_gray=uint8)
    return train, val


def _learning_rate(optimizer: keras.optimizers.Optimizer) -> float:
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


def _check_finite(loss: float, step: int, epoch: int) -> None:
    if not math.isfinite(loss):
        raise FloatingPointError(
            f"training loss is {loss} at step {step} (epoch {epoch}); the run stops here and its last "
            "checkpoint holds the previous epoch. Lower --learning_rate, try --precision=float32, "
            "or check the input data"
        )


def _train_epoch(run: _Run, epoch: int) -> dict[str, float]:
    """Runs one epoch of steps; returns the train metrics and images/s."""
    config = run.config
    first_step = run.state.step
    losses, probabilities, labels = [], [], []
    bar = tqdm(total=config.steps_per_epoch, desc=f"epoch {epoch}/{config.epochs}", unit="step",
               leave=False, disable=True if not run.chief else None)
    start = time.perf_counter()
    pending = None
    for index in range(config.steps_per_epoch):
        result = run.train_step(run.train_iterator)
        # Read the previous step's results only after the next step is queued, so the device
        # never waits on the host between steps.
        if pending is not None:
            _collect(pending, losses, probabilities, labels, epoch)
        pending = (first_step + index + 1, result)
        bar.update(1)
    _collect(pending, losses, probabilities, labels, epoch)
    elapsed = time.perf_counter() - start
    bar.close()
    metrics = validation.summarize(np.concatenate(labels), np.concatenate(probabilities))
    metrics["loss"] = float(np.mean(losses))  # the training objective (class-weighted when asked)
    metrics["images_per_second"] = config.steps_per_epoch * config.global_batch_size / elapsed
    metrics["seconds"] = elapsed
    return metrics


def _collect(pending, losses, probabilities, labels, epoch: int) -> None:
    step, (loss, step_probabilities, step_labels) = pending
    loss = float(loss.numpy())
    _check_finite(loss, step, epoch)
    losses.append(loss)
    probabilities.append(step_probabilities.numpy())
    labels.append(step_labels.numpy())


def _early_stopping(callbacks: keras.callbacks.CallbackList) -> keras.callbacks.EarlyStopping | None:
    return next((c for c in callbacks.callbacks if isinstance(c, keras.callbacks.EarlyStopping)), None)


def _sidecar(config: TrainConfig, model_dir: str, epoch: int) -> dict[str, Any]:
    crop = manifest_lib.load_manifest(config.data_dir)["config"].get("crop")
    return {"backbone": config.backbone, "data_dir": config.data_dir, "split": config.val_split,
            "crop": crop, "train_crop": crop, "image_size": config.image_size, "epoch": epoch,
            "model": run_folder.MODEL, "model_dir": os.path.abspath(model_dir)}


def _epoch(run: _Run, epoch: int) -> dict[str, Any]:
    """Trains, validates and records epoch `epoch` (1-based); returns its metrics record."""
    config = run.config
    run.callbacks.on_epoch_begin(epoch - 1)
    learning_rate = _learning_rate(run.optimizer)
    train = _train_epoch(run, epoch)
    if run.strategy.num_replicas_in_sync > 1:
        run.sync_state()
    step = run.state.step + config.steps_per_epoch
    logs = {"loss": train["loss"], "accuracy": train["accuracy"], "auroc": train["auroc"]}
    scores = None
    if run.val_dataset is not None:
        scores = validation.score(run.strategy, run.predict_step, run.val_dataset)
        logs.update({f"val_{k}": v for k, v in validation.summarize(scores.labels,
                                                                      scores.probabilities).items()})
    logs = distribute.adopt_chief_values(run.strategy, logs)
    run.callbacks.on_epoch_end(epoch - 1, dict(logs))
    early_stopping = _early_stopping(run.callbacks)
    best = early_stopping is None or early_stopping.best_epoch == epoch - 1
    record = {"epoch": epoch, "step": step, "learning_rate": learning_rate,
              **{f"train_{k}": v for k, v in logs.items() if not k.startswith("val_")},
              **{k: v for k, v in logs.items() if k.startswith("val_")},
              "images_per_second": train["images_per_second"], "epoch_seconds": train["seconds"],
              "time": time.time()}
    if run.chief:
        run.metrics.append(record)
    finished = epoch >= config.epochs or bool(run.model.stop_training)
    run.exported_epoch = epoch if best else run.exported_epoch
    # The checkpoint first, then the exports: a kill in between leaves a checkpoint that says which
    # epoch they must come from, and the next start re-exports it (_repair_exports).
    run.state.save(epoch, step, {"callbacks": callbacks_lib.callback_state(run.callbacks),
                                 "finished": finished, "exported_epoch": run.exported_epoch})
    if run.chief and best:
        _export(run, epoch, scores)
    _log_epoch(record, config.epochs)
    return record


def _export(run: _Run, epoch: int, scores: validation.Scores | None) -> None:
    run.exporter.export(os.path.join(run.model_dir, run_folder.MODEL), epoch)
    if scores is not None:
        # The patient columns too: the report's intervals resample val's patients, its subgroups use the rest.
        meta = read_patient_columns(run.config.data_dir, run.config.val_split, scores.image_ids)
        outputs.write_val_predictions(run.model_dir, scores, _sidecar(run.config, run.model_dir, epoch), meta)


def _repair_exports(run: _Run, extra: dict[str, Any]) -> None:
    """Re-exports model.keras and val_predictions.csv when a kill left them from another epoch than
    the checkpoint says. Only the latest checkpoint's epoch can be missing its exports, and that
    checkpoint is what was just restored."""
    wanted = extra.get("exported_epoch")
    if wanted is None or wanted != run.state.epochs_done:
        return
    model_epoch, val_epoch = run_folder.exported_epochs(run.model_dir)
    if model_epoch == wanted and (val_epoch == wanted or run.val_dataset is None):
        return
    logging.warning("%s holds model.keras of epoch %s and val_predictions.csv of epoch %s; "
                    "re-exporting epoch %d from its checkpoint", run.model_dir, model_epoch, val_epoch, wanted)
    scores = (None if run.val_dataset is None
              else validation.score(run.strategy, run.predict_step, run.val_dataset))
    if run.chief:
        _export(run, wanted, scores)


def _log_epoch(record: dict[str, Any], epochs: int) -> None:
    val = ""
    if "val_loss" in record:
        val = (f" | val loss {record['val_loss']:.4f} acc {record['val_accuracy']:.4f} "
               f"auroc {record['val_auroc']:.4f}")
    logging.info(
        "epoch %d/%d: loss %.4f acc %.4f auroc %.4f%s | lr %.3g | %.1f images/s",
        record["epoch"], epochs, record["train_loss"], record["train_accuracy"], record["train_auroc"],
        val, record["learning_rate"], record["images_per_second"])


def _best_weights(model_dir: str, extra: dict[str, Any]) -> list[np.ndarray] | None:
    # EarlyStopping keeps its best weights in memory only; after a restart they are those of
    # model.keras, which is exported from the same epoch.
    path = os.path.join(model_dir, run_folder.MODEL)
    if not extra.get("callbacks", {}).get("EarlyStopping") or not os.path.exists(path):
        return None
    return keras.saving.load_model(path, compile=False, safe_mode=True).get_weights()


def _write_config(config: TrainConfig, model_dir: str, strategy: tf.distribute.Strategy,
                  chief: bool) -> None:
    if not chief:
        return
    os.makedirs(model_dir, exist_ok=True)
    config_lib.write_config(config, {
        "replicas": strategy.num_replicas_in_sync,
        "workers": max(1, distribute.tf_config_workers()),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    })


def _start(config: TrainConfig, model_dir: str, strategy: tf.distribute.Strategy) -> tuple[_Run, dict]:
    chief = distribute.is_chief(strategy)
    config_lib.check_resumable(config)
    keras.utils.set_random_seed(config.seed)
    model, optimizer = _build(config, strategy)  # bad weights fail here, before model_dir is touched
    state = RunState(model, optimizer, model_dir, chief=chief, keep=config.keep_checkpoints)
    restored = state.restore_latest()
    _write_config(config, model_dir, strategy, chief)
    extra = state.extra if restored else {}
    if restored:
        logging.info("resuming from %s: %d epoch(s) done, step %d", restored, state.epochs_done, state.step)
    train, val = _datasets(config, strategy, state.epochs_done)
    uint8 = config.transfer == options.UINT8
    run = _Run(
        config=config, model_dir=model_dir, strategy=strategy, chief=chief, model=model,
        optimizer=optimizer, state=state,
        callbacks=callbacks_lib.make_callbacks(config, model, model_dir, chief=chief),
        train_step=step_lib.make_train_step(
            strategy, model, optimizer, global_batch_size=config.global_batch_size,
            class_weights=config_lib.class_weights(config), jit_compile=config.jit_compile,
            uint8_input=uint8),
        train_iterator=iter(train),
        sync_state=step_lib.make_state_sync(strategy, model),
        predict_step=step_lib.make_predict_step(strategy, with_uint8_front(model) if uint8 else model),
        val_dataset=val,
        # The exported model is the classifier without the augmentation block, which is the identity
        # at inference, holds no weights, and whose RandomShear does not survive a save/load round
        # trip in Keras 3.15.
        exporter=outputs.ModelExporter(inference_model(model)),
        metrics=outputs.MetricsLog(model_dir),
    )
    run.exported_epoch = extra.get("exported_epoch")
    return run, extra


def _train(run: _Run, extra: dict[str, Any]) -> list[dict[str, Any]]:
    """Runs the remaining epochs; returns their records."""
    run.model.stop_training = False
    run.callbacks.on_train_begin()
    callbacks_lib.restore_callback_state(run.callbacks, extra.get("callbacks", {}),
                                         _best_weights(run.model_dir, extra))
    if run.chief:
        run.metrics.keep_through(run.state.epochs_done)
    records = []
    for epoch in range(run.state.epochs_done + 1, run.config.epochs + 1):
        records.append(_epoch(run, epoch))
        if run.model.stop_training:
            break
    run.callbacks.on_train_end()
    return records


def run_training(config: TrainConfig) -> dict[str, Any]:
    """Trains `config.backbone` on `config.data_dir`, writing outputs to `config.model_dir`.

    Started again with the same config after being killed, it resumes after the last completed
    epoch; a finished run returns at once. Call it before any other TensorFlow op of the process
    when `config.strategy` may resolve to multi_worker.

    Args:
      config: the run's settings; None fields take the backbone's or the data's defaults. Under
        MultiWorkerMirroredStrategy all workers pass the same model_dir; only the chief writes
        there, and all read its checkpoints when resuming.

    Returns:
      {"config": resolved config (dict), "resumed_from_epoch": epochs done before this call,
       "epochs_done", "step", "history": records of the epochs run by this call,
       "stopped_early", "model": the trained keras.Model (with EarlyStopping's best weights),
       "model_path", "val_predictions_path" (None without validation)}.

    Raises:
      UserInputError, FileNotFoundError: bad config or data, with the fix in the message.
      FloatingPointError: the training loss became NaN or infinite (the message names the step).
    """
    requested, model_dir = config, config.model_dir
    strategy = distribute.resolve_strategy(config.strategy)
    previous_policy = keras.mixed_precision.global_policy()
    precision = distribute.resolve_precision(config.precision)
    try:
        config = dataclasses.replace(config_lib.resolve_config(config), precision=precision,
                                     strategy=distribute.strategy_name(strategy),
                                     transfer=distribute.resolve_transfer(config.transfer))
        _check_replicas(config, strategy)
        if config.data_service:
            service.check_reachable(config.data_service)
        for warning in distribute.hardware_warnings(requested.strategy, requested.precision,
                                                    strategy):
            logging.warning("%s", warning)
        logging.info("training %s with %d replica(s), %s: %s", config.backbone,
                     strategy.num_replicas_in_sync, precision, dataclasses.asdict(config))
        run, extra = _start(config, model_dir, strategy)
        _repair_exports(run, extra)
        resumed_from = run.state.epochs_done
        try:
            records = [] if extra.get("finished") else _train(run, extra)
        except tf.errors.DataLossError as err:  # the last completed epoch's checkpoint is kept
            raise input_pipeline.corrupt_data_error(
                config.data_dir, (config.train_split,) + ((config.val_split,) if config.validation else ()),
                err) from None
        finally:
            run.state.close()
        if extra.get("finished"):
            logging.info("%s already holds a finished run; nothing to do", model_dir)
        return {
            "config": dataclasses.asdict(config),
            "resumed_from_epoch": resumed_from,
            "epochs_done": run.state.epochs_done,
            "step": run.state.step,
            "history": records,
            "stopped_early": bool(run.model.stop_training),
            "model": run.model,
            "model_path": os.path.join(model_dir, run_folder.MODEL),
            "val_predictions_path": (os.path.join(model_dir, run_folder.VAL_PREDICTIONS)
                                     if config.validation else None),
        }
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
