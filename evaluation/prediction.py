"""Batch prediction behind predict.py: saved models over a split's shards, distributed, each id once.

For every model folder, writes a prediction file (contracts/prediction_files.py: `p_abnormal` after
the run's temperature, `p_uncalibrated` the softmax output) plus the `(N, 2)` softmax outputs as
`.npy` in the same row order (the reference's format), rows sorted by image id so that the files
are identical under every strategy. The row count is checked against the manifest.
Models run under the strategies and precision policies of training (see `with_precision`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable, Sequence

import numpy as np
import tensorflow as tf
import tqdm
from absl import logging

from contracts import manifest as manifest_lib
from contracts import run_folder
from contracts.atomic import all_or_none, atomic_path
from contracts.errors import UserInputError
from contracts.output_names import PROB
from contracts.prediction_files import few, read_predictions, write_predictions
from evaluation import agreement, html_report, preflight, settings
from evaluation import report as report_lib
from evaluation.blend import check_threshold
from models.front import with_uint8_front
from models.saved import load_classifier
from pipeline import input_pipeline, options
from pipeline.patient_columns import read_patient_columns
from training import calibration, distribute

# Ids cross workers as fixed-width byte rows, because collectives cannot gather strings.
MAX_ID_BYTES = 256


@dataclasses.dataclass(frozen=True)
class SplitOutputs:
    """One model's outputs over a split, rows sorted by image id.

    Attributes:
      ids: (N,) image ids (str).
      softmax: (N, 2) float32; column 1 is P(abnormal).
      labels: (N,) int64, -1 where unknown.
    """

    ids: np.ndarray
    softmax: np.ndarray
    labels: np.ndarray


@dataclasses.dataclass(frozen=True)
class PredictionResult:
    """What a prediction run wrote.

    Attributes:
      outputs: model name (its backbone) -> prediction CSV path (the .npy and .json beside it).
      records: rows per file (= the split's records).
      metrics: {name: metrics} when labels are known, else None.
      report_dir: where the report went, or None.
      other_labels: the rescoring against --other_labels_csv (evaluation/agreement.py), or None.
    """

    outputs: dict[str, str]
    records: int
    metrics: dict[str, Any] | None
    report_dir: str | None
    other_labels: dict[str, Any] | None = None


def with_precision(model, precision: str):
    """Returns `model` computing under the dtype policy `precision`, its weights unchanged.

    A saved model carries one dtype policy per layer (train.py saves float32), and loading ignores
    the global policy; so for another policy the loaded graph itself is cloned under it
    (`models.precision.with_policy`: normalisation and softmax stay float32, as in training).

    Args:
      model: the loaded classifier.
      precision: a `training.distribute.PRECISIONS` name ("auto": mixed_float16 on GPU, else float32).

    Returns:
      (classifier, policy name): `model` itself when float32 is asked for and every layer already
      computes in float32, else the clone.
    """
    import keras

    from models import all_layers
    from models.precision import with_policy

    previous = keras.mixed_precision.global_policy()
    try:
        policy = distribute.resolve_precision(precision)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    if policy == "float32" and all(layer.dtype_policy.name == "float32" for layer in all_layers(model)):
        return model, policy
    return with_policy(model, policy), policy


def check_one_row_per_record(ids: np.ndarray, expected: int, data_dir: str, split: str) -> None:
    """Checks that prediction produced each image id once and as many as the manifest lists.

    Raises:
      UserInputError: duplicate ids, or a count different from the manifest's.
    """
    unique, counts = np.unique(ids, return_counts=True)
    manifest = os.path.join(data_dir, manifest_lib.MANIFEST)
    if (counts > 1).any():
        raise UserInputError(
            f"split {split!r} of {data_dir}: {int((counts > 1).sum())} image id(s) occur in several records: "
            f"{few(unique[counts > 1])}; rebuild the shards so that each image is stored once"
        )
    if len(ids) != expected:
        raise UserInputError(
            f"split {split!r}: {manifest} lists {expected} records but its shards hold {len(ids)}; the shards "
            "changed after the build (partial copy or mixed builds): rebuild or recopy the folder"
        )


def _replica_outputs(model, batch: dict[str, tf.Tensor], rows: int) -> dict[str, tf.Tensor]:
    # Every replica pads its share to `rows` and marks the real ones: the last batches are partial
    # or empty (some layers fail on an empty batch), collective gathers need equal shapes, and one
    # static shape traces the step once.
    count = tf.shape(batch["label"])[0]

    def pad(tensor):
        padded = tf.pad(tensor, [[0, rows - count]] + [[0, 0]] * (len(tensor.shape) - 1))
        return tf.ensure_shape(padded, [rows] + tensor.shape[1:])

    id_bytes = tf.io.decode_raw(batch["image_id"], tf.uint8, fixed_length=MAX_ID_BYTES)
    return {
        "softmax": tf.cast(model(pad(batch["image"]), training=False), tf.float32),
        "id_bytes": pad(tf.cast(id_bytes, tf.int32)),
        "id_length": pad(tf.strings.length(batch["image_id"])),
        "label": pad(tf.cast(batch["label"], tf.int32)),
        "valid": tf.cast(tf.range(rows) < count, tf.int32),
    }


def per_replica_rows(batch_size: int, strategy: tf.distribute.Strategy) -> int:
    """Returns each replica's share of the global batch.

    Raises:
      UserInputError: the batch does not split evenly over the replicas.
    """
    try:
        return distribute.per_replica_batch(batch_size, strategy, "batch_size")
    except ValueError as err:
        raise UserInputError(str(err)) from err


def _decode_ids(id_bytes: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    too_long = lengths > MAX_ID_BYTES
    if too_long.any():
        raise UserInputError(
            f"{too_long.sum()} image id(s) are longer than {MAX_ID_BYTES} bytes; shorten the file names"
        )
    rows = id_bytes.astype(np.uint8)
    return np.array([bytes(row[:n]).decode("utf-8") for row, n in zip(rows, lengths)], dtype=object)


def predict_split(
    model, strategy: tf.distribute.Strategy, data_dir: str, split: str, batch_size: int, image_size: int,
    *, total: int | None = None, progress: bool = True, desc: str = "predict", uint8_gray: bool = False,
) -> SplitOutputs:
    """Runs `model` over every record of `split` under `strategy`, gathering all replicas and workers.

    Args:
      model: built or loaded inside `strategy.scope()`.
      strategy: any strategy from `training.distribute.resolve_strategy`.
      data_dir: the shard folder.
      split: the split to read.
      batch_size: global batch size.
      image_size: side of the stored images.
      total: records expected, for the progress bar.
      progress: show a progress bar (images/s) on the chief.
      desc: the bar's label.
      uint8_gray: feed uint8 gray batches to `model` behind the uint8 front (`--transfer=uint8`).

    Returns:
      Every record's outputs, rows sorted by image id (every worker gets all of them).
    """
    rows = per_replica_rows(batch_size, strategy)
    dataset = strategy.distribute_datasets_from_function(
        lambda context: input_pipeline.make_eval_dataset(
            data_dir, split, batch_size, image_size, input_context=context, uint8_gray=uint8_gray)
    )
    model = with_uint8_front(model) if uint8_gray else model

    across_workers = distribute.strategy_name(strategy) == "multi_worker"

    # reduce_retracing: the last, partial batch has its own input shape.
    @tf.function(reduce_retracing=True)
    def step(batch):
        per_replica = strategy.run(lambda b: _replica_outputs(model, b, rows), args=(batch,))
        if across_workers:
            return {k: strategy.gather(v, axis=0) for k, v in per_replica.items()}
        # One host holds every replica's result: concatenating them needs no collective op (which
        # would also clash with the collectives of another strategy created earlier in the process).
        return {k: tf.concat(strategy.experimental_local_results(v), axis=0) for k, v in per_replica.items()}

    parts = []
    bar = tqdm.tqdm(total=total, unit="img", desc=desc, disable=not (progress and distribute.is_chief(strategy)))
    try:
        with bar:
            for batch in dataset:
                outputs = {k: v.numpy() for k, v in step(batch).items()}
                valid = outputs.pop("valid").astype(bool)
                parts.append({k: v[valid] for k, v in outputs.items()})
                bar.update(int(valid.sum()))
    except tf.errors.DataLossError as err:
        raise input_pipeline.corrupt_data_error(data_dir, (split,), err) from None
    merged = {k: np.concatenate([p[k] for p in parts]) if parts else np.zeros((0,)) for k in
              ("softmax", "id_bytes", "id_length", "label")}
    ids = _decode_ids(merged["id_bytes"], merged["id_length"])
    order = np.argsort(ids, kind="stable")
    return SplitOutputs(ids=ids[order], softmax=merged["softmax"].reshape(-1, 2)[order].astype(np.float32),
                        labels=merged["label"][order].astype(np.int64))


def _write_outputs(path: str, outputs: SplitOutputs, sidecar: dict[str, Any], calibrated: np.ndarray,
                   meta: dict[str, np.ndarray]) -> None:
    known = outputs.labels >= 0
    write_predictions(path, outputs.ids, calibrated, outputs.labels if known.any() else None, sidecar,
                      uncalibrated=outputs.softmax[:, 1], meta=meta)
    with atomic_path(os.path.splitext(path)[0] + ".npy") as tmp:
        np.save(tmp, outputs.softmax)


def _calibrated(model_dir: str, probs: np.ndarray) -> tuple[np.ndarray, float | None]:
    """The run's own temperature applied (training fitted it on validation); the raw probabilities
    themselves when the run has none."""
    temperature = run_folder.run_temperature(model_dir)
    return (probs.astype(np.float64) if temperature is None
            else calibration.apply_temperature(probs, temperature)), temperature


def _validation(model_dir: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The run's val_predictions.csv as (labels, calibrated probs), for choosing operating points;
    None without one."""
    path = os.path.join(model_dir, run_folder.VAL_PREDICTIONS)
    if not os.path.exists(path):
        return None
    validation = read_predictions(path)
    # The raw column through the run's temperature, whatever the file's format version.
    return None if validation.labels is None else (validation.labels,
                                                   _calibrated(model_dir, validation.uncalibrated)[0])


def _load_models(model_dirs: Sequence[str], configs: Sequence[dict[str, Any]], manifest: dict[str, Any],
                 data_dir: str, strategy: tf.distribute.Strategy, precision: str) -> list[tuple[Any, str, int]]:
    """Loads every model before any predicting, so a broken or mismatched folder fails in one line
    before the long work; returns (classifier, its dtype policy, the shards' image size) per model."""
    loaded = []
    for model_dir, config in zip(model_dirs, configs):
        escaped = model_dir.replace("{", "{{").replace("}", "}}")
        fix = escaped + " was trained at {asked} px: rebuild the shards with --image_size={asked}"
        try:
            image_size = manifest_lib.check_image_size(manifest, int(config["image_size"]), data_dir, fix)
        except ValueError as err:
            raise UserInputError(str(err)) from err
        with strategy.scope():
            model, policy = with_precision(load_classifier(model_dir), precision)
        loaded.append((model, policy, image_size))
    return loaded


def _predict_model(
    model_dir: str, config: dict[str, Any], name: str, path: str, loaded: tuple[Any, str, int],
    strategy: tf.distribute.Strategy, manifest: dict[str, Any], data_dir: str, split: str, expected: int, *,
    batch_size: int, transfer: str, threshold: float, progress: bool, extra_sidecar: dict[str, Any] | None = None,
) -> tuple[report_lib.Scores, Callable[[], None]]:
    """Predicts the split with one loaded model and checks the rows; returns its report entry and
    the call that writes its files (run once every model has predicted)."""
    model, policy, image_size = loaded
    outputs = predict_split(model, strategy, data_dir, split, batch_size, image_size,
                            total=expected, progress=progress, desc=name, uint8_gray=transfer == options.UINT8)
    check_one_row_per_record(outputs.ids, expected, data_dir, split)
    context = {"crop": manifest.get("config", {}).get("crop"), "train_crop": run_folder.train_crop(model_dir, config)}
    calibrated, temperature = _calibrated(model_dir, outputs.softmax[:, 1])
    if temperature is None:
        logging.warning("%s", run_folder.no_temperature_note(model_dir))
    meta = read_patient_columns(data_dir, split, outputs.ids)
    write = functools.partial(_write_outputs, path, outputs, {
        "backbone": config["backbone"], "model_dir": os.path.abspath(model_dir),
        "data_dir": os.path.abspath(data_dir), "split": split, "records": expected,
        "image_size": image_size, "strategy": distribute.strategy_name(strategy),
        "replicas": strategy.num_replicas_in_sync, "precision": policy, "transfer": transfer,
        run_folder.TEMPERATURE: temperature, **context, **(extra_sidecar or {}),
    }, calibrated, meta)
    # The report scores what is handed over, served and thresholded: p_abnormal, after the run's temperature.
    return report_lib.Scores(name, outputs.labels, calibrated, threshold, {
        **context, "source": path, run_folder.TEMPERATURE: temperature, report_lib.SCORED: PROB},
        uncalibrated=None if temperature is None else outputs.softmax[:, 1], meta=meta,
        validation=_validation(model_dir), ids=outputs.ids), write


def run_prediction(config: settings.PredictConfig, split: str | None = None, data_dir: str | None = None,
                   extra_sidecar: dict[str, Any] | None = None) -> PredictionResult:
    """Predicts a split with each of `config.model_dir`'s saved models; writes prediction files and a report.

    With several models, or with `config.ensemble` (the blend then goes to `config.output`), each
    writes `<output stem>.<backbone>.csv` (see `output_paths`).

    Args:
      split, data_dir: what to predict when not `config.split` of `config.data_dir` (a resolved
        split, or the temporary shard folder of raw images).
      extra_sidecar: more fields for each prediction file's sidecar (e.g. the raw images' origin).

    Returns:
      The files written (only the chief writes under multi-worker strategies).

    Raises:
      UserInputError: a missing or unusable model folder, shard folder or split, a model whose image
        size differs from the shards', or a split whose shards disagree with its manifest.
    """
    model_dirs, output = config.model_dir, config.output
    threshold, report_dir = config.threshold, config.report_dir
    data_dir, split = data_dir or config.data_dir, split or config.split
    batch_size, strategy, precision = config.global_batch_size, config.strategy, config.precision
    transfer, bootstrap, progress = config.transfer, config.bootstrap, config.progress
    per_model, other_labels_csv = config.ensemble is not None, config.other_labels_csv
    threshold = settings.SINGLE_MODEL_THRESHOLD if threshold is None else check_threshold(threshold)
    manifest, expected, configs = preflight.check_prediction_inputs(
        model_dirs, data_dir, split, output, report_dir, per_model=per_model, other_labels_csv=other_labels_csv)
    other = None if other_labels_csv is None else agreement.load_other_labels(other_labels_csv)
    chosen = distribute.resolve_strategy(strategy)  # before other TF ops: multi-worker set-up
    transfer = distribute.resolve_transfer(transfer)
    paths = preflight.output_paths(output, preflight.model_names(model_dirs, configs), per_model=per_model)
    chief = distribute.is_chief(chosen)
    loaded = _load_models(model_dirs, configs, manifest, data_dir, chosen, precision)
    predicted = [
        _predict_model(model_dir, config, name, paths[name], model, chosen, manifest, data_dir, split, expected,
                       batch_size=batch_size, transfer=transfer, threshold=threshold, progress=progress,
                       extra_sidecar=extra_sidecar)
        for model_dir, config, name, model in zip(model_dirs, configs, paths, loaded)
    ]
    scores = [entry for entry, _ in predicted]
    metrics = other_result = None
    report_dir = report_dir or settings.default_report_dir(output)
    with all_or_none():  # a failure part way leaves none of the files below (and no model's alone)
        for _, write in predicted if chief else ():
            write()
        if chief and report_lib.has_known_labels(scores[0].labels):
            metrics = report_lib.write_report(report_dir, scores, bootstrap=bootstrap)
        if chief and other is not None:
            other_result = agreement.write_other_labels(report_dir, other, scores[0].ids, scores, bootstrap)
        if metrics or other_result:
            html_report.write_index(report_dir)
    return PredictionResult(outputs=paths, records=expected, metrics=metrics,
                            report_dir=report_dir if metrics or other_result else None, other_labels=other_result)


def summary(result: PredictionResult) -> str:
    """Returns the files a prediction run wrote, with the report table when there is one."""
    lines = [f"{name}: {result.records} predictions -> {path}" for name, path in result.outputs.items()]
    if result.metrics is not None:
        lines += ["", report_lib.format_table(result.metrics)]
    if result.other_labels is not None:
        lines += ["", agreement.format_other_labels(result.other_labels)]
    if result.report_dir is not None:
        lines += ["", f"report: {result.report_dir}"]
    return "\n".join(lines)
