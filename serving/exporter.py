"""`run_export` behind export.py: trained run folders (+ an ensemble file) → one SavedModel + export.json."""

from __future__ import annotations

import datetime
import os
import shutil
import tempfile
from typing import Any, Sequence

from absl import logging

from contracts import ensemble_file, run_folder
from contracts import manifest as manifest_lib
from contracts.atomic import write_json
from contracts.errors import UserInputError, check_output_folder
from contracts.export_folder import (
    EXPORT_INFO,
    EXPORT_SCHEMA_VERSION,
    INPUT_BYTES,
    INPUT_PIXELS,
    PIXELS,
    SERVING_DEFAULT,
)
from evaluation import settings
from evaluation.blend import check_threshold
from models.saved import load_classifier
from preprocess.images import MAX_IMAGE_PIXELS
from serving.config import ExportConfig
from training import calibration


def _members(model_dirs: Sequence[str], ensemble: str | None, threshold: float | None):
    """Returns [(name, weight, model_dir, temperature)] in blend order and the threshold: one model
    takes its run's own temperature (1 when it has none), an ensemble its file's."""
    if not model_dirs:
        raise UserInputError("no --model_dir given; pass the folder(s) train.py wrote")
    if len(model_dirs) > 1 and ensemble is None:
        raise UserInputError(
            f"{len(model_dirs)} --model_dir values need --ensemble=FILE (the .probabilities.json that "
            "ensemble.py wrote beside its submission) for their weights and threshold")
    if ensemble is None:
        name = run_folder.load_run_config(model_dirs[0])["backbone"]
        chosen = settings.SINGLE_MODEL_THRESHOLD if threshold is None else check_threshold(threshold)
        temperature = run_folder.run_temperature(model_dirs[0])
        if temperature is None:
            logging.warning("%s", run_folder.no_temperature_note(model_dirs[0]))
        return [(name, 1.0, model_dirs[0], temperature or 1.0)], chosen
    if threshold is not None:
        raise UserInputError("--threshold and --ensemble both set the threshold; drop --threshold "
                             "(the ensemble file holds the one chosen on validation)")
    loaded = ensemble_file.load_ensemble(ensemble)
    pairs = ensemble_file.match_members(loaded, model_dirs)
    return ([(member.name, member.weight, model_dir, member.temperature) for member, model_dir in pairs],
            loaded.threshold)


def _max_pixels(config: dict[str, Any]) -> int:
    # Refuse what the training shards' builder refused; its manifest records the limit.
    try:
        manifest = manifest_lib.load_manifest(config["data_dir"])
        return int(manifest["config"].get("max_image_pixels", MAX_IMAGE_PIXELS))
    except (KeyError, OSError, ValueError, TypeError):
        return MAX_IMAGE_PIXELS


def _check_export_dir(export_dir: str) -> None:
    if os.path.exists(export_dir) and (not os.path.isdir(export_dir) or os.listdir(export_dir)):
        raise UserInputError(f"--export_dir={export_dir} exists and is not an empty folder; "
                             "pass a new folder (exports are never overwritten in place)")
    check_output_folder(os.path.dirname(os.path.abspath(export_dir)), "export_dir")


def _info(members, configs, threshold, image_size, max_pixels, warnings) -> dict[str, Any]:
    import keras
    import tensorflow as tf

    from serving import savedmodel

    crops = sorted({str(c.get("train_crop")) for c in configs})
    return {
        "schema_version": EXPORT_SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "backbones": [c["backbone"] for c in configs],
        "members": [{"name": name, "weight": weight, "temperature": temperature,
                     "model_dir": os.path.abspath(model_dir),
                     "backbone": config["backbone"], "weights": config.get("weights"),
                     "precision": config.get("precision"), "train_crop": config.get("train_crop")}
                    for (name, weight, model_dir, temperature), config in zip(members, configs)],
        "order": calibration.ORDER,
        "image_size": image_size,
        "crop": crops[0] if len(crops) == 1 else "mixed: " + ", ".join(crops),
        "served_crop": "none",
        "weights": sorted({str(c.get("weights")) for c in configs}),
        "threshold": threshold,
        "max_image_pixels": max_pixels,
        "signatures": {
            SERVING_DEFAULT: {"inputs": {INPUT_BYTES: "string [None]"},
                              "outputs": savedmodel.output_dtypes(len(members) > 1)},
            PIXELS: {"inputs": {INPUT_PIXELS: f"float32 [None, {image_size}, {image_size}, 3]"},
                     "outputs": savedmodel.output_dtypes(len(members) > 1)},
        },
        "warnings": warnings,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }


def run_export(config: ExportConfig) -> dict[str, Any]:
    """Exports `config.model_dir`'s runs (several need `config.ensemble`) as one SavedModel in
    `config.export_dir` (a new or empty folder), with export.json; returns that record.

    The folder appears whole or not at all: it is written beside itself and renamed into place.

    Raises:
      UserInputError: a missing model.keras, an ensemble file that does not match the folders,
        several folders without an ensemble, members trained at different sizes, an unusable
        export folder.
    """
    model_dirs, export_dir = config.model_dir, config.export_dir
    ensemble, threshold = config.ensemble, config.threshold
    members, chosen_threshold = _members(model_dirs, ensemble, threshold)
    _check_export_dir(export_dir)
    configs, classifiers = [], []
    for _, _, model_dir, _ in members:
        config = run_folder.load_run_config(model_dir)
        config["train_crop"] = run_folder.train_crop(model_dir, config)
        configs.append(config)
        classifiers.append(load_classifier(model_dir))
    sizes = sorted({int(c.input_shape[1]) for c in classifiers})
    if len(sizes) > 1:
        raise UserInputError(f"the models were trained at different image sizes {sizes}; export them "
                             "separately, or retrain at one size")
    warnings = [f"{c['backbone']} ({d}) was trained on --crop=bbox shards, but served images arrive "
                "uncropped: expect a shift between validation and serving" for c, (_, _, d, _) in zip(configs, members)
                if c["train_crop"] == "bbox"]
    for warning in warnings:
        logging.warning("%s", warning)
    max_pixels = min(_max_pixels(c) for c in configs)
    info = _info(members, configs, chosen_threshold, sizes[0], max_pixels, warnings)
    _write(members, classifiers, chosen_threshold, sizes[0], max_pixels, export_dir, info)
    return info


def _write(members, classifiers, threshold, image_size, max_pixels, export_dir, info) -> None:
    from serving import savedmodel

    module = savedmodel.ServingModule(
        [savedmodel.ServedMember(name, classifier, weight, temperature)
         for (name, weight, _, temperature), classifier in zip(members, classifiers)],
        threshold, image_size, max_pixels)
    parent = os.path.dirname(os.path.abspath(export_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".partial-export-", dir=parent)
    try:
        savedmodel.save(module, staging)
        write_json(os.path.join(staging, EXPORT_INFO), info)
        if os.path.isdir(export_dir):
            os.rmdir(export_dir)  # checked empty above
        os.replace(staging, export_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def summary(info: dict[str, Any], export_dir: str) -> str:
    """Returns what an export wrote, in a few lines."""
    members = ", ".join(f"{m['name']} {m['weight']:.3f} (temperature {m['temperature']:.3f})" for m in info["members"])
    lines = [f"exported {members} at {info['image_size']} px, threshold {info['threshold']:.4f} -> {export_dir}",
             f"signatures: serving_default(image_bytes), pixels(float32 0..255); see {EXPORT_INFO}"]
    lines += [f"warning: {w}" for w in info["warnings"]]
    return "\n".join(lines)
