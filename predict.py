"""Batch prediction of saved models over a shard folder's split, or over raw image files.

    python predict.py --model_dir=runs/effnet --data_dir=shards --output=preds/effnet.csv
    python predict.py --model_dir=runs/effnet --images=new_studies/ --output=preds/new.csv

Writes PATH.csv, PATH.npy and PATH.json (the sidecar), PATH.studies.csv (one row per study) when the
records carry study ids, and a report when the records have labels (--help says each file). Bad input
exits 1 with one line naming the file and the fix, before any work; a run that fails part way leaves
none of its files.
"""

from __future__ import annotations

from contracts import cli
from evaluation.settings import PredictConfig

RENAMED = {"batch_size": "--global_batch_size"}


def _preflight(config: PredictConfig) -> tuple[int, int] | str:
    """Checks the inputs before TensorFlow loads; returns the split, or with --images (size, pixel limit)."""
    from contracts import ensemble_file
    from contracts.errors import UserInputError, check_output_folder
    from contracts.run_folder import RunFolder
    from evaluation import agreement, ensemble_triage, preflight, settings, triage
    from preprocess import raw_images

    raw_images.check_one_source(config.data_dir, config.images)
    triage.refuse_with_ensemble(config)
    triage.settings_of(config)  # refuses a bad --triage_* value
    if config.labels_csv is not None and config.images is None:  # what --labels_csv once meant here
        raise UserInputError("--labels_csv labels --images files; to rescore a shard split against another "
                             "reading of its images, pass --other_labels_csv")
    if config.other_labels_csv is not None:
        agreement.load_other_labels(config.other_labels_csv)
    if config.ensemble is not None:  # its members, views and triage record, before any predicting
        loaded = ensemble_file.load_ensemble(config.ensemble)
        ensemble_file.match_members(loaded, config.model_dir)
        ensemble_triage.check_views(loaded, config.tta)
        ensemble_triage.check_precision(loaded, config.precision)
        ensemble_triage.loaded(loaded, warn=False)
    # Every output file is checked against every input file, so no output replaces an input.
    clash = dict(per_model=config.ensemble is not None, other_labels_csv=config.other_labels_csv,
                 ensemble=config.ensemble)
    if config.images is None:
        inputs = preflight.open_prediction_inputs(config.model_dir, config.data_dir, config.split,
                                                  config.output, config.report_dir, **clash)
        return inputs.split.name
    images_at = raw_images.check_images_inputs(config.model_dir, config.images, config.output,
                                               config.labels_csv)
    if config.report_dir is not None:
        check_output_folder(config.report_dir, "report_dir")
    if any(v is not None for v in (config.labels_csv, config.other_labels_csv, config.report_dir)):
        report_dir = config.report_dir or settings.default_report_dir(config.output)
        raw_images.check_output_outside_images(report_dir, "report_dir", config.images)
    preflight.check_prediction_outputs([RunFolder.open(d) for d in config.model_dir], config.output,
                                       labels_csv=config.labels_csv, **clash)
    return images_at


def main(config: PredictConfig) -> None:
    checked = _preflight(config)
    from contracts import atomic, gate_settings
    from contracts.prediction_files import sidecar_path
    from evaluation import ensemble_apply, prediction, studies
    from preprocess import raw_images, skipped_studies

    raw = None
    # One outcome per run: a failure in any model, the report or the blend leaves none of its files.
    with atomic.Transaction(config.output) as tx:
        if isinstance(checked, str):
            result, extra = prediction.run_prediction(config, split=checked, transaction=tx), {}
        else:  # the builder's own decoding, into a temporary shard folder removed afterwards
            with raw_images.built_images(config.images, *checked, workers=config.workers,
                                         labels_csv=config.labels_csv,
                                         gate=gate_settings.settings_of(config)) as (shard_dir, raw):
                # Each skipped file with its study, for the studies file's rows.
                extra = {**raw_images.sidecar_fields(raw),
                         "skipped": skipped_studies.with_studies(raw.images, raw.skipped)}
                result = prediction.run_prediction(config, split=raw_images.IMAGES_SPLIT, data_dir=shard_dir,
                                                   extra_sidecar=extra, transaction=tx)
        if config.ensemble is not None:
            tx.guard(config.output, sidecar_path(config.output), studies.studies_path(config.output))
            fields = {k: v for k, v in extra.items() if v is not None}  # the raw files', no shard folder
            blended = ensemble_apply.apply_ensemble(config.ensemble, config.model_dir,
                                                list(result.outputs.values()), config.output, fields)
    print(prediction.summary(result))
    if raw is not None:
        print(raw_images.skipped_summary(raw))
    if config.ensemble is not None:
        records, above, threshold, study_line = blended
        print(f"ensemble: {records} predictions -> {config.output}; {above} at or above its threshold "
              f"{threshold:.4f} (abnormal)")
        if study_line is not None:
            print(study_line)


def run() -> None:
    """Console entry point (setup.cfg) and `python predict.py`."""
    cli.run(PredictConfig, main, __doc__, renamed=RENAMED)


if __name__ == "__main__":
    run()
