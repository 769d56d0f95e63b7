"""ensemble.py's run: join prediction files on image id, calibrate each member (its ensemble
temperature, 1 unless fitted with --fit_on, never its run's: nothing is calibrated twice), blend,
threshold, and write the submission, the blend with its sidecar (the ensemble file) and the report."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import numpy as np
import pandas as pd
from absl import logging

from contracts import atomic, ensemble_file, storage
from contracts.atomic import atomic_path, json_ready, write_json
from contracts.errors import (
    UserInputError,
    check_no_overwrite,
    check_output_file,
    check_output_folder,
    repeat_hint,
)
from contracts.output_names import PROB, PROB_UNCALIBRATED, TRIAGE, finding_uncalibrated, views
from contracts.prediction_files import (
    PATIENT,
    FindingColumns,
    Predictions,
    align,
    read_predictions,
    sidecar_path,
    write_predictions,
)
from contracts.run_folder import MODEL_PRECISION, PREDICTED_UNDER
from evaluation import agreement, ensemble_triage, finding_blend, html_report, settings, triage
from evaluation import blend as blend_lib
from evaluation import report as report_lib
from evaluation.statistics import Scores, paired_auroc_difference
from models import calibration
from models.metrics import auroc_or_nan

ENSEMBLE = "ensemble"  # the ensemble's key in metrics.json
BLENDED = f"each input's {PROB_UNCALIBRATED} after its temperature here"  # in the blend's sidecar
BLENDED_FINDINGS = (f"each input's {finding_uncalibrated('<finding>')} after its temperature for that "
                    "finding, with that finding's weights")  # in the blend's sidecar


@dataclasses.dataclass(frozen=True)
class EnsembleResult:
    """What an ensemble run chose and wrote: weights by model name (in --predictions order), the
    fit (None: nothing fitted), the metrics and report_dir (None without known labels), the gain
    over the member best on validation and the rescoring against --other_labels_csv."""

    submission: str
    probabilities: str
    weights: dict[str, float]
    threshold: float
    fit: blend_lib.Fit | None
    metrics: dict[str, Any] | None
    report_dir: str | None
    gain: dict[str, Any] | None = None
    other_labels: dict[str, Any] | None = None
    findings: finding_blend.FindingBlend | None = None  # None: the findings were not blended
    triage: list[str] = dataclasses.field(default_factory=list)  # the printed triage lines


def model_names(files: Sequence[Predictions]) -> list[str]:
    """One report name per file: its backbone when that is unique, else its file name stem."""
    backbones = [f.backbone for f in files]
    names = [f.backbone if f.backbone is not None and backbones.count(f.backbone) == 1
             else os.path.splitext(os.path.basename(f.path))[0] for f in files]
    # Same stems from different folders: number them so every entry keeps its own row.
    return [name if names.count(name) == 1 and name != ENSEMBLE else f"{name}#{i + 1}"
            for i, name in enumerate(names)]


def _common(values: Sequence[str | None]) -> str | None:
    known = sorted({v for v in values if v is not None})
    if not known:
        return None
    return known[0] if len(known) == 1 else "mixed: " + ", ".join(known)


def _check_fit_pairs(files: Sequence[Predictions], fit_files: Sequence[Predictions],
                     flag: str = "fit_on") -> None:
    what = "calibration" if flag == "calibrate_on" else "validation"
    if len(fit_files) != len(files):
        raise UserInputError(
            f"--{flag} has {len(fit_files)} file(s) but --predictions has {len(files)}; pass one {what} "
            "file per prediction file, in the same order"
        )
    for file, fit_file in zip(files, fit_files):
        if file.backbone and fit_file.backbone and file.backbone != fit_file.backbone:
            raise UserInputError(
                f"--{flag}: {fit_file.path} is from {fit_file.backbone} but its partner {file.path} is from "
                f"{file.backbone}; list {what} files in the same order as --predictions"
            )
        if flag == "calibrate_on" and views(file.sidecar) != views(fit_file.sidecar):
            raise UserInputError(
                f"--calibrate_on: {fit_file.path} averages {views(fit_file.sidecar)} test-time view(s) but "
                f"{file.path} {views(file.sidecar)}; predict both with the same --tta")
        policies = [(f.sidecar or {}).get(PREDICTED_UNDER) for f in (fit_file, file)]
        if all(policies) and policies[0] != policies[1]:
            raise UserInputError(
                f"--{flag}: {fit_file.path} was predicted under {policies[0]} but {file.path} under "
                f"{policies[1]}; predict both with the same --precision ({MODEL_PRECISION}, the default, is "
                "what export.py serves)")
    shared = set(fit_files[0].ids) & set(files[0].ids)
    if shared:  # allowed (an ensemble studied on validation alone), but never unsaid
        fitted = "the triage thresholds are" if flag == "calibrate_on" else (
            "the weights, threshold and temperatures are")
        logging.warning("--%s shares %d of its %d images with --predictions (e.g. %s): %s fitted on images "
                        "the report then scores, so its numbers are optimistic; fit on images the report "
                        "does not score to score test honestly", flag, len(shared), len(fit_files[0].ids),
                        sorted(shared)[0], fitted)


@dataclasses.dataclass(frozen=True)
class _Choice:
    weights: np.ndarray
    threshold: float
    temperatures: list[float]  # one per model, 1 where none was fitted
    fit: blend_lib.Fit | None
    validation: tuple[np.ndarray, np.ndarray] | None  # (labels, calibrated member probs (N, M))
    findings: finding_blend.FindingBlend | None = None  # None: the findings are not blended


def _choose(files: Sequence[Predictions], weights: Sequence[float] | None, threshold: float | None,
            fit_on: Sequence[str] | None, fit_step: float, findings: bool) -> _Choice:
    fixed_weights = None if weights is None else blend_lib.normalise_weights(weights, len(files))
    fixed_threshold = None if threshold is None else blend_lib.check_threshold(threshold)
    if not fit_on:
        chosen = fixed_weights if fixed_weights is not None else blend_lib.reference_weights(files)
        return _Choice(chosen, settings.ENSEMBLE_THRESHOLD if fixed_threshold is None else fixed_threshold,
                       [1.0] * len(files), None, None, finding_blend.binary(chosen) if findings else None)
    fit_files = [read_predictions(path) for path in fit_on]
    _check_fit_pairs(files, fit_files)
    validation = align(fit_files)
    labels = blend_lib.check_fit_labels(validation.labels, fit_on, validation.ids)  # both classes
    # One order: each member's temperature on its own validation predictions, then the weights and
    # threshold on the calibrated members.
    temperatures = [calibration.fit_temperature(labels, column) for column in validation.uncalibrated.T]
    members = blend_lib.calibrate_members(validation.uncalibrated, temperatures)
    fit = blend_lib.fit(members, labels, step=fit_step, weights=fixed_weights, threshold=fixed_threshold)
    # Each finding the same way, on the same files (never the predictions': nothing calibrated twice).
    per_finding = (finding_blend.choose(validation, fit.weights, fit.fitted_weights, fit_step)
                   if findings else None)
    return _Choice(fit.weights, fit.threshold, temperatures, fit, (labels, members), per_finding)


def _write_submission(path: str, ids: np.ndarray, decisions: np.ndarray, id_column: str,
                      label_column: str) -> None:
    if not id_column or not label_column or id_column == label_column:
        raise UserInputError(
            f"submission columns {id_column!r} and {label_column!r} must be two different non-empty names"
        )
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as tmp:
        pd.DataFrame({id_column: ids, label_column: decisions}).to_csv(tmp, index=False)


def _scores(files: Sequence[Predictions], names: Sequence[str], aligned, members: np.ndarray,
            blended: np.ndarray, choice: _Choice, findings: tuple[np.ndarray, np.ndarray] | None,
            fitted: ensemble_triage.Fitted) -> list[Scores]:
    """Every member as it enters the blend (after its temperature) at the ensemble's threshold, so
    the rows compare, then the ensemble; each finding likewise (`findings`: (N, M, 14) members, (N, 14)
    blend), None: not blended)."""
    finding_labels = None
    if findings is not None:  # none known: the report's one line says the split has no finding labels
        finding_labels = aligned.finding_labels
        if finding_labels is None:
            finding_labels = np.full(findings[1].shape, -1, dtype=np.int64)
    val = choice.validation
    blended_val = None if val is None else (val[0], blend_lib.blend(val[1], choice.weights))
    scores = []
    for m, (name, file) in enumerate(zip(names, files)):
        temperature = choice.temperatures[m]
        scored = PROB_UNCALIBRATED if temperature == 1.0 else f"{PROB_UNCALIBRATED} at T={temperature:.4g}"
        scores.append(Scores(name, aligned.labels, members[:, m], choice.threshold, {
            **{key: (file.sidecar or {}).get(key) for key in report_lib.SCORED_ON},
            "crop": file.crop, "train_crop": (file.sidecar or {}).get("train_crop"), "source": file.path,
            "temperature": temperature, report_lib.SCORED: scored},
            uncalibrated=None if temperature == 1.0 else aligned.uncalibrated[:, m], meta=aligned.meta,
            validation=None if val is None else (val[0], val[1][:, m]), finding_labels=finding_labels,
            finding_probs=None if findings is None else findings[0][:, m], triage=fitted.members[m],
            spread=None if aligned.spreads is None else aligned.spreads[:, m]))
    scores.append(Scores(ENSEMBLE, aligned.labels, blended, choice.threshold, {
        **{key: _common([(f.sidecar or {}).get(key) for f in files]) for key in ("split", "data_dir")},
        "crop": _common([f.crop for f in files]),
        "train_crop": _common([(f.sidecar or {}).get("train_crop") for f in files]), report_lib.SCORED: PROB,
    }, meta=aligned.meta, validation=blended_val, finding_labels=finding_labels,
        finding_probs=None if findings is None else findings[1], triage=fitted.blend,
        spread=triage.blend_spread(members, choice.weights, aligned.spreads)))
    return scores


def _gain(report_dir: str, names: Sequence[str], aligned, members: np.ndarray, blended: np.ndarray,
          validation: tuple[np.ndarray, np.ndarray] | None, bootstrap: int) -> dict[str, Any] | None:
    """The ensemble against the member best on validation (never chosen on the reported records):
    a paired bootstrap difference of AUROC, written to report_dir/GAIN_FILE."""
    if validation is None or len(names) < 2:
        return None
    validation_aurocs = [auroc_or_nan(validation[0], validation[1][:, m]) for m in range(len(names))]
    if all(np.isnan(validation_aurocs)):
        return None
    best = int(np.nanargmax(validation_aurocs))
    known = aligned.labels >= 0
    labels, single, patients = aligned.labels[known], members[known, best], aligned.meta.get(PATIENT)
    gain = json_ready({
        "best_single": names[best], "chosen_on": "validation AUROC",
        "validation_aurocs": dict(zip(names, validation_aurocs)),
        "ensemble_auroc": auroc_or_nan(labels, blended[known]),
        "best_single_auroc": auroc_or_nan(labels, single),
        **paired_auroc_difference(labels, blended[known], single, bootstrap,
                                  None if patients is None else patients[known])})
    write_json(os.path.join(report_dir, report_lib.GAIN_FILE), gain)
    return gain


def _with_policies(files: Sequence[Predictions], *paired: Sequence[str] | None) -> list[Predictions]:
    """`files` whose sidecars name the one policy that computed each member's files (its prediction,
    --fit_on and --calibrate_on files; they never differ: _check_fit_pairs), None when one of them
    records none (a predict.py or train.py from before): what the ensemble file records per member."""
    def policy(path: str) -> str | None:
        sidecar = storage.read_json_or_none(sidecar_path(path))
        return sidecar.get(PREDICTED_UNDER) if isinstance(sidecar, dict) else None

    found = []
    for index, file in enumerate(files):
        policies = {policy(file.path), *(policy(paths[index]) for paths in paired if paths)}
        combined = policies.pop() if len(policies) == 1 else None
        found.append(dataclasses.replace(file, sidecar={**(file.sidecar or {}), PREDICTED_UNDER: combined}))
    return found


def _write_blend(path: str, files: Sequence[Predictions], names: Sequence[str], aligned, blended: np.ndarray,
                 choice: _Choice, fit_on: Sequence[str] | None, fit_step: float,
                 report_dir: str | None, blended_findings: np.ndarray | None,
                 triaged: tuple[ensemble_triage.Fitted, dict[str, np.ndarray]]) -> None:
    """Writes the blended probabilities (each finding's too, when blended) and their sidecar, the
    ensemble file (contracts/ensemble_file.py)."""
    fit, per_finding = choice.fit, choice.findings
    # p_<finding> and label_<finding> only: like p_abnormal, the blend is handed over as it is.
    findings = (None if blended_findings is None
                else FindingColumns(blended_findings, None, aligned.finding_labels))
    fitted, triage_columns = triaged
    write_predictions(path, aligned.ids, blended, aligned.labels, findings=findings, meta=triage_columns,
                      sidecar={
        "backbone": ENSEMBLE,
        "schema_version": ensemble_file.SCHEMA_VERSION,
        "inputs": ensemble_file.member_records(
            names, [f.sidecar for f in files], [f.path for f in files], choice.weights, choice.temperatures,
            *((None, None) if per_finding is None else (per_finding.weights, per_finding.temperatures))),
        "weights": {name: float(w) for name, w in zip(names, choice.weights)},
        "temperatures": dict(zip(names, choice.temperatures)),
        "blended": BLENDED,
        "blended_findings": None if per_finding is None else BLENDED_FINDINGS,
        "order": calibration.ORDER,
        "threshold": choice.threshold,
        "fit": None if fit is None else {
            "criterion": blend_lib.CRITERION, "files": list(fit_on), "step": fit_step,
            "temperatures": "fitted per member on its validation file (minimum negative log-likelihood)",
            "fitted_weights": fit.fitted_weights, "fitted_threshold": fit.fitted_threshold,
            "balanced_accuracy": fit.balanced_accuracy, "brier": fit.brier, "records": fit.records,
            **({} if per_finding is None else {"finding_criterion": blend_lib.AUROC_CRITERION,
                                                "findings": per_finding.choices}),
        },
        "crop": _common([f.crop for f in files]),
        "records": len(aligned.ids),
        ensemble_file.REPORT_DIR: None if report_dir is None else os.path.abspath(report_dir),
        # The blend's triage (ensemble_file.Ensemble.triage), None when none was fitted ("triage_why").
        ensemble_file.TRIAGE: None if fitted.blend is None else triage.to_record(fitted.blend),
        "triage_why": fitted.why,
    })


def check_outputs_spare_inputs(output: str, predictions: Sequence[str], fit_on: Sequence[str] | None,
                               other_labels_csv: str | None) -> None:
    """Refuses an --output whose files (submission, blend, sidecar, ensemble file) would replace a
    file the run reads (a prediction or --fit_on file, its sidecar, the labels CSV)."""
    writes = [("output", output, path) for path in
              (output, ensemble_file.blend_path(output), ensemble_file.ensemble_path(output))]
    reads = [(f"--{flag} reads{'' if path == csv else f' (the sidecar of {csv})'}", path)
             for flag, csvs in (("predictions", predictions), ("fit_on", fit_on or ()))
             for csv in csvs for path in (csv, sidecar_path(csv))]
    if other_labels_csv:
        reads.append(("--other_labels_csv reads", other_labels_csv))
    check_no_overwrite(writes, reads)


def run_ensemble(config: settings.EnsembleConfig) -> EnsembleResult:
    """Blends prediction files joined on image id, thresholds the blend and writes the submission.

    Weights: `config.blend_weight` (normalised to sum 1), else fitted with `fit_on`, else the
    reference weights of the backbones in the files' sidecars. Threshold: `config.threshold`, else
    fitted with `fit_on`, else 0.6. With `fit_on`, whatever is not given is chosen on validation
    (blend.CRITERION). `fit_on` holds one validation file with labels per prediction file, in order.

    Raises:
      UserInputError: any problem with the files or settings, naming the file and the fix.
    """
    predictions, output, fit_on = config.predictions, config.output, config.fit_on or None
    for name, paths in (("predictions", predictions), ("fit_on", fit_on or ()),
                        ("calibrate_on", config.calibrate_on)):
        for path in paths:
            if repeat_hint(path, name, "file"):
                raise UserInputError(f"--{name}={path} names no file{repeat_hint(path, name, 'file')}")
    weights = blend_lib.parse_weights(config.blend_weight) if config.blend_weight else None
    threshold, fit_step, report_dir = config.threshold, config.fit_step, config.report_dir
    id_column, label_column = config.submission_id_column, config.submission_label_column
    bootstrap, other_labels_csv = config.bootstrap, config.other_labels_csv
    if not output.endswith(".csv"):
        raise UserInputError(f"--output={output} must name a .csv file, e.g. submission.csv")
    check_output_file(output, "output", "submission.csv")
    if report_dir:
        check_output_folder(report_dir, "report_dir")
    check_outputs_spare_inputs(output, predictions, (*(fit_on or ()), *config.calibrate_on), other_labels_csv)
    triage.settings_of(config)  # bad triage settings fail before any reading
    other = None if other_labels_csv is None else agreement.load_other_labels(other_labels_csv)
    files = [read_predictions(path) for path in predictions]
    aligned = align(files)
    names = model_names(files)
    with_findings = finding_blend.blended_findings(files, aligned)
    choice = _choose(files, weights, threshold, fit_on, fit_step, with_findings)
    members = blend_lib.calibrate_members(aligned.uncalibrated, choice.temperatures)
    blended = blend_lib.blend(members, choice.weights)
    findings = None if choice.findings is None else finding_blend.apply(aligned.finding_uncalibrated,
                                                                        choice.findings)
    fitted = ensemble_triage.fit(config, files, choice.temperatures, choice.weights, choice.validation,
                                 _check_fit_pairs)
    spread = triage.blend_spread(members, choice.weights, aligned.spreads)
    triage_columns = ensemble_triage.columns(blended, fitted.blend, spread)
    metrics = gain = other_result = None
    report_dir = report_dir or settings.default_report_dir(output)
    # The report first and the submission last; a failure anywhere leaves none of the files.
    with atomic.Transaction(output) as tx:
        tx.guard(report_dir, output, ensemble_file.blend_path(output), ensemble_file.ensemble_path(output))
        scores = _scores(files, names, aligned, members, blended, choice, findings, fitted)
        if report_lib.has_known_labels(aligned.labels):
            metrics = report_lib.write_report(report_dir, scores, bootstrap=bootstrap)
            gain = _gain(report_dir, names, aligned, members, blended, choice.validation, bootstrap)
        if other is not None:
            other_result = agreement.write_other_labels(report_dir, other, aligned.ids, scores, bootstrap)
        if metrics is None and other_result is None:
            report_dir = None
        else:
            html_report.write_index(report_dir)
        probabilities = ensemble_file.blend_path(output)
        recorded = _with_policies(files, fit_on, config.calibrate_on)
        _write_blend(probabilities, recorded, names, aligned, blended, choice, fit_on, fit_step, report_dir,
                     None if findings is None else findings[1], (fitted, triage_columns))
        _write_submission(output, aligned.ids, blend_lib.decide(blended, choice.threshold), id_column,
                          label_column)
    weight_map = {name: float(w) for name, w in zip(names, choice.weights)}
    return EnsembleResult(output, probabilities, weight_map, choice.threshold, choice.fit, metrics,
                          report_dir, gain, other_result, choice.findings,
                          ensemble_triage.summary(fitted.blend, triage_columns[TRIAGE], fitted.why))


def summary(result: EnsembleResult) -> str:
    """What an ensemble run chose (and why) and wrote, with the report table when there is one."""
    weights = ", ".join(f"{name} {weight:.3f}" for name, weight in result.weights.items())
    lines = [f"weights: {weights}", f"threshold: {result.threshold:.4f}"]
    if result.fit is not None:
        chosen = " and ".join(part for part, on in (("weights", result.fit.fitted_weights),
                                                    ("threshold", result.fit.fitted_threshold)) if on)
        lines.append(f"{chosen} chosen on {result.fit.records} validation records by {blend_lib.CRITERION}: "
                     f"balanced accuracy {result.fit.balanced_accuracy:.4f}, Brier {result.fit.brier:.4f}")
    if result.findings is not None:
        lines.append(finding_blend.summary(result.findings))
    lines += result.triage
    lines.append(f"wrote {result.submission} and {result.probabilities}")
    if result.metrics is not None:
        lines += ["", report_lib.format_table(result.metrics)]
    if result.other_labels is not None:
        lines += ["", agreement.format_other_labels(result.other_labels)]
    if result.report_dir is not None:
        lines += ["", f"report: {result.report_dir}"]
    if result.gain is not None:
        lines.append(report_lib.gain_line(result.gain))
    return "\n".join(lines)

