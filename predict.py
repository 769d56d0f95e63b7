"""Batch prediction of saved models over a shard folder's split.

    python predict.py --model_dir=runs/effnet --data_dir=shards --split=eval --output=preds/effnet.csv

Writes PATH.csv (image_id,p_abnormal[,label]; one row per record of the split, checked against
manifest.json), PATH.npy (the (N, 2) softmax, same rows) and PATH.json (backbone, shards, crop), and
a report (metrics.json, ROC and PR curves) when the records have labels. Repeat --model_dir to
predict with several models: each writes <output stem>.<backbone>.csv (+ .npy, .json).
Bad input exits with status 1 and a one-line message naming the file and the fix.
"""

from __future__ import annotations

from absl import flags

import flags as project_flags

FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    del argv  # stray arguments are refused by project_flags.run_tool
    from evaluation import preflight

    # Paths and flags fail here, in a second; TensorFlow loads only for the real work.
    preflight.check_prediction_inputs(FLAGS.model_dir, FLAGS.data_dir, FLAGS.split, FLAGS.output,
                                      FLAGS.report_dir)
    from evaluation import prediction

    result = prediction.run_prediction(
            FLAGS.model_dir,
            FLAGS.data_dir,
            FLAGS.split,
            FLAGS.output,
            batch_size=FLAGS.batch_size,
            strategy=FLAGS.strategy,
            precision=FLAGS.precision,
            threshold=FLAGS.threshold,
            report_dir=FLAGS.report_dir,
            bootstrap=FLAGS.bootstrap,
    )
    print(prediction.summary(result))


def run() -> None:
    """Console entry point (setup.cfg) and `python predict.py`: define the flags, then run `main`."""
    project_flags.run_tool(project_flags.define_predict_flags, main, __doc__,
                           required=("model_dir", "data_dir", "output"))


if __name__ == "__main__":
    run()
