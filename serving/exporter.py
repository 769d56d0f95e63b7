"""`run_export` behind export.py: trained run folders (+ ensemble file) → SavedModel + export.json."""

from __future__ import annotations

import datetime
import os
from typing import Any, Sequence

import keras
import tensorflow as tf
from absl import logging

from contracts import atomic, ensemble_file
from contracts.errors import UserInputError, check_output_folder
from contracts.export_folder import (
    EXPORT_INFO,
    EXPORT_SCHEMA_VERSION,
    INPUT_BYTES,
    INPUT_PIXELS,
    MODEL_CARD,
    OUTPUT_FINDINGS,
    PIXELS,
    SERVING_DEFAULT,
)
from contracts.labels import FINDINGS
from evaluation import settings
from evaluation.blend import check_threshold
from models import calibration
from models.heads import output_width
from models.saved import load_classifier
from serving import model_card, savedmodel
from serving.config import ExportConfig


def members(model_dirs: Sequence[str], ensemble: str | None,
            threshold: float | None) -> tuple[list[ensemble_file.Blended], float]:
    """The members in blend order, and the threshold (UserInputError for unusable runs or ensemble
    file); what export.py and `serving.api.Classifier.from_runs` serve."""
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
    return blended, chosen


def _check_export_dir(export_dir: str) -> None:
    if os.path.exists(export_dir) and (not os.path.isdir(export_dir) or os.listdir(export_dir)):
        raise UserInputError(f"--export_dir={export_dir} exists and is not an empty folder; "
                             "pass a new folder (exports are never overwritten in place)")


def _info(members, configs, threshold, module, warnings, no_findings) -> dict[str, Any]:
    crops = sorted({str(c.get("train_crop")) for c in configs})
    image_size, served = module.image_size, no_findings is None
    outputs = savedmodel.output_dtypes(len(members) > 1, served)
    return {
        "schema_version": EXPORT_SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "backbones": [c["backbone"] for c in configs],
        "members": [{"name": m.name, "weight": m.weight, "temperature": m.temperature,
                     "model_dir": os.path.abspath(m.run.path),
                     "backbone": config["backbone"], "weights": config.get("weights"),
                     "precision": config.get("precision"), "train_crop": config.get("train_crop"),
                     "finding_weights": list(m.finding_weights) if served else None,
                     "finding_temperatures": list(m.finding_temperatures) if served else None}
                    for m, config in zip(members, configs)],
        # The served findings' columns, or the one line saying why there are none.
        "findings": ({"output": OUTPUT_FINDINGS, "names": list(FINDINGS)} if served
                     else {"output": None, "why": no_findings}),
        "order": calibration.ORDER,
        "image_size": image_size,
        "crop": crops[0] if len(crops) == 1 else "mixed: " + ", ".join(crops),
        "served_crop": "none",
        "weights": sorted({str(c.get("weights")) for c in configs}),
        "threshold": threshold,
        "max_image_pixels": module.max_pixels,
        "signatures": {
            SERVING_DEFAULT: {"inputs": {INPUT_BYTES: "string [None]"}, "outputs": outputs},
            PIXELS: {"inputs": {INPUT_PIXELS: f"float32 [None, {image_size}, {image_size}, 3]"},
                     "outputs": outputs},
        },
        "warnings": warnings,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }


def _no_findings(chosen: Sequence[ensemble_file.Blended], classifiers) -> str | None:
    """Why p_findings cannot be served (one line), or None: every member has the findings head and
    per-finding weights and temperatures."""
    lacking = [m.name for m, c in zip(chosen, classifiers) if c.output_shape[-1] != output_width(True)]
    if lacking:
        return (f"no {OUTPUT_FINDINGS}: no findings head in {', '.join(lacking)} (trained with "
                "--findings_weight=0)")
    if any(m.finding_weights is None or m.finding_temperatures is None for m in chosen):
        return (f"no {OUTPUT_FINDINGS}: the ensemble file has no per-finding weights (written before "
                f"schema {ensemble_file.SCHEMA_VERSION}); rerun ensemble.py to serve the findings")
    return None


def build_module(chosen: Sequence[ensemble_file.Blended], threshold: float):
    """(ServingModule, run configs, warnings, why no findings or None) of the `chosen` members' runs:
    one image size, the lowest pixel limit of their training shards; UserInputError for unloadable
    runs or mixed sizes."""
    configs, classifiers, limits = [], [], []
    for run in (m.run for m in chosen):
        configs.append({**run.config, "train_crop": run.crop})
        classifiers.append(load_classifier(run))
        limits.append(run.max_image_pixels)
    sizes = sorted({int(c.input_shape[1]) for c in classifiers})
    if len(sizes) > 1:
        raise UserInputError(f"the models were trained at different image sizes {sizes}; export them "
                             "separately, or retrain at one size")
    warnings = [f"{c['backbone']} ({d}) was trained on --crop=bbox shards, but served images arrive "
                "uncropped: expect a shift between validation and serving"
                for c, d in zip(configs, (m.run.path for m in chosen)) if c["train_crop"] == "bbox"]
    for warning in warnings:
        logging.warning("%s", warning)
    no_findings = _no_findings(chosen, classifiers)
    if no_findings is not None:
        logging.info("%s", no_findings)
    findings = None if no_findings else [(m.finding_weights, m.finding_temperatures) for m in chosen]
    module = savedmodel.ServingModule(classifiers, [m.weight for m in chosen],
                                      [m.temperature for m in chosen], threshold, sizes[0], min(limits),
                                      findings)
    return module, configs, warnings, no_findings


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
    module, configs, warnings, no_findings = build_module(chosen_members, chosen_threshold)
    info = _info(chosen_members, configs, chosen_threshold, module, warnings, no_findings)
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
             f"findings: {OUTPUT_FINDINGS} ({len(FINDINGS)} columns)" if info["findings"]["output"]
             else info["findings"]["why"],
             f"model card: {os.path.join(export_dir, MODEL_CARD)}"]
    lines += [f"warning: {w}" for w in info["warnings"]]
    return "\n".join(lines)
