"""Runs `run_training` in a fresh process, for the tests that need their own TensorFlow runtime.

Usage: python -m tests.distributed_runner CONFIG_JSON MODEL_DIR RESULT_NPZ
  CONFIG_JSON: TrainConfig fields as JSON; MODEL_DIR: run_training's output folder;
  RESULT_NPZ: written with the final model weights (arr_0, arr_1, ... in model order); the
  summary (without config and model) goes to RESULT_NPZ + ".json".
Environment: TF_CONFIG for multi-worker runs; CXR_LOGICAL_CPUS=N splits the CPU into N logical
devices before TensorFlow starts (MirroredStrategy over CPUs).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import tensorflow as tf


def _split_cpu(count: int) -> None:
    physical = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        physical, [tf.config.LogicalDeviceConfiguration() for _ in range(count)])


def main(argv: list[str]) -> None:
    config_json, model_dir, result_npz = argv[1:4]
    if int(os.environ.get("CXR_LOGICAL_CPUS", "0")):
        _split_cpu(int(os.environ["CXR_LOGICAL_CPUS"]))
    from training.config import TrainConfig
    from training.loop import run_training

    result = run_training(TrainConfig(**dict(json.loads(config_json), model_dir=model_dir)))
    np.savez(result_npz, *result.pop("model").get_weights())
    result.pop("config")
    with open(result_npz + ".json", "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv)
