"""Exports trained models as one TensorFlow SavedModel that takes image bytes.

    python export.py --model_dir=runs/effnet --export_dir=served/effnet [--threshold=0.5]
    python export.py --model_dir=RUN1 --model_dir=RUN2 --model_dir=RUN3 \\
        --ensemble=out/submission.probabilities.json --export_dir=served/ensemble

Signatures: serving_default(image_bytes: encoded PNG/JPEG strings) and pixels(float32 0..255
images); both return p_abnormal, logit, decision and triage (p_spread with several members or
views), with p_uncalibrated for one model or member_p_uncalibrated and member_p_abnormal for an
ensemble: the names and meanings of predict.py's CSV columns.
The SavedModel loads with TensorFlow alone; export.json beside it says what it holds, and
MODEL_CARD.md what it was trained on, how it scored on which split (the report of --report_dir, or
the one the --ensemble file records) and what it must not be used for.
"""

from __future__ import annotations

from contracts import cli
from serving.config import ExportConfig


def main(config: ExportConfig) -> None:
    from serving import exporter

    print(exporter.summary(exporter.run_export(config), config.export_dir))


def run() -> None:
    """Console entry point (setup.cfg) and `python export.py`."""
    cli.run(ExportConfig, main, __doc__)


if __name__ == "__main__":
    run()
