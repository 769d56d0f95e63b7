"""Whether an export is the validated model: its float32 graph computed the predictions its numbers rest
on, and, for a mixed-precision run, stayed within PARITY_LIMIT of the policy that trained it."""

from __future__ import annotations

import os
from typing import Any, Sequence

from contracts import ensemble_file, storage
from contracts.run_folder import MODEL_PRECISION, PARITY_LIMIT, PREDICTED_UNDER, RunFolder, parity_within
from contracts.shared import ENSEMBLE
from evaluation.report import METRICS_FILE

VALIDATION_KEYS = ("trained_under", "validated_under", "predictions_under", "precision_parity")
_RERUN = f"rerun predict.py with --precision={MODEL_PRECISION} (the default)"


def _run_problem(run: RunFolder, alone: bool, views: int) -> str | None:
    """Why `run`'s own validation does not vouch for its float32 export, or None."""
    under, parity = run.validated_under, run.precision_parity
    if under is None:
        return (f"{run.path} was trained without validation: nothing validated it" if alone else None)
    if under != MODEL_PRECISION:
        return (f"{run.path}'s validation predictions came from its {under} graph, never compared with the "
                f"{MODEL_PRECISION} graph served (a run from before train.py re-validated): rerun train.py "
                "with the run's flags to re-validate it (a run train.py no longer resumes: retrain it)")
    if parity is not None and not parity_within(parity):
        gaps = ", ".join(f"{key} {parity.get(key)}" for key in ("max_abs", "findings_max_abs")
                         if key in parity)
        return (f"{run.path} trained under {parity.get('trained_under')}, and its {MODEL_PRECISION} graph, "
                f"the one served, moves validation probabilities by more than {PARITY_LIMIT} or unmeasurably "
                f"({gaps}): the epoch and the figures training recorded are another function's; train under "
                f"{MODEL_PRECISION} for a validated export")
    if alone and views > 1:
        return (f"{run.path} is served with {views} test-time views, but its temperature and triage were "
                "fitted on one view's validation predictions: fit them on views with predict.py --tta and "
                "ensemble.py, and export with --ensemble")
    return None


def _predictions_problem(member: ensemble_file.Member, ensemble: ensemble_file.Ensemble) -> str | None:
    if member.precision is None and ensemble.schema_version < ensemble_file.SCHEMA_VERSION:
        return (f"--{ENSEMBLE.name}={ensemble.path} does not record the precision of {member.name}'s "
                f"predictions (written before schema {ensemble_file.SCHEMA_VERSION}): rerun ensemble.py")
    if member.precision is None:
        return (f"{member.name}'s prediction, --fit_on or --calibrate_on files record no precision (made "
                f"by a predict.py or train.py from before): {_RERUN} (and train.py for a run's "
                "val_predictions.csv) and ensemble.py")
    if member.precision != MODEL_PRECISION:
        return (f"{member.name}'s predictions were computed under {member.precision}, the served graph is "
                f"{MODEL_PRECISION}: {_RERUN} and ensemble.py")
    return None


def status(runs: Sequence[RunFolder], ensemble: ensemble_file.Ensemble | None,
           views: Sequence[int]) -> dict[str, Any]:
    """export.json's validation record: "validated", "why" (one line per problem), the limit, and per
    member the policies that trained it and computed its validation (and ensemble) predictions."""
    members = [None] * len(runs) if ensemble is None else list(ensemble.members)
    rows, why = [], []
    for run, member, served_views in zip(runs, members, views):
        rows.append(dict(zip(VALIDATION_KEYS, (run.trained_under, run.validated_under,
                                               None if member is None else member.precision,
                                               run.precision_parity))))
        problems = [_run_problem(run, ensemble is None, served_views),
                    None if member is None else _predictions_problem(member, ensemble)]
        why += [p for p in problems if p is not None]
    return {"validated": not why, "limit": PARITY_LIMIT, "why": why, "members": rows}


def with_report(record: dict[str, Any], report_dir: str | None) -> dict[str, Any]:
    """`record` with a problem for each model of the card's report scored under another policy."""
    metrics = storage.read_json_or_none(os.path.join(report_dir, METRICS_FILE)) if report_dir else None
    other = sorted(f"{name} ({entry[PREDICTED_UNDER]})" for name, entry in (metrics or {}).items()
                   if isinstance(entry, dict) and entry.get(PREDICTED_UNDER) not in (None, MODEL_PRECISION))
    if not other:
        return record
    why = [*record["why"], f"the report {report_dir} scored {', '.join(other)}, not the {MODEL_PRECISION} "
                           f"graph served: {_RERUN} for the report"]
    return {**record, "validated": False, "why": why}


def line(record: dict[str, Any]) -> str:
    """The export's one line on it."""
    if record["validated"]:
        parities = (m["precision_parity"] for m in record["members"])
        gaps = [(p["max_abs"], p["trained_under"]) for p in parities if p is not None]
        within = "" if not gaps else (f"; within {max(gaps)[0]:.4f} on validation of the {max(gaps)[1]} "
                                      f"graph that trained (limit {record['limit']})")
        return (f"validated: the served {MODEL_PRECISION} graph computed the predictions its threshold, "
                f"temperatures and triage were fitted on{within}")
    return "not called validated: " + "; ".join(record["why"])
