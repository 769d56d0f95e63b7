"""Writes a small synthetic dataset in NIH ChestX-ray14's format (`preprocess.synthetic_data`).

    python -m preprocess.synthetic --output_dir=runs/demo/data --num_patients=150
"""

import os
import sys

if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]  # run as a script: this folder's modules (config, images, ...) would shadow others

from absl import app, flags  # noqa: E402

import flags as project_flags  # noqa: E402
from preprocess.synthetic_data import SyntheticConfig, generate  # noqa: E402


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    values = flags.FLAGS
    if not values.output_dir:
        raise app.UsageError("--output_dir is required")
    config = SyntheticConfig(**{k: values[k].value for k in (
        "output_dir", "preset", "label_noise", "num_patients", "max_images_per_patient", "source_size",
        "abnormal_fraction", "bbox_fraction", "seed")})
    counts = generate(config)
    print(f"wrote {counts['images']} {config.preset} images ({counts['abnormal']} labelled abnormal, "
          f"{counts['flipped']} labels flipped, {counts['boxes']} boxes) of {counts['patients']} patients "
          f"to {config.output_dir}")


def run() -> None:
    """Console entry point (setup.cfg) and `python preprocess/synthetic.py`."""
    project_flags.run_tool(project_flags.define_synthetic_flags, main, __doc__)


if __name__ == "__main__":
    run()
