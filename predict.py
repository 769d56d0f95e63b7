"""Batch prediction of saved models over a shard folder's split, or over raw image files.

    python predict.py --model_dir=runs/effnet --data_dir=shards --split=eval --output=preds/effnet.csv
    python predict.py --model_dir=runs/effnet --images=new_studies/ --output=preds/new.csv

Writes PATH.csv (image_id,p_abnormal[,label]; one row per record of the split, checked against
manifest.json), PATH.npy (the (N, 2) softmax, same rows) and PATH.json (backbone, shards, crop), and
a report (metrics.json, ROC and PR curves) when the records have labels. Repeat --model_dir to
predict with several models: each writes <output stem>.<backbone>.csv (+ .npy, .json).
--images takes PNG, JPEG and DICOM files (a folder or a glob) instead of shards; --ensemble blends
the models with ensemble.py's weights into PATH.csv.
Bad input exits with status 1 and a one-line message naming the file and the fix.
"""

from __future__ import annotations

from absl import flags

import flags as project_flags
from contracts.errors import UserInputError

FLAGS = flags.FLAGS


def _check_flags() -> None:
    """Paths and flags fail here, in a second; TensorFlow loads only for the real work."""
    from evaluation import preflight, raw_images

    if (FLAGS.data_dir is None) == (FLAGS.images is None):
        raise UserInputError("pass either --data_dir (a shard folder) or --images (raw files), not both or neither")
    if FLAGS.labels_csv is not None and FLAGS.images is None:
        raise UserInputError("--labels_csv labels --images; shard folders carry their labels already")
    if FLAGS.images is not None:
        raw_images.check_images_inputs(FLAGS.model_dir, FLAGS.images, FLAGS.output, FLAGS.labels_csv)
    else:
        preflight.check_prediction_inputs(FLAGS.model_dir, FLAGS.data_dir, FLAGS.split, FLAGS.output,
                                          FLAGS.report_dir)
    if FLAGS.ensemble is not None:
        from contracts import ensemble_file

        ensemble_file.match_members(ensemble_file.load_ensemble(FLAGS.ensemble), FLAGS.model_dir)


def main(argv: list[str]) -> None:
    del argv  # stray arguments are refused by project_flags.run_tool
    _check_flags()
    from evaluation import prediction, raw_images

    options = dict(batch_size=FLAGS.batch_size, strategy=FLAGS.strategy, precision=FLAGS.precision,
                   threshold=FLAGS.threshold, bootstrap=FLAGS.bootstrap, per_model=FLAGS.ensemble is not None)
    raw = None
    if FLAGS.images is not None:
        result, raw = raw_images.predict_images(FLAGS.model_dir, FLAGS.images, FLAGS.output,
                                                workers=FLAGS.workers, labels_csv=FLAGS.labels_csv,
                                                report_dir=FLAGS.report_dir, **options)
    else:
        result = prediction.run_prediction(FLAGS.model_dir, FLAGS.data_dir, FLAGS.split, FLAGS.output,
                                           report_dir=FLAGS.report_dir, **options)
    print(prediction.summary(result))
    if raw is not None:
        print(raw_images.skipped_summary(raw))
    if FLAGS.ensemble is not None:
        extra = {} if raw is None else {"images": raw.images, "skipped": raw.skipped}
        records, above, threshold = raw_images.apply_ensemble(
            FLAGS.ensemble, FLAGS.model_dir, list(result.outputs.values()), FLAGS.output, extra)
        print(f"ensemble: {records} predictions -> {FLAGS.output}; {above} at or above its threshold "
              f"{threshold:.4f} (abnormal)")


def run() -> None:
    """Console entry point (setup.cfg) and `python predict.py`: define the flags, then run `main`."""
    project_flags.run_tool(project_flags.define_predict_flags, main, __doc__, required=("model_dir", "output"))


if __name__ == "__main__":
    run()
