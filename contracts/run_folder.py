"""The run folder train.py writes, by name: one owner for its file names and its `config.json` reader.

  config.json            every resolved field of the run, plus the runtime (strategy, replicas)
  metrics.jsonl          one JSON object per epoch
  tensorboard/           the epoch logs
  checkpoints/           model, optimizer, epochs done, step and callback state, for resuming
  model.keras            the best epoch's float32 inference classifier (raw 0..255 pixels in);
                         the zip also holds MODEL_RUN_ENTRY, {"epoch": N}
  val_predictions.csv    image_id, p_abnormal, label, p_uncalibrated of that epoch, a prediction
                         file (contracts.prediction_files: p_abnormal after the temperature), +
                         val_predictions.json sidecar, whose "epoch" is N too: the two are one
                         pair, repaired on resume; the sidecar's "temperature" is the run's own,
                         fitted on these predictions' p_uncalibrated

Every file is written through `contracts.atomic`. JSON has no NaN: undefined metrics are null.
"""

from __future__ import annotations

import json
import os
import zipfile
from typing import Any

from contracts import manifest as manifest_lib
from contracts.errors import UserInputError, repeat_hint

CONFIG = "config.json"
METRICS = "metrics.jsonl"
TENSORBOARD = "tensorboard"
CHECKPOINTS = "checkpoints"
MODEL = "model.keras"
VAL_PREDICTIONS = "val_predictions.csv"
VAL_SIDECAR = "val_predictions.json"  # the sidecar of VAL_PREDICTIONS (contracts.prediction_files)
TEMPERATURE = "temperature"  # in VAL_SIDECAR: the run's temperature (training.calibration), null if unfitted
CALIBRATION = "calibration"  # in VAL_SIDECAR: what the temperature changes on validation (NLL, ECE)
RUN_FILES = (CONFIG, METRICS, MODEL, VAL_PREDICTIONS, VAL_SIDECAR)  # what no other tool may write over
MODEL_RUN_ENTRY = "cxr_run.json"  # inside MODEL (a zip that Keras loads ignoring it): {"epoch": N}


def exported_epochs(model_dir: str) -> tuple[int | None, int | None]:
    """Returns the epochs `model.keras` and `val_predictions.csv` come from (None: absent or
    unrecorded, e.g. written before the epoch was recorded)."""
    model_epoch = val_epoch = None
    try:
        with zipfile.ZipFile(os.path.join(model_dir, MODEL)) as archive:
            model_epoch = json.loads(archive.read(MODEL_RUN_ENTRY)).get("epoch")
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        pass
    try:
        with open(os.path.join(model_dir, VAL_SIDECAR)) as f:
            val_epoch = json.load(f).get("epoch")
    except (OSError, ValueError, AttributeError):
        pass
    return model_epoch, val_epoch


def no_temperature_note(model_dir: str) -> str:
    """What a tool says when `run_temperature(model_dir)` is None and it uses the raw probability."""
    return (f"{model_dir} has no fitted temperature (trained without validation, on validation of one "
            "class, or before temperatures were fitted): its probabilities are used uncalibrated")


def run_temperature(model_dir: str) -> float | None:
    """Returns the temperature training fitted on the run's validation predictions, or None when the
    run has none (trained without validation, validation of one class, or before temperatures)."""
    try:
        with open(os.path.join(model_dir, VAL_SIDECAR)) as f:
            value = json.load(f).get(TEMPERATURE)
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


def list_hint(model_dir: str) -> str:
    """The fix to add when `--model_dir` looks like several folders joined by commas."""
    return repeat_hint(model_dir, "model_dir", "model")


def load_run_config(model_dir: str) -> dict[str, Any]:
    """Reads `model_dir/config.json`, the training run's frozen config.

    Raises:
      UserInputError: missing, unreadable, or without "backbone".
    """
    path = os.path.join(model_dir, CONFIG)
    if not os.path.exists(path):
        raise UserInputError(f"{path} not found: --model_dir={model_dir} is not a folder written by "
                             f"train.py{list_hint(model_dir)}")
    try:
        with open(path) as f:
            config = json.load(f)
    except json.JSONDecodeError as err:
        raise UserInputError(f"{path}: not valid JSON ({err}); restore the file train.py wrote") from err
    if not isinstance(config, dict) or "backbone" not in config:
        raise UserInputError(f"{path}: no \"backbone\" field; restore the file train.py wrote")
    return config


def _crop_of(data_dir: str) -> str | None:
    try:
        return manifest_lib.load_manifest(data_dir).get("config", {}).get("crop")
    except (OSError, ValueError):  # no manifest, or not JSON
        return None


def train_crop(model_dir: str, config: dict[str, Any]) -> str | None:
    """Returns the crop mode of the shards a run trained on, or None when nothing records it.

    Looked up in the run's config.json, then in the sidecar of its val_predictions.csv, then in the
    manifest of its data_dir (a relative data_dir only resolves from where training ran).
    """
    if config.get("crop"):
        return config["crop"]
    sidecar = os.path.join(model_dir, VAL_SIDECAR)
    if os.path.exists(sidecar):
        try:
            with open(sidecar) as f:
                recorded = json.load(f).get("train_crop")
        except (json.JSONDecodeError, AttributeError):
            recorded = None
        if recorded:
            return recorded
    return _crop_of(config["data_dir"]) if config.get("data_dir") else None


