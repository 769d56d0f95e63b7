"""What a run leaves in `model_dir` besides checkpoints (`contracts.run_folder`)."""

from __future__ import annotations

import importlib.util
import json
import os
import zipfile
from typing import Any

import keras
import numpy as np
from absl import logging

from contracts import run_folder
from contracts.atomic import atomic_path, json_ready, write_text
from contracts.labels import FINDINGS
from contracts.prediction_files import FindingColumns, write_predictions
from models import calibration, precision
from training.validation import Scores


def keep_metrics_through(model_dir: str, epochs_done: int) -> None:
    """Drops metrics.jsonl's records of epochs after `epochs_done`: a resumed run redoes those."""
    path = os.path.join(model_dir, run_folder.METRICS)
    if os.path.exists(path):
        with open(path) as f:
            kept = [line for line in f if line.strip() and json.loads(line)["epoch"] <= epochs_done]
        write_text(path, "".join(kept))


def append_metrics(model_dir: str, record: dict[str, Any]) -> None:
    with open(os.path.join(model_dir, run_folder.METRICS), "a") as f:
        f.write(json.dumps(json_ready(record)) + "\n")


def tensorboard(model: keras.Model, model_dir: str, *, chief: bool) -> keras.callbacks.CallbackList:
    """Keras' TensorBoard callback on the chief (none elsewhere, or without the package)."""
    callbacks = []
    if chief and importlib.util.find_spec("tensorboard") is not None:
        callbacks.append(keras.callbacks.TensorBoard(
            log_dir=os.path.join(model_dir, run_folder.TENSORBOARD), write_graph=False, update_freq="epoch"))
    elif chief:
        logging.warning("the tensorboard package is not installed, so no TensorBoard events are written "
                        "(metrics.jsonl has the same numbers); `pip install tensorboard` to get them")
    return keras.callbacks.CallbackList(callbacks, model=model)


def export_model(classifier: keras.Model, path: str, epoch: int) -> None:
    """Saves a float32 clone of the trained graph to `path`, uncompiled, atomically, with `epoch` inside."""
    clone = precision.with_policy(classifier, run_folder.MODEL_PRECISION)
    # clone_model compiles the clone as the training model was (an unaugmented one is the training model):
    # saved so, model.keras carried the optimizer and its slots, and every load rebuilt them.
    bare = keras.Model(clone.input, clone.output, name=clone.name)
    with atomic_path(path) as tmp:
        bare.save(tmp)
        with zipfile.ZipFile(tmp, "a") as archive:
            archive.writestr(run_folder.MODEL_RUN_ENTRY, json.dumps({"epoch": epoch}))


def write_val_predictions(model_dir: str, scores: Scores, sidecar: dict[str, Any],
                          meta: dict[str, np.ndarray] | None = None,
                          parity: dict[str, Any] | None = None) -> str:
    """Writes val_predictions.csv from model.keras's float32 `scores`, p_abnormal after the temperature
    fitted on it (None with one class), and its sidecar with that temperature, what it changes there and
    the `parity` with the mixed policy that trained (None: trained in float32)."""
    path = os.path.join(model_dir, run_folder.VAL_PREDICTIONS)
    probs, labels = scores.probabilities[:, 1].astype(np.float64), np.asarray(scores.labels)
    temperature = calibration.fit_temperature(labels, probs)
    handed = probs if temperature is None else calibration.apply_temperature(probs, temperature)
    known = labels >= 0
    changes = {"fitted_on": run_folder.VAL_PREDICTIONS, "records": int(known.sum()),
               "nll_before": calibration.negative_log_likelihood(labels[known], probs[known]),
               "nll_after": calibration.negative_log_likelihood(labels[known], handed[known]),
               "ece_before": calibration.expected_calibration_error(labels, probs),
               "ece_after": calibration.expected_calibration_error(labels, handed)}
    sidecar = {**sidecar, run_folder.TEMPERATURE: temperature, run_folder.CALIBRATION: json_ready(changes),
               run_folder.PREDICTED_UNDER: run_folder.MODEL_PRECISION,
               run_folder.PRECISION_PARITY: None if parity is None else json_ready(parity)}
    findings = None
    if scores.findings is not None:
        calibrated, temperatures = calibration.calibrate_findings(scores.finding_labels, scores.findings)
        findings = FindingColumns(calibrated, scores.findings.astype(np.float64), scores.finding_labels)
        sidecar[run_folder.FINDING_TEMPERATURES] = dict(zip(FINDINGS, temperatures))
    write_predictions(path, scores.image_ids, handed, scores.labels, sidecar=sidecar, uncalibrated=probs,
                      meta=meta, findings=findings)
    return path
