"""`run_export` behind export.py: trained run folders (+ ensemble file) → SavedModel + export.json."""

from __future__ import annotations

import datetime
import os
from typing import Any, Sequence

import keras
import tensorflow as tf
from absl import logging

from contracts import atomic, ensemble_file, run_folder
from contracts.errors import UserInputError, check_output_folder
from contracts.export_folder import (
    EXPORT_INFO,
    EXPORT_SCHEMA_VERSION,
    INPUT_BYTES,
    INPUT_PIXELS,
    MODEL_CARD,
    PIXELS,
    SERVING_DEFAULT,
)
from evaluation import settings
from evaluation.blend import check_threshold
from models import calibration
from models.saved import load_classifier
from serving import model_card, savedmodel
from serving.config import ExportConfig


def members(model_dirs: Sequence[str], ensemble: str | None, threshold: float | None):
    """[(name, weight, model_dir, temperature)] in blend order, and the threshold (UserInputError for
    unusable runs or ensemble file); what export.py and `serving.api.Classifier.from_runs` serve."""
    if ensemble is not None and threshold is not None:
        raise UserInputError("--threshold and --ensemble both set the threshold; drop --threshold "
                             "(the ensemble file holds the one chosen on validation)")
    blended, loaded = ensemble_file.blended_models(model_dirs, ensemble)
    if loaded is None:
        run = blended[0].run
        if run.temperature is None:
            logging.warning("%s", run.no_temperature_note())
        chosen = settings.SINGLE_MODEL_THRESHOLD if threshold is None else check_threshold(threshold)
    else:
        chosen = loaded.threshold
    return [(m.name, m.weight, m.run.path, m.temperature) for m in blended], chosen


def _check_export_dir(export_dir: str) -> None:
    if os.path.exists(export_dir) and (not os.path.isdir(export_dir) or os.listdir(export_dir)):
        raise UserInputError(f"--export_dir={export_dir} exists and is not an empty folder; "
                             "pass a new folder (exports are never overwritten in place)")


def _info(members, configs, threshold, image_size, max_pixels, warnings) -> dict[str, Any]:
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


def build_module(chosen: Sequence[tuple], threshold: float):
    """(ServingModule, run configs, warnings) of the `chosen` members' runs: one image size, the lowest pixel
    limit of their training shards; UserInputError for unloadable runs or mixed sizes."""
    configs, classifiers, limits = [], [], []
    for _, _, model_dir, _ in chosen:
        run = run_folder.RunFolder.open(model_dir)
        configs.append({**run.config, "train_crop": run.crop})
        classifiers.append(load_classifier(run))
        limits.append(run.max_image_pixels)
    sizes = sorted({int(c.input_shape[1]) for c in classifiers})
    if len(sizes) > 1:
        raise UserInputError(f"the models were trained at different image sizes {sizes}; export them "
                             "separately, or retrain at one size")
    warnings = [f"{c['backbone']} ({d}) was trained on --crop=bbox shards, but served images arrive "
                "uncropped: expect a shift between validation and serving"
                for c, (_, _, d, _) in zip(configs, chosen) if c["train_crop"] == "bbox"]
    for warning in warnings:
        logging.warning("%s", warning)
    max_pixels = min(limits)
    module = savedmodel.ServingModule(classifiers, [m[1] for m in chosen], [m[3] for m in chosen],
                                      threshold, sizes[0], max_pixels)
    return module, configs, warnings


def run_export(config: ExportConfig) -> dict[str, Any]:
    """Exports `config.model_dir`'s runs (several need `config.ensemble`) as one SavedModel with
    export.json and MODEL_CARD.md in `config.export_dir`, a new or empty folder that appears whole;
    returns export.json's record.

    Raises UserInputError for unusable inputs or folder.
    """
    model_dirs, export_dir = config.model_dir, config.export_dir
    ensemble, threshold = config.ensemble, config.threshold
    chosen_members, chosen_threshold = members(model_dirs, ensemble, threshold)
    check_output_folder(os.path.dirname(os.path.abspath(export_dir)), "export_dir")  # the journal goes there
    transaction = atomic.Transaction(export_dir)  # first undoes a killed export into it
    _check_export_dir(export_dir)
    module, configs, warnings = build_module(chosen_members, chosen_threshold)
    info = _info(chosen_members, configs, chosen_threshold, module.image_size, module.max_pixels, warnings)
    card = model_card.render(info, config)  # before any write: a report over other models is refused
    with transaction, transaction.path(export_dir) as staging:
        savedmodel.save(module, staging)
        atomic.write_json(os.path.join(staging, EXPORT_INFO), info)
        atomic.write_text(os.path.join(staging, MODEL_CARD), card)
    return info


def summary(info: dict[str, Any], export_dir: str) -> str:
    members = ", ".join(f"{m['name']} {m['weight']:.3f} (temperature {m['temperature']:.3f})"
                        for m in info["members"])
    lines = [f"exported {members} at {info['image_size']} px, threshold {info['threshold']:.4f} "
             f"-> {export_dir}",
             f"signatures: serving_default(image_bytes), pixels(float32 0..255); see {EXPORT_INFO}",
             f"model card: {os.path.join(export_dir, MODEL_CARD)}"]
    lines += [f"warning: {w}" for w in info["warnings"]]
    return "\n".join(lines)
