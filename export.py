"""Exports trained models as one TensorFlow SavedModel that takes image bytes.

    python export.py --model_dir=runs/effnet --export_dir=served/effnet [--threshold=0.5]
    python export.py --model_dir=RUN1 --model_dir=RUN2 --model_dir=RUN3 \\
        --ensemble=out/submission.probabilities.json --export_dir=served/ensemble

Signatures: serving_default(image_bytes: encoded PNG/JPEG strings) and pixels(float32 0..255
images); both return p_abnormal, logit and decision, with p_uncalibrated for one model or
member_p_uncalibrated for an ensemble: the names and meanings of predict.py's CSV columns.
The SavedModel loads with TensorFlow alone; export.json beside it says what it holds.
Bad input exits with status 1 and a one-line message naming the flag and the fix.
"""

from __future__ import annotations

from absl import flags

import flags as project_flags

FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    del argv  # stray arguments are refused by project_flags.run_tool
    from serving import exporter

    info = exporter.run_export(FLAGS.model_dir, FLAGS.export_dir, ensemble=FLAGS.ensemble,
                               threshold=FLAGS.threshold)
    print(exporter.summary(info, FLAGS.export_dir))


def run() -> None:
    """Console entry point (setup.cfg) and `python export.py`: define the flags, then run `main`."""
    project_flags.run_tool(project_flags.define_export_flags, main, __doc__,
                           required=("model_dir", "export_dir"))


if __name__ == "__main__":
    run()
