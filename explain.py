"""Where the model looks: Grad-CAM maps of a split's images, scored against the split's expert boxes.

    python explain.py --model_dir=runs/effnet --data_dir=shards --output_dir=explained
    python explain.py --model_dir=runs/effnet --model_dir=runs/dn --ensemble=submission.probabilities.json \\
        --data_dir=shards --output_dir=explained
    python explain.py --model_dir=runs/effnet --images=new_studies/ --output_dir=explained

Without --split it explains the folder's test split, or its only split besides train, and
otherwise asks for --split, listing the splits.
Writes, for the most confident true positives, false positives and false negatives (--per_group
each; or --image_ids, repeated; or every file of --images), a heatmap .npy and an overlay .png, then
localization.json (the pointing game and the energy inside the boxes of every boxed image of the
split, beside a centred-Gaussian baseline; not scored for --crop=bbox shards) and the index
explanations.json, and prints the localization table. With --output_dir=<report>/explanations
(a report folder of predict.py or ensemble.py), the report's index.html gains the gallery and
the localization table.
Bad input exits with status 1 and a one-line message naming the file and the fix; nothing is written.
"""

from __future__ import annotations

import os

from absl import flags

import flags as project_flags

FLAGS = flags.FLAGS


def _check_flags() -> tuple[tuple[int, int] | None, str | None]:
    """Paths and flags fail here, in a second; TensorFlow loads only for the real work.

    Returns:
      With --images, (the models' (image size, pixel limit), None); else (None, the split to explain:
      --split, or the one the manifest makes unambiguous).
    """
    from contracts import explanation_folder
    from evaluation import preflight
    from preprocess import raw_images

    raw_images.check_one_source(FLAGS.data_dir, FLAGS.images)
    if FLAGS.images is None:
        inputs = preflight.open_explain_inputs(FLAGS.model_dir, FLAGS.ensemble, FLAGS.data_dir, FLAGS.split,
                                               FLAGS.output_dir)
        return None, inputs.split.name
    preflight.explained_models(FLAGS.model_dir, FLAGS.ensemble)
    raw_images.check_output_outside_images(FLAGS.output_dir, "output_dir", FLAGS.images)
    return raw_images.check_images_inputs(FLAGS.model_dir, FLAGS.images,
                                          os.path.join(FLAGS.output_dir, explanation_folder.INDEX),
                                          output_flag="output_dir"), None


def main(argv: list[str]) -> None:
    del argv  # stray arguments are refused by project_flags.run_tool
    images_at, split = _check_flags()
    from contracts import explanation_folder
    from evaluation import explanation
    from preprocess import raw_images

    options = dict(ensemble=FLAGS.ensemble, image_ids=FLAGS.image_ids, per_group=FLAGS.per_group,
                   batch_size=FLAGS.global_batch_size)
    if images_at is None:
        result = explanation.run_explain(FLAGS.model_dir, FLAGS.data_dir, split, FLAGS.output_dir, **options)
    else:
        # The builder's own decoding, into a temporary shard folder removed afterwards.
        with raw_images.built_images(FLAGS.images, *images_at, workers=FLAGS.workers) as (shard_dir, raw):
            result = explanation.run_explain(FLAGS.model_dir, shard_dir, raw_images.IMAGES_SPLIT, FLAGS.output_dir,
                                             every_image=True, source=raw_images.sidecar_fields(raw), **options)
        print(raw_images.skipped_summary(raw, f"{explanation_folder.INDEX}'s source.skipped"))
    print(explanation.summary(result))
    from evaluation import html_report

    report_dir = os.path.dirname(os.path.abspath(FLAGS.output_dir))
    if (os.path.basename(os.path.abspath(FLAGS.output_dir)) == html_report.EXPLANATIONS_DIR
            and os.path.isfile(os.path.join(report_dir, html_report.INDEX_FILE))):
        print(f"added to {html_report.write_index(report_dir)}")


def run() -> None:
    """Console entry point (setup.cfg) and `python explain.py`: define the flags, then run `main`."""
    project_flags.run_tool(project_flags.define_explain_flags, main, __doc__, required=("model_dir", "output_dir"))


if __name__ == "__main__":
    run()
