"""The ensemble run behind ensemble.py: join prediction files, blend, threshold, write, report.

Outputs, for `--output=DIR/submission.csv`:
  DIR/submission.csv                    image_id, decision (0/1; column names settable)
  DIR/submission.probabilities.csv      image_id, p_abnormal (the blend), label (when known)
  DIR/submission.probabilities.json     its sidecar: inputs, weights, threshold, how they were chosen
  DIR/submission_report/                metrics.json, roc.png, precision_recall.png (labels known only)
Each input's p_uncalibrated (contracts/prediction_files.py) goes through its ensemble temperature
(1 unless fitted with --fit_on), never its run's: no probability is calibrated twice. In the report
every input model is scored so, as it enters the blend, at the ensemble's threshold, so the rows compare.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import numpy as np
import pandas as pd
from absl import logging

from contracts import ensemble_file
from contracts.atomic import all_or_none, atomic_path, json_ready, write_json
from contracts.errors import (
    UserInputError,
    check_no_overwrite,
    check_output_file,
    check_output_folder,
    repeat_hint,
)
from contracts.output_names import PROB, PROB_UNCALIBRATED
from contracts.prediction_files import (
    PATIENT,
    Predictions,
    align,
    read_predictions,
    sidecar_path,
    write_predictions,
)
from evaluation import agreement, html_report, settings
from evaluation import blend as blend_lib
from evaluation import report as report_lib
from training import calibration
from training.metrics import auroc_or_nan

ENSEMBLE = "ensemble"  # the ensemble's key in metrics.json
BLENDED = f"each input's {PROB_UNCALIBRATED} after its temperature here"  # in the blend's sidecar


@dataclasses.dataclass(frozen=True)
class EnsembleResult:
    """What an ensemble run chose and wrote.

    Attributes:
      submission: path of the submission CSV.
      probabilities: path of the blended-probabilities CSV (its sidecar beside it).
      weights: model name -> weight (summing to 1), in --predictions order.
      threshold: the decision threshold applied.
      fit: the validation fit, or None when nothing was fitted.
      metrics: {name: metrics} when labels are known, else None.
      report_dir: where the report went, or None.
      gain: with validation files and known labels, the ensemble's AUROC minus that of the member
        best on validation, with a paired bootstrap interval (report_dir/ensemble_gain.json).
    """

    submission: str
    probabilities: str
    weights: dict[str, float]
    threshold: float
    fit: blend_lib.Fit | None
    metrics: dict[str, Any] | None
    report_dir: str | None
    gain: dict[str, Any] | None = None  # the ensemble against the best single model (see _gain)
    other_labels: dict[str, Any] | None = None  # the rescoring against --other_labels_csv (evaluation/agreement.py)


def model_names(files: Sequence[Predictions]) -> list[str]:
    """Returns one report name per file: its backbone when that is unique, else its file name stem."""
    backbones = [f.backbone for f in files]
    names = []
    for file in files:
        stem = os.path.splitext(os.path.basename(file.path))[0]
        unique = file.backbone is not None and backbones.count(file.backbone) == 1
        names.append(file.backbone if unique else stem)
    # Same stems from different folders: number them so every entry keeps its own row.
    return [name if names.count(name) == 1 and name != ENSEMBLE else f"{name}#{i + 1}"
            for i, name in enumerate(names)]


def _common(values: Sequence[str | None]) -> str | None:
    known = sorted({v for v in values if v is not None})
    if not known:
        return None
    return known[0] if len(known) == 1 else "mixed: " + ", ".join(known)


def _check_fit_pairs(files: Sequence[Predictions], fit_files: Sequence[Predictions]) -> None:
    if len(fit_files) != len(files):
        raise UserInputError(
            f"--fit_on has {len(fit_files)} file(s) but --predictions has {len(files)}; pass one validation "
            "file per prediction file, in the same order"
        )
    for file, fit_file in zip(files, fit_files):
        if file.backbone and fit_file.backbone and file.backbone != fit_file.backbone:
            raise UserInputError(
                f"--fit_on: {fit_file.path} is from {fit_file.backbone} but its partner {file.path} is from "
                f"{file.backbone}; list validation files in the same order as --predictions"
            )
    shared = set(fit_files[0].ids) & set(files[0].ids)
    if shared:  # allowed (an ensemble studied on validation alone), but never unsaid
        logging.warning("--fit_on shares %d of its %d images with --predictions (e.g. %s): the weights, "
                        "threshold and temperatures are fitted on images the report then scores, so its "
                        "numbers are optimistic; fit on validation predictions (train.py's "
                        "val_predictions.csv) to score test honestly", len(shared), len(fit_files[0].ids),
                        sorted(shared)[0])


@dataclasses.dataclass(frozen=True)
class _Choice:
    weights: np.ndarray
    threshold: float
    temperatures: list[float]  # one per model, 1 where none was fitted
    fit: blend_lib.Fit | None
    validation_aurocs: list[float] | None
    validation: tuple[np.ndarray, np.ndarray] | None  # (labels, calibrated member probs (N, M))


def _scored(temperature: float) -> str:
    """What a member's report numbers are computed on (report.SCORED)."""
    return PROB_UNCALIBRATED if temperature == 1.0 else f"{PROB_UNCALIBRATED} at T={temperature:.4g}"


def _choose(
    files: Sequence[Predictions],
    names: Sequence[str],
    weights: Sequence[float] | None,
    threshold: float | None,
    fit_on: Sequence[str] | None,
    fit_step: float,
) -> _Choice:
    fixed_weights = None if weights is None else blend_lib.normalise_weights(weights, len(files))
    fixed_threshold = None if threshold is None else blend_lib.check_threshold(threshold)
    if not fit_on:
        chosen = fixed_weights if fixed_weights is not None else blend_lib.reference_weights(files)
        return _Choice(chosen, settings.ENSEMBLE_THRESHOLD if fixed_threshold is None else fixed_threshold,
                       [1.0] * len(files), None, None, None)
    fit_files = [read_predictions(path) for path in fit_on]
    _check_fit_pairs(files, fit_files)
    validation = align(fit_files)
    labels = blend_lib.check_fit_labels(validation.labels, fit_on, validation.ids)
    # One order: temperatures first (each member on its own validation predictions, before any
    # temperature), then the weights and threshold on the calibrated members.
    temperatures = blend_lib.fit_temperatures(validation.uncalibrated, labels, names)
    members = blend_lib.calibrate_members(validation.uncalibrated, temperatures)
    fit = blend_lib.fit(members, labels, step=fit_step, weights=fixed_weights, threshold=fixed_threshold)
    validation_aurocs = [auroc_or_nan(labels, members[:, m]) for m in range(len(files))]
    return _Choice(fit.weights, fit.threshold, temperatures, fit, validation_aurocs, (labels, members))


def _write_submission(
    path: str, ids: np.ndarray, decisions: np.ndarray, id_column: str, label_column: str
) -> None:
    if not id_column or not label_column or id_column == label_column:
        raise UserInputError(
            f"submission columns {id_column!r} and {label_column!r} must be two different non-empty names"
        )
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as tmp:
        pd.DataFrame({id_column: ids, label_column: decisions}).to_csv(tmp, index=False)


def _scores(files: Sequence[Predictions], names: Sequence[str], aligned, members: np.ndarray,
            blended: np.ndarray, choice: _Choice) -> list[report_lib.Scores]:
    """Every member scored as it is blended (after its temperature) at the ensemble's threshold,
    so the rows compare, and the ensemble itself."""
    validation = choice.validation
    scores = [
        report_lib.Scores(name, aligned.labels, members[:, m], choice.threshold, {
            "crop": file.crop, "train_crop": (file.sidecar or {}).get("train_crop"), "source": file.path,
            "temperature": choice.temperatures[m], report_lib.SCORED: _scored(choice.temperatures[m])},
            uncalibrated=None if choice.temperatures[m] == 1.0 else aligned.uncalibrated[:, m], meta=aligned.meta,
            validation=None if validation is None else (validation[0], validation[1][:, m]))
        for m, (name, file) in enumerate(zip(names, files))
    ]
    scores.append(report_lib.Scores(ENSEMBLE, aligned.labels, blended, choice.threshold, {
        "crop": _common([f.crop for f in files]),
        "train_crop": _common([(f.sidecar or {}).get("train_crop") for f in files]), report_lib.SCORED: PROB,
    }, meta=aligned.meta, validation=None if validation is None else (
        validation[0], blend_lib.blend(validation[1], choice.weights))))
    return scores


def _gain(report_dir: str, names: Sequence[str], aligned, members: np.ndarray, blended: np.ndarray,
          validation_aurocs: list[float] | None, bootstrap: int) -> dict[str, Any] | None:
    """The ensemble against the single model best on validation (never chosen on the reported
    records), as a paired bootstrap difference of AUROC; written to report_dir/GAIN_FILE."""
    if validation_aurocs is None or len(names) < 2 or all(np.isnan(validation_aurocs)):
        return None
    best = int(np.nanargmax(validation_aurocs))
    known = aligned.labels >= 0
    labels, single, patients = aligned.labels[known], members[known, best], aligned.meta.get(PATIENT)
    gain = {"best_single": names[best], "chosen_on": "validation AUROC",
            "validation_aurocs": dict(zip(names, validation_aurocs)),
            "ensemble_auroc": auroc_or_nan(labels, blended[known]), "best_single_auroc": auroc_or_nan(labels, single),
            **report_lib.paired_auroc_difference(labels, blended[known], single, bootstrap,
                                                 None if patients is None else patients[known])}
    gain = json_ready(gain)
    write_json(os.path.join(report_dir, report_lib.GAIN_FILE), gain)
    return gain


def _write_blend(path: str, files: Sequence[Predictions], names: Sequence[str], aligned, blended: np.ndarray,
                 choice: _Choice, fit_on: Sequence[str] | None, fit_step: float) -> None:
    """Writes the blended probabilities and their sidecar, the ensemble file (contracts/ensemble_file.py)."""
    fit = choice.fit
    write_predictions(path, aligned.ids, blended, aligned.labels, sidecar={
        "backbone": ENSEMBLE,
        "schema_version": ensemble_file.SCHEMA_VERSION,
        "inputs": ensemble_file.member_records(names, [f.sidecar for f in files], [f.path for f in files],
                                               choice.weights, choice.temperatures),
        "weights": {name: float(w) for name, w in zip(names, choice.weights)},
        "temperatures": dict(zip(names, choice.temperatures)),
        "blended": BLENDED,
        "order": calibration.ORDER,
        "threshold": choice.threshold,
        "fit": None if fit is None else {
            "criterion": blend_lib.CRITERION, "files": list(fit_on), "step": fit_step,
            "temperatures": "fitted per member on its validation file (minimum negative log-likelihood)",
            "fitted_weights": fit.fitted_weights, "fitted_threshold": fit.fitted_threshold,
            "balanced_accuracy": fit.balanced_accuracy, "brier": fit.brier, "records": fit.records,
        },
        "crop": _common([f.crop for f in files]),
        "records": len(aligned.ids),
    })


def check_outputs_spare_inputs(output: str, predictions: Sequence[str], fit_on: Sequence[str] | None,
                               other_labels_csv: str | None) -> None:
    """Refuses an --output whose files (the submission, the blend and its sidecar, the ensemble
    file) would replace a file the run reads: a prediction or --fit_on file, its sidecar, or the labels CSV.

    Raises:
      UserInputError: naming --output, the file and the fix (see `check_no_overwrite`).
    """
    blend = ensemble_file.blend_path(output)
    writes = [("output", output, path) for path in (output, blend, ensemble_file.ensemble_path(output))]
    reads = [(f"--{flag} reads{'' if path == csv else f' (the sidecar of {csv})'}", path)
             for flag, csvs in (("predictions", predictions), ("fit_on", fit_on or ()))
             for csv in csvs for path in (csv, sidecar_path(csv))]
    check_no_overwrite(writes, reads + ([("--other_labels_csv reads", other_labels_csv)] if other_labels_csv else []))


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
    for name, paths in (("predictions", predictions), ("fit_on", fit_on or ())):
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
    check_outputs_spare_inputs(output, predictions, fit_on, other_labels_csv)
    other = None if other_labels_csv is None else agreement.load_other_labels(other_labels_csv)
    files = [read_predictions(path) for path in predictions]
    aligned = align(files)
    names = model_names(files)
    choice = _choose(files, names, weights, threshold, fit_on, fit_step)
    fit, chosen_threshold = choice.fit, choice.threshold
    members = blend_lib.calibrate_members(aligned.uncalibrated, choice.temperatures)
    blended = blend_lib.blend(members, choice.weights)
    decisions = blend_lib.decide(blended, chosen_threshold)
    metrics = gain = other_result = None
    report_dir = report_dir or settings.default_report_dir(output)
    # The report first and the submission last; a failure anywhere leaves none of the files.
    with all_or_none():
        scores = _scores(files, names, aligned, members, blended, choice)
        if report_lib.has_known_labels(aligned.labels):
            metrics = report_lib.write_report(report_dir, scores, bootstrap=bootstrap)
            gain = _gain(report_dir, names, aligned, members, blended, choice.validation_aurocs, bootstrap)
        if other is not None:
            other_result = agreement.write_other_labels(report_dir, other, aligned.ids, scores, bootstrap)
        if metrics is None and other_result is None:
            report_dir = None
        else:
            html_report.write_index(report_dir)
        probabilities = ensemble_file.blend_path(output)
        weight_map = {name: float(w) for name, w in zip(names, choice.weights)}
        _write_blend(probabilities, files, names, aligned, blended, choice, fit_on, fit_step)
        _write_submission(output, aligned.ids, decisions, id_column, label_column)
    return EnsembleResult(output, probabilities, weight_map, chosen_threshold, fit, metrics, report_dir, gain,
                          other_result)


def apply_ensemble(ensemble: str, model_dirs: Sequence[str], member_files: Sequence[str], output: str,
                   extra_sidecar: dict[str, Any] | None = None) -> tuple[int, int, float]:
    """Blends the members' prediction files with the ensemble file's weights into `output`.

    Args:
      ensemble: ensemble.py's `.probabilities.json`.
      model_dirs: the --model_dir folders, in the order of `member_files`.
      member_files: each model's prediction CSV.
      output: the blended prediction CSV (image_id, p_abnormal: the blend[, label]) with its sidecar.

    Returns:
      (records, records at or above the ensemble's threshold, the threshold).
    """
    loaded = ensemble_file.load_ensemble(ensemble)
    by_dir = dict(zip(model_dirs, member_files))
    pairs = ensemble_file.match_members(loaded, model_dirs)
    files = [read_predictions(by_dir[model_dir]) for _, model_dir in pairs]
    aligned = align(files)
    weights = blend_lib.normalise_weights([member.weight for member, _ in pairs], len(pairs))
    temperatures = [member.temperature for member, _ in pairs]
    blended = blend_lib.blend(blend_lib.calibrate_members(aligned.uncalibrated, temperatures), weights)
    write_predictions(output, aligned.ids, blended, aligned.labels, meta=aligned.meta, sidecar={
        "backbone": ENSEMBLE, "ensemble": os.path.abspath(ensemble), "threshold": loaded.threshold,
        "weights": {member.name: float(w) for (member, _), w in zip(pairs, weights)},
        "temperatures": {member.name: member.temperature for member, _ in pairs},
        "blended": BLENDED,
        "inputs": [os.path.abspath(by_dir[d]) for _, d in pairs], **(extra_sidecar or {})})
    decisions = blend_lib.decide(blended, loaded.threshold)
    return len(aligned.ids), int(decisions.sum()), loaded.threshold


def summary(result: EnsembleResult) -> str:
    """Returns what an ensemble run chose (and why) and wrote, with the report table when there is one."""
    weights = ", ".join(f"{name} {weight:.3f}" for name, weight in result.weights.items())
    lines = [f"weights: {weights}", f"threshold: {result.threshold:.4f}"]
    if result.fit is not None:
        chosen = " and ".join(part for part, on in (("weights", result.fit.fitted_weights),
                                                    ("threshold", result.fit.fitted_threshold)) if on)
        lines.append(f"{chosen} chosen on {result.fit.records} validation records by {blend_lib.CRITERION}: "
                     f"balanced accuracy {result.fit.balanced_accuracy:.4f}, Brier {result.fit.brier:.4f}")
    lines.append(f"wrote {result.submission} and {result.probabilities}")
    if result.metrics is not None:
        lines += ["", report_lib.format_table(result.metrics)]
    if result.other_labels is not None:
        lines += ["", agreement.format_other_labels(result.other_labels)]
    if result.report_dir is not None:
        lines += ["", f"report: {result.report_dir}"]
    if result.gain is not None:
        lines.append(gain_line(result.gain))
    return "\n".join(lines)


def gain_line(gain: dict[str, Any]) -> str:
    """One line: the ensemble's AUROC against the best single model's, and the paired difference."""
    interval = gain["ci95"]
    shown = f"[{interval[0]:+.3f}, {interval[1]:+.3f}]" if interval else f"(none: {gain.get('ci95_absent')})"
    return (f"ensemble AUROC {gain['ensemble_auroc']:.3f} vs {gain['best_single']} (best on validation) "
            f"{gain['best_single_auroc']:.3f}: difference {gain['difference']:+.3f}, paired bootstrap 95% "
            f"interval by patient {shown} ({gain['resamples_used']} of {gain['resamples']} resamples of "
            f"{gain['patients']} patients usable)")
