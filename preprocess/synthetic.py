"""Writes a small synthetic dataset in NIH ChestX-ray14's format (`preprocess.synthetic_data`).

    python preprocess/synthetic.py --output_dir=runs/demo/data --num_patients=150
"""

import os
import sys

if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]  # run as a script: this folder's modules (config, images, ...) would shadow others

from contracts import cli  # noqa: E402
from preprocess.synthetic_data import SyntheticConfig, generate  # noqa: E402


def main(config: SyntheticConfig) -> None:
    counts = generate(config)
    print(f"wrote {counts['images']} {config.preset} images ({counts['abnormal']} labelled abnormal, "
          f"{counts['flipped']} labels flipped, {counts['boxes']} boxes) of {counts['patients']} patients "
          f"to {config.output_dir}")


def run() -> None:
    """Console entry point (setup.cfg) and `python preprocess/synthetic.py`."""
    cli.run(SyntheticConfig, main, __doc__)


if __name__ == "__main__":
    run()
