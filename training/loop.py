"""`run_training`: the epoch loop around the distributed step, with resume, validation and outputs."""

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

from contracts import run_folder
from contracts.labels import FINDINGS
from contracts.manifest import ShardFolder
from contracts.run_folder import RunFolder
from models import build_model, distribute, get_backbone, inference_model, precision
from models.front import with_uint8_front
from pipeline import input_pipeline, options, service
from pipeline.patient_columns import read_patient_columns
from training import config as config_lib
from training import outputs, validation
from training import step as step_lib
from training.config import TrainConfig
from training.state import Checkpoints, LoopState


@dataclasses.dataclass
class _Run:

    config: TrainConfig
    shards: ShardFolder
    model_dir: str
    strategy: tf.distribute.Strategy
    chief: bool
    model: keras.Model
    checkpoints: Checkpoints
    state: LoopState
    tensorboard: keras.callbacks.CallbackList
    train_step: Any
    sync_state: Any
    train_iterator: Any
    predict_step: Any
    val_dataset: Any
    findings: step_lib.FindingsLoss | None


def _build(config: TrainConfig, strategy: tf.distribute.Strategy):
    spec = get_backbone(config.backbone)
    with strategy.scope():
        model = build_model(config.backbone, config.image_size, weights=config.weights,
                            augment=config.augment == "on", seed=config.seed,
                            batchnorm_momentum=config.batchnorm_momentum,
                            feature_layer=config.feature_layer, findings=config.findings_weight > 0)
        optimizer = step_lib.make_optimizer(spec.optimizer, config.learning_rate, config.precision)
        # Slots exist before a restore, so the checkpoint fills them rather than deferring.
        optimizer.build(model.trainable_variables)
        model.compile(optimizer=optimizer)  # only attaches it, for the TensorBoard callback to read
    return model, optimizer


def _datasets(config: TrainConfig, shards: ShardFolder, strategy: tf.distribute.Strategy, start_epoch: int):
    # A resumed run reshuffles with another seed rather than replaying the first epoch's order.
    seed = config.seed + start_epoch
    job_name = distribute.service_job_name(strategy) if config.data_service else None
    if job_name:
        logging.info("training input on the tf.data service at %s, job %s", config.data_service, job_name)
    uint8 = config.transfer == options.UINT8
    stream = input_pipeline.StreamOptions(
        seed=seed, deterministic=config.deterministic, shuffle_buffer=config.shuffle_buffer,
        cache=config.cache, uint8_gray=uint8, data_service=config.data_service, job_name=job_name)
    train = strategy.distribute_datasets_from_function(
        lambda context: input_pipeline.make_train_dataset(
            shards, config.train_split, config.global_batch_size, stream=stream,
            input_context=context).map(step_lib.without_ids))
    val = None
    if config.validation:
        val = validation.make_distributed_split(strategy, shards, config.val_split, config.global_batch_size,
                                                cache=config.cache, uint8_gray=uint8)
    return train, val


def _train_epoch(run: _Run, epoch: int) -> dict[str, float]:
    config = run.config
    losses, probabilities, labels = [], [], []
    bar = tqdm(total=config.steps_per_epoch, desc=f"epoch {epoch}/{config.epochs}", unit="step",
               leave=False, disable=True if not run.chief else None)
    start = time.perf_counter()
    pending = None
    for index in range(config.steps_per_epoch):
        result = run.train_step(run.train_iterator)
        # Read a step's results only once the next is queued: the device never waits on the host.
        if pending is not None:
            _collect(pending, losses, probabilities, labels, epoch)
        pending = (run.state.step + index + 1, result)
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
    if not math.isfinite(loss):
        raise FloatingPointError(
            f"training loss is {loss} at step {step} (epoch {epoch}); the run stops here and its last "
            "checkpoint holds the previous epoch. Lower the learning rate, try float32 precision, "
            "or check the input data")
    losses.append(loss)
    probabilities.append(step_probabilities.numpy())
    labels.append(step_labels.numpy())


def _epoch(run: _Run) -> dict[str, Any]:
    epoch, learning_rate = run.state.epoch + 1, run.state.learning_rate
    run.model.optimizer.learning_rate = learning_rate
    run.tensorboard.on_epoch_begin(epoch - 1)
    train = _train_epoch(run, epoch)
    if run.strategy.num_replicas_in_sync > 1:
        run.sync_state()
    logs = {"loss": train["loss"], "accuracy": train["accuracy"], "auroc": train["auroc"]}
    if run.val_dataset is not None:
        scores = validation.score(run.strategy, run.predict_step, run.val_dataset)
        val = validation.summarize(scores.labels, scores.probabilities)
        if scores.findings is not None:
            val["findings_auroc"] = validation.findings_auroc(scores)
        logs.update({f"val_{k}": v for k, v in val.items()})
    # Every worker must take the same decisions below, or their collectives would hang.
    logs = distribute.adopt_chief_values(run.strategy, logs)
    run.state = run.state.after_epoch(run.config, run.config.steps_per_epoch, logs.get("val_auroc"),
                                      logs.get("val_loss"))
    run.tensorboard.on_epoch_end(epoch - 1, dict(logs))
    record = {"epoch": epoch, "step": run.state.step, "learning_rate": learning_rate,
              **{f"train_{k}": v for k, v in logs.items() if not k.startswith("val_")},
              **{k: v for k, v in logs.items() if k.startswith("val_")},
              "images_per_second": train["images_per_second"], "epoch_seconds": train["seconds"],
              "time": time.time()}
    if run.chief:  # before the checkpoint: a resumed run drops the records of epochs it redoes
        outputs.append_metrics(run.model_dir, record)
    run.checkpoints.save(run.state, best=run.val_dataset is not None and run.state.best_epoch == epoch)
    logging.info("epoch %d/%d: %s | lr %.3g | %.1f images/s", epoch, run.config.epochs,
                 " ".join(f"{k} {v:.4f}" for k, v in logs.items()), learning_rate, train["images_per_second"])
    return record


def _export_best(run: _Run) -> None:
    """Restores the best epoch's weights and exports them in float32, unless the exports already hold
    that epoch; a mixed-precision run's validation predictions are then the float32 export's (re-scored)."""
    best, validating = run.state.best_epoch, run.val_dataset is not None
    done = run.chief and run_folder.exported_epochs(run.model_dir) == (best, best if validating else None)
    # A run from before the re-validation (validated under its mixed policy) is re-validated once.
    done = done and RunFolder.open(run.model_dir).validated_under in (None, run_folder.MODEL_PRECISION)
    # A collective: every worker takes the chief's answer, once the chief's checkpoints are written.
    done = distribute.adopt_chief_values(run.strategy, {"done": float(done)})["done"]
    if validating:
        run.checkpoints.restore_best(best)
    if done:
        return
    # Every worker scores: iterating a distributed split is a collective under multi_worker.
    served, scores, parity = inference_model(run.model), None, None
    if validating:
        scores = validation.score(run.strategy, run.predict_step, run.val_dataset)
        if run.config.precision != run_folder.MODEL_PRECISION:
            trained = scores
            served, scores = _in_float32(run, served)
            parity = validation.precision_parity(trained, scores, run.config.precision)
    if not run.chief:
        return
    outputs.export_model(served, os.path.join(run.model_dir, run_folder.MODEL), best)
    if validating:
        config = run.config
        crop = run.shards.crop
        sidecar = {"backbone": config.backbone, "data_dir": config.data_dir, "split": config.val_split,
                   "crop": crop, "train_crop": crop, "image_size": config.image_size, "epoch": best,
                   "model": run_folder.MODEL, "model_dir": os.path.abspath(run.model_dir)}
        # The patient columns too: the report's intervals resample val's patients, its subgroups use the rest.
        meta = read_patient_columns(run.shards, config.val_split, scores.image_ids)
        outputs.write_val_predictions(run.model_dir, scores, sidecar, meta, parity)
        if parity is not None:
            logging.log(logging.INFO if run_folder.parity_within(parity) else logging.WARNING,
                        "%s", parity_line(parity))


def _in_float32(run: _Run, classifier: keras.Model) -> tuple[keras.Model, validation.Scores]:
    """`classifier` in float32 (the policy model.keras and every export compute under) and its scores on
    the validation split."""
    with run.strategy.scope():
        served = precision.as_policy(classifier, run_folder.MODEL_PRECISION)
    uint8 = run.config.transfer == options.UINT8
    step = step_lib.make_predict_step(run.strategy, with_uint8_front(served) if uint8 else served)
    return served, validation.score(run.strategy, step, run.val_dataset)


def parity_line(parity: dict[str, Any]) -> str:
    """One line: how the float32 model.keras scores validation beside the mixed policy that trained it."""
    over = not run_folder.parity_within(parity)
    findings = ("" if "findings_max_abs" not in parity else
                f", each finding's within {parity['findings_max_abs']:.4f}")
    return (f"re-validated model.keras in {run_folder.MODEL_PRECISION} (what export.py serves) on "
            f"{parity['images']} validation images: P(abnormal) within {parity['max_abs']:.4f} (median "
            f"{parity['median_abs']:.4f}) of {parity['trained_under']}'s{findings}, AUROC "
            f"{parity['auroc_served']:.4f} against {parity['auroc_trained']:.4f}; "
            f"{run_folder.VAL_PREDICTIONS} holds the {run_folder.MODEL_PRECISION} predictions"
            + (f". Over {run_folder.PARITY_LIMIT}: export.py will not call this model validated (the epoch "
               f"was chosen under {parity['trained_under']}); train under {run_folder.MODEL_PRECISION} for "
               "a validated export" if over else ""))


def _start(config: TrainConfig, shards: ShardFolder, strategy: tf.distribute.Strategy,
           findings: step_lib.FindingsLoss | None) -> _Run:
    model_dir = config.model_dir
    chief = distribute.is_chief(strategy)
    config_lib.check_resumable(config)
    keras.utils.set_random_seed(config.seed)
    model, optimizer = _build(config, strategy)  # bad weights fail here, before model_dir is touched
    checkpoints = Checkpoints(model, optimizer, model_dir, chief=chief, keep=config.keep_checkpoints)
    state = checkpoints.restore_latest()
    if state is None:
        state = LoopState(learning_rate=config.learning_rate)
    else:
        logging.info("resuming %s: %d epoch(s) done, step %d", model_dir, state.epoch, state.step)
    if chief:
        os.makedirs(model_dir, exist_ok=True)
        config_lib.write_config(config, {
            "replicas": strategy.num_replicas_in_sync, "workers": max(1, distribute.tf_config_workers()),
            "tensorflow": tf.__version__, "keras": keras.__version__,
            "finding_pos_weights": None if findings is None else dict(zip(FINDINGS, findings.pos_weights))})
    train, val = _datasets(config, shards, strategy, state.epoch)
    uint8 = config.transfer == options.UINT8
    return _Run(
        config=config, shards=shards, model_dir=model_dir, strategy=strategy, chief=chief, model=model,
        checkpoints=checkpoints, state=state,
        tensorboard=outputs.tensorboard(model, model_dir, chief=chief),
        train_step=step_lib.make_train_step(
            strategy, model, optimizer, global_batch_size=config.global_batch_size,
            class_weights=config_lib.class_weights(config, shards), jit_compile=config.jit_compile,
            uint8_input=uint8, findings=findings),
        train_iterator=iter(train),
        sync_state=step_lib.make_state_sync(strategy, model),
        predict_step=step_lib.make_predict_step(strategy, with_uint8_front(model) if uint8 else model),
        val_dataset=val,
        findings=findings,
    )


def _train(run: _Run) -> list[dict[str, Any]]:
    if run.state.finished:
        logging.info("%s already holds a finished run; nothing to train", run.model_dir)
        return []
    if run.chief:
        outputs.keep_metrics_through(run.model_dir, run.state.epoch)
    run.tensorboard.on_train_begin()
    records = []
    while not run.state.finished:
        records.append(_epoch(run))
    run.tensorboard.on_train_end()
    return records


def _resolve(config: TrainConfig, shards: ShardFolder, strategy: tf.distribute.Strategy) -> TrainConfig:
    precision = distribute.resolve_precision(config.precision)
    resolved = dataclasses.replace(config_lib.resolve_config(config, shards), precision=precision,
                                   strategy=distribute.strategy_name(strategy),
                                   transfer=distribute.resolve_transfer(config.transfer))
    distribute.per_replica_batch(resolved.global_batch_size, strategy, "global_batch_size")
    if resolved.data_service:
        service.check_reachable(resolved.data_service)
    for warning in distribute.hardware_warnings(config.strategy, config.precision, strategy):
        logging.warning("%s", warning)
    logging.info("training %s with %d replica(s), %s: %s", resolved.backbone, strategy.num_replicas_in_sync,
                 precision, dataclasses.asdict(resolved))
    return resolved


def _findings_loss(config: TrainConfig,
                   shards: ShardFolder) -> tuple[TrainConfig, step_lib.FindingsLoss | None]:
    """The findings loss, with each finding's positive weight min(negatives / positives, cap) among the
    train records whose findings are known (1 without positives or without negatives); off without any
    such record."""
    if not config.findings_weight:
        return config, None
    known, positives = input_pipeline.finding_counts(shards, config.train_split)
    if not known:
        logging.warning("split %r of %s has no finding labels (its labels are 0/1 only): training the "
                        "binary head alone (findings_weight=0)", config.train_split, shards.path)
        return dataclasses.replace(config, findings_weight=0.0), None
    cap = config.finding_pos_weight_cap
    return config, step_lib.FindingsLoss(config.findings_weight,
                                         tuple(min(cap, (known - n) / n) if 0 < n < known else 1.0
                                               for n in positives))


def run_training(config: TrainConfig) -> dict[str, Any]:
    """Trains `config.backbone` on `config.data_dir` (None fields: the backbone's or the data's
    defaults) into `config.model_dir`, which all workers of a multi-worker run share (the chief writes).

    Run again after a kill, it resumes after the last completed epoch; a finished run returns at
    once. Call it before any other TensorFlow op when the strategy may resolve to multi_worker.

    Returns {"config" (resolved, a dict), "resumed_from_epoch", "epochs_done", "step", "history" (the
    records of the epochs this call ran), "stopped_early", "model" (with the best epoch's weights),
    "model_path", "val_predictions_path" (None without validation)}. Raises UserInputError or
    FileNotFoundError on bad config or data, FloatingPointError when the loss turns NaN or infinite.
    """
    model_dir = config.model_dir
    strategy = distribute.resolve_strategy(config.strategy)
    previous_policy = keras.mixed_precision.global_policy()
    try:
        shards = ShardFolder.open(config.data_dir)
        config, findings = _findings_loss(_resolve(config, shards, strategy), shards)
        run = _start(config, shards, strategy, findings)
        resumed_from = run.state.epoch
        try:
            records = _train(run)
            _export_best(run)
        except tf.errors.DataLossError as err:  # the last completed epoch's checkpoint is kept
            raise input_pipeline.corrupt_data_error(
                shards, (config.train_split,) + ((config.val_split,) if config.validation else ()),
                err) from None
        finally:
            run.checkpoints.close()
        return {
            "config": dataclasses.asdict(config),
            "resumed_from_epoch": resumed_from,
            "epochs_done": run.state.epoch,
            "step": run.state.step,
            "history": records,
            "stopped_early": run.state.epoch < config.epochs,
            "model": run.model,
            "model_path": os.path.join(model_dir, run_folder.MODEL),
            "val_predictions_path": (os.path.join(model_dir, run_folder.VAL_PREDICTIONS)
                                     if config.validation else None),
        }
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
