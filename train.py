"""Trains one backbone on TFRecord shards.

  python train.py --backbone=efficientnet_b3 --data_dir=SHARDS --model_dir=OUT [--strategy=...]

Rerunning the same command resumes an interrupted run. OUT holds what `contracts/run_folder.py`
lists (config.json, metrics.jsonl, checkpoints/, model.keras, val_predictions.csv, tensorboard/).
"""

from __future__ import annotations

from contracts import cli
from training.config import TrainConfig


def main(config: TrainConfig) -> None:
    import dataclasses

    from absl import logging

    from training.loop import run_training

    logging.info("train.py settings: %s", dataclasses.asdict(config))
    try:
        result = run_training(config)
    except FloatingPointError as err:  # a diverged loss is no bad input, but still one line
        raise SystemExit(f"train.py: {err}") from None
    logging.info("done: %d epoch(s), model %s", result["epochs_done"], result["model_path"])


def run() -> None:
    """Console entry point (setup.cfg) and `python train.py`."""
    cli.run(TrainConfig, main, __doc__)


if __name__ == "__main__":
    run()
