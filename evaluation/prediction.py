"""Batch prediction behind predict.py: per model, a prediction file and the model's outputs as `.npy`
(N, 2) softmax, or (N, 16) with the findings' sigmoids after it."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import numpy as np
import tensorflow as tf
import tqdm
from absl import logging

from contracts import atomic, run_folder, storage
from contracts.atomic import atomic_path
from contracts.errors import UserInputError
from contracts.labels import FINDINGS
from contracts.manifest import ShardFolder
from contracts.output_names import CLEARED, PRIORITIZED, PROB, REVIEW, SPREAD, TRIAGE, TTA
from contracts.prediction_files import STUDY, FindingColumns, few, sidecar_path, write_predictions
from contracts.run_folder import RunFolder
from evaluation import agreement, html_report, preflight, settings, studies, triage
from evaluation import report as report_lib
from evaluation.blend import check_threshold
from models import calibration, distribute, tta
from models.front import with_uint8_front
from models.heads import split_outputs
from models.saved import load_classifier
from pipeline import input_pipeline, options
from pipeline.input_pipeline import gray_to_rgb_float
from pipeline.patient_columns import read_patient_columns

# Ids cross workers as fixed-width byte rows, because collectives cannot gather strings.
MAX_ID_BYTES = 256


@dataclasses.dataclass(frozen=True)
class SplitOutputs:
    """One model's outputs over a split, rows sorted by id; labels -1 where unknown."""

    ids: np.ndarray
    softmax: np.ndarray
    labels: np.ndarray
    findings: np.ndarray | None = None  # (N, 14) sigmoids; None without the findings head
    finding_labels: np.ndarray | None = None  # (N, 14) 1/0, -1 where a record's findings are unknown
    views: np.ndarray | None = None  # (N, V) each TTA view's P(abnormal), uncalibrated; None: the image alone

    @property
    def outputs(self) -> np.ndarray:  # what the model computed: (N, 2), or (N, 16) with the findings
        return self.softmax if self.findings is None else np.concatenate([self.softmax, self.findings], 1)


@dataclasses.dataclass(frozen=True)
class PredictionResult:
    """What a prediction run wrote: model name -> CSV path, rows per file, metrics and report (or None)."""

    outputs: dict[str, str]
    records: int
    metrics: dict[str, Any] | None
    report_dir: str | None
    other_labels: dict[str, Any] | None = None
    triage_lines: dict[str, str] = dataclasses.field(default_factory=dict)  # model name -> a line
    study_lines: dict[str, str] = dataclasses.field(default_factory=dict)  # model name -> a line


def with_precision(model, precision: str):
    """(`model` cloned under the dtype policy `precision` unless already so, the policy's name)."""
    import keras

    from models.precision import as_policy

    previous = keras.mixed_precision.global_policy()
    try:
        policy = distribute.resolve_precision(precision)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    return as_policy(model, policy), policy


def check_one_row_per_record(ids: np.ndarray, shards: ShardFolder, split: str) -> None:
    """Refuses duplicate image ids, or a row count other than the manifest's for `split`."""
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise UserInputError(
            f"split {split!r} of {shards.path}: {int((counts > 1).sum())} image id(s) occur in several "
            f"records: {few(unique[counts > 1])}; rebuild the shards so that each image is stored once")
    expected = shards.split(split).records
    if len(ids) != expected:
        raise UserInputError(
            f"split {split!r}: {shards.manifest_path} lists {expected} records but its shards hold "
            f"{len(ids)}; the shards changed after the build (partial copy or mixed builds): rebuild or "
            "recopy the folder")


def _forward(model, views: int, uint8_gray: bool) -> Callable[[tf.Tensor], tf.Tensor]:
    """images -> float32 outputs: (B, W) the model's own (views == 1), else (B, views, W) one per TTA view."""
    if views == 1:
        front = with_uint8_front(model) if uint8_gray else model
        return lambda images: tf.cast(front(images, training=False), tf.float32)

    def over_views(images: tf.Tensor) -> tf.Tensor:
        # The views act on the float RGB pixels the model sees: a zoom interpolated in uint8 would round.
        pixels = tf.ensure_shape(gray_to_rgb_float(images), [*images.shape[:-1], 3]) if uint8_gray else images
        # One call per view, each on the batch a single view gets: memory as without TTA, and view 0's
        # outputs are those of --tta=1.
        return tf.stack([tf.cast(model(view, training=False), tf.float32)
                         for view in tf.unstack(tta.views(pixels, views))], axis=1)
    return over_views


def _replica_outputs(forward, batch: dict[str, tf.Tensor], rows: int) -> dict[str, tf.Tensor]:
    # Every replica pads its share to `rows` and marks the real ones: last batches may be empty (some
    # layers fail on those), gathers need equal shapes, and one static shape traces the step once.
    count = tf.shape(batch["label"])[0]

    def pad(tensor):
        padded = tf.pad(tensor, [[0, rows - count]] + [[0, 0]] * (len(tensor.shape) - 1))
        return tf.ensure_shape(padded, [rows] + tensor.shape[1:])

    id_bytes = tf.io.decode_raw(batch["image_id"], tf.uint8, fixed_length=MAX_ID_BYTES)
    return {"softmax": forward(pad(batch["image"])),
            "id_bytes": pad(tf.cast(id_bytes, tf.int32)),
            "id_length": pad(tf.strings.length(batch["image_id"])),
            "label": pad(tf.cast(batch["label"], tf.int32)),
            "findings": pad(tf.where(batch["findings_known"][:, None] > 0, batch["findings"], -1)),
            "valid": tf.cast(tf.range(rows) < count, tf.int32)}


def _decode_ids(id_bytes: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    too_long = lengths > MAX_ID_BYTES
    if too_long.any():
        raise UserInputError(
            f"{too_long.sum()} image id(s) are longer than {MAX_ID_BYTES} bytes; shorten the file names")
    rows = id_bytes.astype(np.uint8)
    return np.array([bytes(row[:n]).decode("utf-8") for row, n in zip(rows, lengths)], dtype=object)


def predict_split(model, strategy: tf.distribute.Strategy, shards: ShardFolder, split: str,
                  batch_size: int, *, progress: str | None = "predict", uint8_gray: bool = False,
                  views: int = 1) -> SplitOutputs:
    """Every record's outputs of `split` (rows sorted by id, on every worker), one row per record; with
    `views` > 1, the mean of the model's outputs over the first `views` of `models.tta.TRANSFORMS`.
    `progress` labels the chief's progress bar (None: no bar)."""
    rows = distribute.per_replica_batch(batch_size, strategy, "batch_size")
    dataset = strategy.distribute_datasets_from_function(
        lambda context: input_pipeline.make_eval_dataset(shards, split, batch_size, input_context=context,
                                                         uint8_gray=uint8_gray))
    forward = _forward(model, views, uint8_gray)
    across_workers = distribute.strategy_name(strategy) == "multi_worker"

    # reduce_retracing: the last, partial batch has its own input shape.
    @tf.function(reduce_retracing=True)
    def step(batch):
        per_replica = strategy.run(lambda b: _replica_outputs(forward, b, rows), args=(batch,))
        if across_workers:
            return {k: strategy.gather(v, axis=0) for k, v in per_replica.items()}
        # One host holds every replica's result: concatenating them needs no collective op (which
        # would also clash with the collectives of another strategy created earlier in the process).
        return {k: tf.concat(strategy.experimental_local_results(v), axis=0) for k, v in per_replica.items()}

    parts = []
    bar = tqdm.tqdm(total=shards.split(split).records, unit="img", desc=progress,
                    disable=not (progress and distribute.is_chief(strategy)))
    try:
        with bar:
            for batch in dataset:
                outputs = {k: v.numpy() for k, v in step(batch).items()}
                valid = outputs.pop("valid").astype(bool)
                parts.append({k: v[valid] for k, v in outputs.items()})
                bar.update(int(valid.sum()))
    except tf.errors.DataLossError as err:
        raise input_pipeline.corrupt_data_error(shards, (split,), err) from None
    shape = (int(model.output_shape[-1]),) if views == 1 else (views, int(model.output_shape[-1]))
    merged = {k: np.concatenate([p[k] for p in parts]) if parts else np.zeros((0, *w)) for k, w in
              (("softmax", shape), ("id_bytes", (MAX_ID_BYTES,)), ("id_length", (1,)), ("label", (1,)),
               ("findings", (len(FINDINGS),)))}
    ids = _decode_ids(merged["id_bytes"], merged["id_length"].reshape(-1))
    check_one_row_per_record(ids, shards, split)
    order = np.argsort(ids, kind="stable")
    outputs, per_view = merged["softmax"].reshape(-1, *shape)[order], None
    if views > 1:  # p_uncalibrated is the mean softmax over the views, each finding's sigmoid likewise
        outputs, per_view = outputs.astype(np.float64).mean(axis=1), outputs[:, :, 1].astype(np.float64)
    softmax, findings = split_outputs(outputs.astype(np.float32))
    labels = merged["label"].reshape(-1)[order].astype(np.int64)
    finding_labels = None if findings is None else merged["findings"][order].astype(np.int64)
    return SplitOutputs(ids[order], softmax, labels, findings, finding_labels, per_view)


def _calibrated(run: RunFolder, probs: np.ndarray) -> np.ndarray:
    return probs.astype(np.float64) if run.temperature is None else calibration.apply_temperature(
        probs, run.temperature)


@dataclasses.dataclass(frozen=True)
class _Job:  # what every model of one prediction run shares

    inputs: preflight.Inputs
    strategy: tf.distribute.Strategy
    batch_size: int
    transfer: str
    threshold: float
    progress: bool
    extra_sidecar: dict[str, Any]
    views: int  # --tta
    triage_settings: triage.TriageSettings
    studies: bool  # a studies file beside each model's file (not with --ensemble: the blend's alone)


def _model_triage(job: _Job, run: RunFolder, name: str, calibrated: np.ndarray,
                  spread: np.ndarray | None) -> tuple[triage.Triage | None, np.ndarray, dict[str, Any], str]:
    """(the run's own triage, None without one; each row's group; the sidecar's record; a summary line)."""
    fitted = triage.run_triage(run, job.triage_settings)
    groups = triage.groups(calibrated, fitted, spread)
    counts = " / ".join(f"{int((groups == group).sum())} {group}" for group in (CLEARED, REVIEW, PRIORITIZED))
    if fitted is None:
        why = (f"{os.path.join(run.path, run_folder.VAL_PREDICTIONS)} is missing or has no labels, so no "
               f"triage was fitted: every row is {REVIEW}")
        logging.warning("%s: %s", name, why)
        return None, groups, {"why": why}, f"{name} triage: {counts}; {why}"
    return fitted, groups, triage.to_record(fitted), (
        f"{name} triage (approximate: fitted on its validation predictions): {counts}; "
        f"{triage.describe(fitted.rule_out, 'rule-out')}; {triage.describe(fitted.rule_in, 'rule-in')}")


def _study_table(job: _Job, name: str, path: str, meta: dict[str, np.ndarray], outputs: SplitOutputs,
                 handed: tuple[np.ndarray, np.ndarray]) -> tuple[Any, dict[str, Any], str | None]:
    """(the studies table of the file at `path`, None without one; the sidecar's fields; a summary line).
    Drops `meta`'s STUDY column when the records carry no study id. `handed`: (p_abnormal, triage)."""
    why = studies.unrecorded(job.inputs.shards, meta)
    if why is not None:
        meta.pop(STUDY, None)
        return None, {studies.SIDECAR_KEY: {"why": why}}, why
    if not job.studies:
        return None, {}, None
    known = outputs.labels >= 0
    table = studies.study_table(outputs.ids, meta[STUDY], *handed, outputs.labels if known.any() else None,
                                job.extra_sidecar.get("skipped", ()))
    return table, {studies.SIDECAR_KEY: studies.sidecar_record(path)}, (
        f"{name}: {len(table)} studies -> {studies.studies_path(path)}")


def _predict_model(job: _Job, run: RunFolder, name: str, path: str, loaded: tuple[Any, str]
                   ) -> tuple[report_lib.Scores, Callable[[], None], tuple[str, str | None]]:
    """One loaded model's report entry, the call that writes its files (once all have predicted) and
    the summary lines of its triage and its studies."""
    (model, policy), shards, split = loaded, job.inputs.shards, job.inputs.split
    outputs = predict_split(model, job.strategy, shards, split.name, job.batch_size,
                            progress=name if job.progress else None, uint8_gray=job.transfer == options.UINT8,
                            views=job.views)
    context = {"crop": shards.crop, "train_crop": run.crop}
    calibrated, temperature = _calibrated(run, outputs.softmax[:, 1]), run.temperature
    if temperature is None:
        logging.warning("%s", run.no_temperature_note())
    # The spread of the views' probabilities after the run's temperature, whose mean p_abnormal calibrates.
    spread = None if outputs.views is None else _calibrated(run, outputs.views).std(axis=1)
    fitted, groups, triage_record, triage_line = _model_triage(job, run, name, calibrated, spread)
    meta = read_patient_columns(shards, split.name, outputs.ids, study=shards.studies_recorded)
    study_table, study_fields, study_line = _study_table(job, name, path, meta, outputs, (calibrated, groups))
    findings = None
    if outputs.findings is not None:
        calibrated_findings, _ = calibration.calibrate_findings(outputs.finding_labels, outputs.findings,
                                                               run.finding_temperatures())
        known = (outputs.finding_labels >= 0).any()
        findings = FindingColumns(calibrated_findings, outputs.findings.astype(np.float64),
                                  outputs.finding_labels if known else None)
    sidecar = {"backbone": run.backbone, "model_dir": os.path.abspath(run.path),
               "data_dir": storage.abspath(shards.path), "split": split.name, "records": split.records,
               "image_size": shards.image_size, "strategy": distribute.strategy_name(job.strategy),
               "replicas": job.strategy.num_replicas_in_sync, run_folder.PREDICTED_UNDER: policy,
               "transfer": job.transfer,
               run_folder.TEMPERATURE: temperature, **context, **job.extra_sidecar, TRIAGE: triage_record,
               **study_fields}
    if findings is not None:
        sidecar[run_folder.FINDING_TEMPERATURES] = dict(zip(FINDINGS, run.finding_temperatures()))
    if job.views > 1:
        sidecar[TTA] = {"views": job.views, "transforms": list(tta.TRANSFORMS[:job.views])}
    columns = {**meta, **({} if spread is None else {SPREAD: spread}), TRIAGE: groups}

    def write() -> None:
        known = outputs.labels >= 0
        write_predictions(path, outputs.ids, calibrated, outputs.labels if known.any() else None, sidecar,
                          uncalibrated=outputs.softmax[:, 1], meta=columns, findings=findings)
        with atomic_path(os.path.splitext(path)[0] + ".npy") as tmp:
            np.save(tmp, outputs.outputs)
        studies.write_table(path, study_table)  # None: removes a stale one

    # The report scores what is handed over, served and thresholded: p_abnormal, after the temperature.
    scores = report_lib.Scores(name, outputs.labels, calibrated, job.threshold, {
        **context, **{key: sidecar[key] for key in report_lib.SCORED_ON}, "source": path,
        run_folder.TEMPERATURE: temperature, report_lib.SCORED: PROB},
        uncalibrated=None if temperature is None else outputs.softmax[:, 1], meta=meta,
        validation=triage.run_validation(run), ids=outputs.ids,
        finding_labels=None if findings is None else outputs.finding_labels,
        finding_probs=None if findings is None else findings.probs, triage=fitted, spread=spread)
    return scores, write, (triage_line, study_line)


def run_prediction(config: settings.PredictConfig, split: str | None = None, data_dir: str | None = None,
                   extra_sidecar: dict[str, Any] | None = None,
                   transaction: atomic.Transaction | None = None) -> PredictionResult:
    """Predicts `split` of `data_dir` (default: the config's; None: the one the manifest makes
    unambiguous) with each of `config.model_dir`'s models into `config.output` (several models, or
    an ensemble: `<stem>.<name>.csv` each) and, when labels are known, a report, rescored against
    `config.other_labels_csv` when given. `extra_sidecar` goes into each sidecar; `transaction` is
    the caller's, for its own files. Only the chief writes under multi-worker strategies."""
    model_dirs, output = config.model_dir, config.output
    threshold, report_dir = config.threshold, config.report_dir
    data_dir, split = data_dir or config.data_dir, split or config.split
    batch_size, strategy, precision = config.global_batch_size, config.strategy, config.precision
    transfer, bootstrap, progress = config.transfer, config.bootstrap, config.progress
    per_model, other_labels_csv = config.ensemble is not None, config.other_labels_csv
    threshold = settings.SINGLE_MODEL_THRESHOLD if threshold is None else check_threshold(threshold)
    inputs = preflight.open_prediction_inputs(model_dirs, data_dir, split, output, report_dir,
                                              per_model=per_model, other_labels_csv=other_labels_csv)
    other = None if other_labels_csv is None else agreement.load_other_labels(other_labels_csv)
    chosen = distribute.resolve_strategy(strategy)  # before other TF ops: multi-worker set-up
    job = _Job(inputs, chosen, batch_size, distribute.resolve_transfer(transfer), threshold, progress,
               extra_sidecar or {}, config.tta, triage.settings_of(config), not per_model)
    paths = preflight.output_paths(output, preflight.model_names(inputs.runs), per_model=per_model)
    loaded = []  # every model before any predicting: a broken folder fails before the long work
    for run in inputs.runs:
        with chosen.scope():
            loaded.append(with_precision(load_classifier(run), precision))
    predicted = [_predict_model(job, run, name, paths[name], model)
                 for run, name, model in zip(inputs.runs, paths, loaded)]
    scores = [entry for entry, _, _ in predicted]
    chief, metrics, other_result = distribute.is_chief(chosen), None, None
    report_dir = report_dir or settings.default_report_dir(output)
    with transaction or atomic.Transaction(output) as tx:  # a failure part way leaves none of these files
        if chief:
            tx.guard(report_dir, *paths.values(), *map(sidecar_path, paths.values()),
                     *(os.path.splitext(path)[0] + ".npy" for path in paths.values()),
                     *map(studies.studies_path, paths.values()))
        for _, write, _ in predicted if chief else ():
            write()
        if chief and report_lib.has_known_labels(scores[0].labels):
            metrics = report_lib.write_report(report_dir, scores, bootstrap=bootstrap)
        if chief and other is not None:
            other_result = agreement.write_other_labels(report_dir, other, scores[0].ids, scores, bootstrap)
        if metrics or other_result:
            html_report.write_index(report_dir)
    written = report_dir if metrics or other_result else None
    lines = [line for _, _, line in predicted]
    return PredictionResult(paths, inputs.split.records, metrics, written, other_result,
                            dict(zip(paths, (triage_line for triage_line, _ in lines))),
                            {name: line for name, (_, line) in zip(paths, lines) if line is not None})


def summary(result: PredictionResult) -> str:
    lines = [f"{name}: {result.records} predictions -> {path}" for name, path in result.outputs.items()]
    lines += list(result.triage_lines.values())
    lines += list(dict.fromkeys(result.study_lines.values()))  # "no studies file" once, not per model
    if result.metrics is not None:
        lines += ["", report_lib.format_table(result.metrics)]
    if result.other_labels is not None:
        lines += ["", agreement.format_other_labels(result.other_labels)]
    if result.report_dir is not None:
        lines += ["", f"report: {result.report_dir}"]
    return "\n".join(lines)
