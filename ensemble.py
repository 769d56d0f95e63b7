"""Blend prediction files into a submission: join on image id, weight, threshold, report.

    python ensemble.py --predictions=eff.csv --predictions=dense.csv --predictions=res.csv \\
        --output=submission.csv [--blend_weight=0.6 --blend_weight=0.3 --blend_weight=0.1] \\
        [--threshold=0.6] [--fit_on=eff_val.csv --fit_on=dense_val.csv --fit_on=res_val.csv]

Blends each file's p_uncalibrated (else its p_abnormal) after the temperature --fit_on fits for it,
and each finding's p_uncalibrated_<finding> likewise with that finding's weights (docs/prediction.md).
Writes the submission (image_id, decision) and the blend with its sidecar, the ensemble file. Bad
input exits 1 with one line naming the file and the fix; a failed run leaves none of its files.
"""

from __future__ import annotations

from contracts import cli
from evaluation.settings import EnsembleConfig

RENAMED = {"weights": "--blend_weight (repeat it, one per --predictions, in their order; --weights now only "
                      "names a backbone's initial weights)",
           "labels_csv": "--other_labels_csv"}


def main(config: EnsembleConfig) -> None:
    from evaluation import ensembling

    print(ensembling.summary(ensembling.run_ensemble(config)))


def run() -> None:
    """Console entry point (setup.cfg) and `python ensemble.py`."""
    cli.run(EnsembleConfig, main, __doc__, renamed=RENAMED)


if __name__ == "__main__":
    run()
