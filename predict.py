"""Batch prediction of saved models over a shard folder's split, or over raw image files.

    python predict.py --model_dir=runs/effnet --data_dir=shards --output=preds/effnet.csv
    python predict.py --model_dir=runs/effnet --images=new_studies/ --output=preds/new.csv

Without --split it predicts the folder's test split, or its only split besides train (eval for an
unlabeled folder), and otherwise asks for --split, listing the splits.
Writes PATH.csv (image_id,p_abnormal[,label],p_uncalibrated: p_abnormal after the run's temperature,
p_uncalibrated the softmax output; one row per record of the split, checked against manifest.json),
PATH.npy (the (N, 2) softmax, same rows) and PATH.json (backbone, shards, crop, temperature), and a
report on p_abnormal (metrics.json, ROC and PR curves) when the records have labels. Repeat
--model_dir to predict with several models: each writes <output stem>.<backbone>.csv (+ .npy, .json).
--images takes PNG, JPEG and DICOM files (a folder or a glob) instead of shards; --ensemble blends
the models with ensemble.py's temperatures and weights into PATH.csv. --labels_csv labels --images
files; --other_labels_csv rescores the predictions against another reading of the images.
Bad input exits with status 1 and a one-line message naming the file and the fix, before any work:
among it an --output whose files would replace a file the run reads (a model folder's own files,
the manifest, --labels_csv, --other_labels_csv, --ensemble). Every model loads before any predicts, and a run that
fails part way leaves none of its output files (the files they would have replaced stay).
"""

from __future__ import annotations

from absl import flags

import flags as project_flags

FLAGS = flags.FLAGS


def _check_flags() -> tuple[tuple[int, int] | None, str | None]:
    """Paths and flags fail here, in a second; TensorFlow loads only for the real work.

    Returns:
      With --images, (the models' (image size, pixel limit), None); else (None, the split to predict:
      --split, or the one the manifest makes unambiguous).
    """
    from contracts.errors import UserInputError, check_output_folder
    from contracts.run_folder import RunFolder
    from evaluation import preflight
    from preprocess import raw_images

    raw_images.check_one_source(FLAGS.data_dir, FLAGS.images)
    if FLAGS.labels_csv is not None and FLAGS.images is None:  # what --labels_csv once meant here
        raise UserInputError("--labels_csv labels --images files; to rescore a shard split against another "
                             "reading of its images, pass --other_labels_csv")
    if FLAGS.other_labels_csv is not None:
        from evaluation import agreement

        agreement.load_other_labels(FLAGS.other_labels_csv)  # a bad file fails before anything is written
    if FLAGS.ensemble is not None:
        from contracts import ensemble_file

        ensemble_file.match_members(ensemble_file.load_ensemble(FLAGS.ensemble), FLAGS.model_dir)
    # Every output file is checked against every input file, so no output replaces an input.
    clash = dict(per_model=FLAGS.ensemble is not None, other_labels_csv=FLAGS.other_labels_csv,
                 ensemble=FLAGS.ensemble)
    if FLAGS.images is not None:
        images_at = raw_images.check_images_inputs(FLAGS.model_dir, FLAGS.images, FLAGS.output, FLAGS.labels_csv)
        if FLAGS.report_dir is not None:
            check_output_folder(FLAGS.report_dir, "report_dir")
        if any(v is not None for v in (FLAGS.labels_csv, FLAGS.other_labels_csv, FLAGS.report_dir)):  # a report
            from evaluation import settings

            raw_images.check_output_outside_images(FLAGS.report_dir or settings.default_report_dir(FLAGS.output),
                                                   "report_dir", FLAGS.images)
        preflight.check_prediction_outputs([RunFolder.open(d) for d in FLAGS.model_dir],
                                           FLAGS.output, labels_csv=FLAGS.labels_csv, **clash)
        return images_at, None
    inputs = preflight.open_prediction_inputs(FLAGS.model_dir, FLAGS.data_dir, FLAGS.split, FLAGS.output,
                                              FLAGS.report_dir, **clash)
    return None, inputs.split.name


def _predict(images_at: tuple[int, int] | None, split: str | None, transaction):
    """Runs the prediction, from the shards or from the raw images; returns its result, the raw
    images' sidecar fields and what was skipped among them (None for shards)."""
    from evaluation import prediction
    from preprocess import raw_images

    options = dict(batch_size=FLAGS.global_batch_size, strategy=FLAGS.strategy, precision=FLAGS.precision,
                   transfer=FLAGS.transfer, threshold=FLAGS.threshold, bootstrap=FLAGS.bootstrap,
                   report_dir=FLAGS.report_dir, per_model=FLAGS.ensemble is not None,
                   other_labels_csv=FLAGS.other_labels_csv, transaction=transaction)
    if images_at is None:
        return prediction.run_prediction(FLAGS.model_dir, FLAGS.data_dir, split, FLAGS.output,
                                         **options), {}, None
    # The builder's own decoding, into a temporary shard folder removed afterwards.
    with raw_images.built_images(FLAGS.images, *images_at, workers=FLAGS.workers,
                                 labels_csv=FLAGS.labels_csv) as (shard_dir, raw):
        extra = raw_images.sidecar_fields(raw)
        return prediction.run_prediction(FLAGS.model_dir, shard_dir, raw_images.IMAGES_SPLIT, FLAGS.output,
                                         extra_sidecar=extra, **options), extra, raw


def main(argv: list[str]) -> None:
    del argv  # stray arguments are refused by project_flags.run_tool
    images_at, split = _check_flags()
    from contracts import atomic
    from contracts.prediction_files import sidecar_path
    from evaluation import ensembling, prediction
    from preprocess import raw_images

    # One outcome per run: a failure in any model, the report or the blend leaves none of its files.
    with atomic.Transaction(FLAGS.output) as tx:
        result, extra, raw = _predict(images_at, split, tx)
        if FLAGS.ensemble is not None:
            tx.guard(FLAGS.output, sidecar_path(FLAGS.output))
            records, above, threshold = ensembling.apply_ensemble(
                FLAGS.ensemble, FLAGS.model_dir, list(result.outputs.values()), FLAGS.output,
                {k: v for k, v in extra.items() if v is not None})  # the raw files' fields, no shard folder
    print(prediction.summary(result))
    if raw is not None:
        print(raw_images.skipped_summary(raw))
    if FLAGS.ensemble is not None:
        print(f"ensemble: {records} predictions -> {FLAGS.output}; {above} at or above its threshold "
              f"{threshold:.4f} (abnormal)")


def run() -> None:
    """Console entry point (setup.cfg) and `python predict.py`: define the flags, then run `main`."""
    project_flags.run_tool(project_flags.define_predict_flags, main, __doc__, required=("model_dir", "output"))


if __name__ == "__main__":
    run()
