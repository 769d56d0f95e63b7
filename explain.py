"""Where the model looks: Grad-CAM maps of a split's images, scored against the split's expert boxes.

    python explain.py --model_dir=runs/effnet --data_dir=shards --output_dir=explained
    python explain.py --model_dir=runs/effnet --model_dir=runs/dn --ensemble=submission.probabilities.json \\
        --data_dir=shards --output_dir=explained
    python explain.py --model_dir=runs/effnet --images=new_studies/ --output_dir=explained
    python explain.py --model_dir=runs/effnet --finding=Mass --data_dir=shards --output_dir=explained

Writes a heatmap .npy and an overlay .png per image of the gallery (the most confident hits and
misses, --image_ids, or every file of --images; of one finding with --finding), localization.json
(pointing game and energy in the boxes, beside a centred-Gaussian baseline; with the findings head,
each finding's own map against its boxes too) and explanations.json; into <report>/explanations, the
report's index.html gains the gallery. Bad input exits 1 in one line; nothing is written.
"""

from __future__ import annotations

import os

from contracts import cli
from evaluation.settings import ExplainConfig

RENAMED = {"batch_size": "--global_batch_size"}


def _preflight(config: ExplainConfig) -> tuple[int, int] | str:
    """Checks the inputs before TensorFlow loads; returns the split, or with --images (size, pixel limit)."""
    from contracts import explanation_folder
    from evaluation import preflight
    from preprocess import raw_images

    raw_images.check_one_source(config.data_dir, config.images)
    if config.images is None:
        return preflight.open_explain_inputs(config.model_dir, config.ensemble, config.data_dir, config.split,
                                             config.output_dir).split.name
    preflight.explained_models(config.model_dir, config.ensemble)
    raw_images.check_output_outside_images(config.output_dir, "output_dir", config.images)
    return raw_images.check_images_inputs(config.model_dir, config.images,
                                          os.path.join(config.output_dir, explanation_folder.INDEX),
                                          output_flag="output_dir")


def main(config: ExplainConfig) -> None:
    checked = _preflight(config)
    from contracts import explanation_folder, gate_settings
    from evaluation import explanation, html_report
    from preprocess import raw_images

    if isinstance(checked, str):
        result = explanation.run_explain(config, split=checked)
    else:  # the builder's own decoding, into a temporary shard folder removed afterwards
        with raw_images.built_images(config.images, *checked, workers=config.workers,
                                     gate=gate_settings.settings_of(config)) as (shard_dir, raw):
            result = explanation.run_explain(config, split=raw_images.IMAGES_SPLIT, data_dir=shard_dir,
                                             source=raw_images.sidecar_fields(raw))
        print(raw_images.skipped_summary(raw, f"{explanation_folder.INDEX}'s source.skipped"))
    print(explanation.summary(result))
    report_dir = os.path.dirname(os.path.abspath(config.output_dir))
    if (os.path.basename(os.path.abspath(config.output_dir)) == html_report.EXPLANATIONS_DIR
            and os.path.isfile(os.path.join(report_dir, html_report.INDEX_FILE))):
        print(f"added to {html_report.write_index(report_dir)}")


def run() -> None:
    """Console entry point (setup.cfg) and `python explain.py`."""
    cli.run(ExplainConfig, main, __doc__, renamed=RENAMED)


if __name__ == "__main__":
    run()
