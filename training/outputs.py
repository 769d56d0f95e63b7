"""What a run leaves in `model_dir` besides checkpoints: metrics.jsonl, model.keras, val predictions."""

from __future__ import annotations

import json
import os
import zipfile
from typing import Any

import keras
import numpy as np

from contracts import run_folder
from contracts.atomic import atomic_path, json_ready, write_text
from contracts.prediction_files import write_predictions
from models import precision
from training import calibration
from training.validation import Scores


class MetricsLog:
    """`model_dir/metrics.jsonl`: one JSON object per completed epoch (`epoch` counts from 1)."""

    def __init__(self, model_dir: str):
        self.path = os.path.join(model_dir, run_folder.METRICS)

    def read(self) -> list[dict[str, Any]]:
        """Returns the records written so far (none when the file does not exist)."""
        if not os.path.exists(self.path):
            return []
        with open(self.path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def keep_through(self, epochs_done: int) -> None:
        """Drops the records of epochs after `epochs_done` (1-based): a resumed run redoes those."""
        kept = [r for r in self.read() if r["epoch"] <= epochs_done]
        write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def append(self, record: dict[str, Any]) -> None:
        """Appends one epoch's record (non-finite numbers become null)."""
        with open(self.path, "a") as f:
            f.write(json.dumps(json_ready(record)) + "\n")


class ModelExporter:
    """Saves the trained classifier as a float32 `.keras` file that loads with safe_mode.

    The file holds a float32 clone of the very graph that trains (`models.precision.with_policy`),
    not a model rebuilt from flags, so it computes the function that was validated whatever the
    constructor's arguments were. It carries no optimizer state and no augmentation block.
    """

    def __init__(self, classifier: keras.Model):
        self._classifier = classifier
        self._copy: keras.Model | None = None

    def export(self, path: str, epoch: int) -> None:
        """Writes the classifier's current weights to `path`, atomically (a reader never sees half a
        file), recording `epoch` inside it (`contracts.run_folder.exported_epochs` reads it)."""
        if self._copy is None:
            self._copy = precision.with_policy(self._classifier, "float32")
        else:
            self._copy.set_weights(self._classifier.get_weights())
        with atomic_path(path) as tmp:
            self._copy.save(tmp)
            with zipfile.ZipFile(tmp, "a") as archive:
                archive.writestr(run_folder.MODEL_RUN_ENTRY, json.dumps({"epoch": epoch}))


def calibration_record(labels, probs) -> dict[str, Any]:
    """The run's own temperature, fitted on its validation predictions, with what it changes there:
    `run_folder.TEMPERATURE` (None when validation holds one class) and `run_folder.CALIBRATION`."""
    temperature = calibration.fit_temperature(labels, probs)
    applied = probs if temperature is None else calibration.apply_temperature(probs, temperature)
    return {run_folder.TEMPERATURE: temperature, run_folder.CALIBRATION: json_ready({
        "fitted_on": run_folder.VAL_PREDICTIONS, "records": int((labels >= 0).sum()),
        "nll_before": calibration.negative_log_likelihood(labels[labels >= 0], probs[labels >= 0]),
        "nll_after": calibration.negative_log_likelihood(labels[labels >= 0], applied[labels >= 0]),
        "ece_before": calibration.expected_calibration_error(labels, probs),
        "ece_after": calibration.expected_calibration_error(labels, applied)})}


def write_val_predictions(model_dir: str, scores: Scores, sidecar: dict[str, Any],
                          meta: dict[str, np.ndarray] | None = None) -> str:
    """Writes `val_predictions.csv` (image_id, p_abnormal, label, p_uncalibrated: predict.py's
    columns, and the patient columns `meta`) and its sidecar `val_predictions.json`, which also
    records the run's temperature fitted on these predictions (`calibration_record`); p_abnormal is
    the softmax output after it.

    Returns:
      The CSV path.
    """
    path = os.path.join(model_dir, run_folder.VAL_PREDICTIONS)
    probs = scores.probabilities[:, 1].astype(np.float64)
    record = calibration_record(np.asarray(scores.labels), probs)
    temperature = record[run_folder.TEMPERATURE]
    handed = probs if temperature is None else calibration.apply_temperature(probs, temperature)
    write_predictions(path, scores.image_ids, handed, scores.labels, sidecar={**sidecar, **record},
                      uncalibrated=probs, meta=meta)
    return path
