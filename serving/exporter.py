"""`run_export` behind export.py: trained run folders (+ ensemble file) → SavedModel + export.json."""

from __future__ import annotations

import dataclasses
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
    OUTPUT_FINDINGS,
    PIXELS,
    SERVING_DEFAULT,
    TRIAGE_INFO,
    TTA_INFO,
    VALIDATION_INFO,
)
from contracts.labels import FINDINGS
from evaluation import settings as settings_lib
from evaluation import triage
from evaluation.blend import check_threshold
from evaluation.triage import Triage, TriageSettings
from models import calibration
from models.heads import output_width
from models.saved import load_classifier
from models.tta import MAX_VIEWS, TRANSFORMS
from serving import model_card, savedmodel, validation
from serving.config import ExportConfig


@dataclasses.dataclass(frozen=True)
class Plan:
    """What an export serves: the members in blend order, each one's test-time views, the threshold,
    and the triage (None: every row review, `no_triage` says why in one line)."""
    members: list[ensemble_file.Blended]
    views: list[int]
    threshold: float
    triage: Triage | None
    no_triage: str | None = None
    validation: dict[str, Any] | None = None  # serving.validation.status of the members


def plan(model_dirs: Sequence[str], ensemble: str | None = None, threshold: float | None = None,
         tta: int | None = None, settings: TriageSettings | None = None) -> Plan:
    """What export.py and `serving.api.Classifier.from_runs` serve of these runs (+ ensemble file):
    one run takes `tta` views (None: 1) and its own triage with `settings` (None: the defaults); an
    ensemble its file's views, threshold and triage. UserInputError for unusable runs, file or flags."""
    if ensemble is not None and threshold is not None:
        raise UserInputError("--threshold and --ensemble both set the threshold; drop --threshold "
                             "(the ensemble file holds the one chosen on validation)")
    blended, loaded = ensemble_file.blended_models(model_dirs, ensemble)
    if loaded is None:
        run = blended[0].run
        if run.temperature is None:
            logging.warning("%s", run.no_temperature_note())
        chosen = settings_lib.SINGLE_MODEL_THRESHOLD if threshold is None else check_threshold(threshold)
        found = triage.run_triage(run, settings or triage.TriageSettings())
        why = (f"no triage: {run.path} has no labelled {run_folder.VAL_PREDICTIONS} to fit it on; every "
               "image is served as review")
        views = [1 if tta is None else tta]
        return _planned(Plan(blended, views, chosen, found, why if found is None else None,
                             validation.status([run], None, views)))
    views = [m.tta for m in loaded.members]
    if tta is not None and any(v != tta for v in views):
        raise UserInputError(f"--tta={tta} with --ensemble: its members' predictions averaged {views} views "
                             "each, which the export serves; drop --tta, or rerun predict.py and ensemble.py "
                             f"with --tta={tta}")
    found = None if loaded.triage is None else triage.from_record(loaded.triage, loaded.path)
    why = (f"no triage: --ensemble={loaded.path} holds none (written before schema "
           f"{ensemble_file.SCHEMA_VERSION}, or without labelled predictions to fit it on); every image is "
           "served as review; rerun ensemble.py to fit one")
    return _planned(Plan(blended, views, loaded.threshold, found, why if found is None else None,
                         validation.status([m.run for m in blended], loaded, views)))


def _planned(chosen: Plan) -> Plan:
    if not all(1 <= views <= MAX_VIEWS for views in chosen.views):
        names = ", ".join(TRANSFORMS)
        raise UserInputError(f"test-time views {chosen.views}: each 1 to at most {MAX_VIEWS} ({names}); "
                             f"predict and export with --tta between 1 and {MAX_VIEWS}")
    if chosen.no_triage is not None:
        logging.warning("%s", chosen.no_triage)
    return chosen


def _check_export_dir(export_dir: str) -> None:
    if os.path.exists(export_dir) and (not os.path.isdir(export_dir) or os.listdir(export_dir)):
        raise UserInputError(f"--export_dir={export_dir} exists and is not an empty folder; "
                             "pass a new folder (exports are never overwritten in place)")


def _info(served: Plan, configs, module, warnings, no_findings) -> dict[str, Any]:
    members, threshold = served.members, served.threshold
    crops = sorted({str(c.get("train_crop")) for c in configs})
    image_size, served_findings = module.image_size, no_findings is None
    outputs = savedmodel.output_dtypes(len(members) > 1, served_findings, module.spread)
    return {
        "schema_version": EXPORT_SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "backbones": [c["backbone"] for c in configs],
        "members": [{"name": m.name, "weight": m.weight, "temperature": m.temperature,
                     "model_dir": os.path.abspath(m.run.path),
                     "backbone": config["backbone"], "weights": config.get("weights"),
                     "precision": config.get("precision"), "train_crop": config.get("train_crop"),
                     "finding_weights": list(m.finding_weights) if served_findings else None,
                     "finding_temperatures": list(m.finding_temperatures) if served_findings else None}
                    for m, config in zip(members, configs)],
        # The served findings' columns, or the one line saying why there are none.
        "findings": ({"output": OUTPUT_FINDINGS, "names": list(FINDINGS)} if served_findings
                     else {"output": None, "why": no_findings}),
        # The served triage's thresholds and what they rest on, or the one line saying why there is none.
        TRIAGE_INFO: {"why": served.no_triage} if served.triage is None else triage.to_record(served.triage),
        VALIDATION_INFO: served.validation,
        TTA_INFO: [{"name": m.name, "views": views, "transforms": list(TRANSFORMS[:views])}
                   for m, views in zip(members, served.views)],
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


def build_module(served: Plan):
    """(ServingModule, run configs, warnings, why no findings or None) of the `served` members' runs:
    one image size, the lowest pixel limit of their training shards; UserInputError for unloadable
    runs or mixed sizes."""
    chosen = served.members
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
                                      [m.temperature for m in chosen], served.threshold, sizes[0],
                                      min(limits), findings,
                                      [(v, m.run.temperature or 1.0) for v, m in zip(served.views, chosen)],
                                      served.triage)
    return module, configs, warnings, no_findings


def run_export(config: ExportConfig) -> dict[str, Any]:
    """Exports `config.model_dir`'s runs (several need `config.ensemble`) as one SavedModel with
    export.json and MODEL_CARD.md in `config.export_dir`, a new or empty folder that appears whole;
    returns export.json's record.

    Raises UserInputError for unusable inputs or folder.
    """
    export_dir = config.export_dir
    triage.refuse_with_ensemble(config)
    served = plan(config.model_dir, config.ensemble, config.threshold, config.tta, triage.settings_of(config))
    check_output_folder(os.path.dirname(os.path.abspath(export_dir)), "export_dir")  # the journal goes there
    transaction = atomic.Transaction(export_dir)  # first undoes a killed export into it
    _check_export_dir(export_dir)
    module, configs, warnings, no_findings = build_module(served)
    info = _info(served, configs, module, warnings, no_findings)
    ensemble = ensemble_file.load_ensemble(config.ensemble) if config.ensemble else None
    report = model_card.report_folder(config, ensemble)
    info[VALIDATION_INFO] = validation.with_report(info[VALIDATION_INFO], report[0])
    card = model_card.render(info, config, report)  # before any write: a report over other models is refused
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
             _triage_line(info[TRIAGE_INFO]), validation.line(info[VALIDATION_INFO]),
             f"model card: {os.path.join(export_dir, MODEL_CARD)}"]
    lines += [f"warning: {w}" for w in info["warnings"]]
    return "\n".join(lines)


def _triage_line(record: dict[str, Any]) -> str:
    if "why" in record:
        return record["why"]
    served = triage.from_record(record, EXPORT_INFO)
    return (f"triage ({record['groups']}): {triage.describe(served.rule_out, 'rule-out')}; "
            f"{triage.describe(served.rule_in, 'rule-in')}; spread limit {served.spread_limit}")
