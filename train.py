"""Trains one backbone on TFRecord shards.

  python train.py --backbone=efficientnet_b3 --data_dir=SHARDS --model_dir=OUT [--strategy=...]

Rerunning the same command resumes an interrupted run. OUT holds what `contracts/run_folder.py`
lists (config.json, metrics.jsonl, checkpoints/, model.keras, val_predictions.csv, tensorboard/).
"""

from __future__ import annotations

import dataclasses
import sys

from absl import flags, logging

import flags as project_flags
from training.config import TrainConfig, check_resumable, resolve_config

FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    del argv  # stray arguments are refused by project_flags.run_tool
    from contracts.errors import check_output_folder

    config = TrainConfig(**{f.name: FLAGS[f.name].value for f in dataclasses.fields(TrainConfig)})
    # Paths and flags fail here, in a second; TensorFlow loads only for the real work.
    check_output_folder(FLAGS.model_dir, "model_dir")
    check_resumable(resolve_config(config), FLAGS.model_dir)
    from training.loop import run_training
    logging.info("train.py flags: %s (model_dir=%s)", dataclasses.asdict(config), FLAGS.model_dir)
    try:
        result = run_training(config, FLAGS.model_dir)
    except FloatingPointError as err:  # bad flags and files: project_flags.run_tool says them
        sys.exit(f"train.py: {err}")
    logging.info("done: %d epoch(s), model %s", result["epochs_done"], result["model_path"])


def run() -> None:
    """Console entry point (setup.cfg) and `python train.py`: define the flags, then run `main`."""
    project_flags.run_tool(project_flags.define_train_flags, main, __doc__,
                           required=("backbone", "data_dir", "model_dir"))


if __name__ == "__main__":
    run()
