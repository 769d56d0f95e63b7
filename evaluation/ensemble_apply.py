"""predict.py --ensemble: each model's prediction file blended by an ensemble file's weights,
temperatures (per finding too) and triage, into one prediction file."""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
from absl import logging

from contracts import ensemble_file
from contracts.errors import UserInputError
from contracts.output_names import TRIAGE, views
from contracts.prediction_files import (
    STUDY,
    FindingColumns,
    Predictions,
    align,
    read_predictions,
    write_predictions,
)
from contracts.run_folder import PREDICTED_UNDER
from evaluation import blend as blend_lib
from evaluation import ensemble_triage, finding_blend, studies, triage
from evaluation.ensembling import BLENDED, BLENDED_FINDINGS, ENSEMBLE


def apply_ensemble(ensemble: str, model_dirs: Sequence[str], member_files: Sequence[str], output: str,
                   extra_sidecar: dict[str, Any] | None = None) -> tuple[int, int, float, str | None]:
    """Blends `member_files` (one per --model_dir in `model_dirs`) by the ensemble file into `output`,
    and its studies file when the members' rows carry study ids (skipped files from `extra_sidecar`);
    returns (records, records at or above the ensemble's threshold, the threshold, the studies line)."""
    loaded = ensemble_file.load_ensemble(ensemble)
    by_dir = dict(zip(model_dirs, member_files))
    pairs = ensemble_file.match_members(loaded, model_dirs)
    files = [read_predictions(by_dir[model_dir]) for _, model_dir in pairs]
    aligned = align(files)
    weights = np.array([member.weight for member, _ in pairs])  # checked and normalised by load_ensemble
    temperatures = [member.temperature for member, _ in pairs]
    blended = blend_lib.blend(blend_lib.calibrate_members(aligned.uncalibrated, temperatures), weights)
    findings, recorded = _apply_findings(ensemble, [member for member, _ in pairs], files, aligned)
    for (member, _), file in zip(pairs, files):
        computed = (file.sidecar or {}).get(PREDICTED_UNDER)
        ensemble_triage.check_precision(loaded, computed, file.path, [member])
        if views(file.sidecar) != member.tta:
            raise UserInputError(f"{file.path} averages {views(file.sidecar)} test-time view(s) but the "
                                 f"ensemble's {member.name} was fitted on {member.tta}; predict with "
                                 f"--tta={member.tta}, or refit the ensemble")
    served, why = ensemble_triage.loaded(loaded)
    spread = triage.blend_spread(blend_lib.calibrate_members(aligned.uncalibrated, temperatures), weights,
                                 aligned.spreads)
    sidecar = {
        "backbone": ENSEMBLE, "ensemble": os.path.abspath(ensemble), "threshold": loaded.threshold,
        "weights": {member.name: float(w) for (member, _), w in zip(pairs, weights)},
        "temperatures": {member.name: member.temperature for member, _ in pairs},
        "blended": BLENDED, **recorded,
        "triage": ensemble_triage.record(served, why),
        "inputs": [os.path.abspath(by_dir[d]) for _, d in pairs], **(extra_sidecar or {})}
    columns = ensemble_triage.columns(blended, served, spread)
    table, line = None, None
    if STUDY in aligned.meta:
        table = studies.study_table(aligned.ids, aligned.meta[STUDY], blended, columns[TRIAGE],
                                    aligned.labels, sidecar.get("skipped", ()))
        sidecar[studies.SIDECAR_KEY] = studies.sidecar_record(output)
        line = f"ensemble: {len(table)} studies -> {studies.studies_path(output)}"
    write_predictions(output, aligned.ids, blended, aligned.labels, sidecar, findings=findings,
                      meta={**aligned.meta, **columns})
    studies.write_table(output, table)  # None: removes a stale one
    decisions = blend_lib.decide(blended, loaded.threshold)
    return len(aligned.ids), int(decisions.sum()), loaded.threshold, line


def _apply_findings(ensemble: str, members: Sequence[ensemble_file.Member], files: Sequence[Predictions],
                    aligned) -> tuple[FindingColumns | None, dict[str, Any]]:
    """The findings blended by the ensemble file's per-finding weights and temperatures, and what the
    sidecar records of them; (None, {}) when the files or the ensemble file have none (said in one line)."""
    if not finding_blend.blended_findings(files, aligned):
        return None, {}
    recorded = finding_blend.from_members([m.finding_weights for m in members],
                                          [m.finding_temperatures for m in members])
    if recorded is None:
        logging.warning("findings: %s records no per-finding weights (written before they were); blending "
                        "the binary output only; rerun ensemble.py to blend the findings", ensemble)
        return None, {}
    _, blended = finding_blend.apply(aligned.finding_uncalibrated, recorded)
    return FindingColumns(blended, None, aligned.finding_labels), {
        "blended_findings": BLENDED_FINDINGS,
        ensemble_file.FINDING_WEIGHTS: {m.name: list(m.finding_weights) for m in members},
        ensemble_file.FINDING_TEMPERATURES: {m.name: list(m.finding_temperatures) for m in members}}
