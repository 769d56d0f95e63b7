"""Blend prediction files into a submission: join on image id, weight, threshold, report.

    python ensemble.py --predictions=eff.csv --predictions=dense.csv --predictions=res.csv \\
        --output=submission.csv [--blend_weight=0.6 --blend_weight=0.3 --blend_weight=0.1] \\
        [--threshold=0.6] [--fit_on=eff_val.csv --fit_on=dense_val.csv --fit_on=res_val.csv]

Blends each file's p_uncalibrated (the softmax output; a file without it, e.g. one made elsewhere,
its p_abnormal) after the temperature --fit_on fits for it (none without --fit_on), never after
the run's own temperature as well. Writes the submission (image_id, decision) and the blend
(image_id, p_abnormal[, label]) with its sidecar, the ensemble file.

Bad input (ids that differ between files, duplicate ids, NaN or out-of-range probabilities, an
--output whose files would replace a file the run reads, ...) exits with status 1 and a one-line
message naming the file and the fix; a run that fails part way leaves none of its files.
"""

from __future__ import annotations

from absl import flags

import flags as project_flags

FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    del argv  # stray arguments are refused by project_flags.run_tool
    from contracts.errors import UserInputError, repeat_hint
    from evaluation import blend as blend_lib
    from evaluation import ensembling

    for flag in ("predictions", "fit_on"):
        for path in FLAGS[flag].value or ():
            if repeat_hint(path, flag, "file"):
                raise UserInputError(f"--{flag}={path} names no file{repeat_hint(path, flag, 'file')}")
    result = ensembling.run_ensemble(
            FLAGS.predictions,
            FLAGS.output,
            weights=None if FLAGS.blend_weight is None else blend_lib.parse_weights(FLAGS.blend_weight),
            threshold=FLAGS.threshold,
            fit_on=FLAGS.fit_on,
            fit_step=FLAGS.fit_step,
            id_column=FLAGS.submission_id_column,
            label_column=FLAGS.submission_label_column,
            report_dir=FLAGS.report_dir,
            bootstrap=FLAGS.bootstrap,
            other_labels_csv=FLAGS.other_labels_csv,
    )
    print(ensembling.summary(result))


def run() -> None:
    """Console entry point (setup.cfg) and `python ensemble.py`: define the flags, then run `main`."""
    project_flags.run_tool(project_flags.define_ensemble_flags, main, __doc__,
                           required=("predictions", "output"))


if __name__ == "__main__":
    run()
