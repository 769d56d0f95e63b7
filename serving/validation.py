"""Whether an export is the validated model: its float32 graph computed the predictions its numbers rest
on, and, for a mixed-precision run, stayed within PARITY_LIMIT of the policy that trained it."""

from __future__ import annotations

from typing import Any, Sequence

from contracts import ensemble_file
from contracts.run_folder import MODEL_PRECISION, PARITY_LIMIT, RunFolder
from contracts.shared import ENSEMBLE

VALIDATION_KEYS = ("trained_under", "validated_under", "predictions_under", "precision_parity")


def _run_problem(run: RunFolder, alone: bool) -> str | None:
    """Why `run`'s own validation does not vouch for its float32 export, or None."""
    under, parity = run.validated_under, run.precision_parity
    if under is None:
        return (f"{run.path} was trained without validation: nothing validated it" if alone else None)
    if under != MODEL_PRECISION:
        return (f"{run.path}'s validation predictions came from its {under} graph, never compared with the "
                f"{MODEL_PRECISION} graph served (a run from before train.py re-validated): rerun train.py "
                "with the run's flags to re-validate it")
    if parity is not None and parity.get("max_abs", 0.0) > PARITY_LIMIT:
        return (f"{run.path} trained under {parity.get('trained_under')}, and its {MODEL_PRECISION} graph, "
                f"the one served, moves validation P(abnormal) by up to {parity['max_abs']:.4f} (over "
                f"{PARITY_LIMIT}): the epoch and the figures training recorded are another function's; train "
                f"under {MODEL_PRECISION} for a validated export")
    return None


def _predictions_problem(member: ensemble_file.Member, path: str) -> str | None:
    if member.precision is None:
        return (f"--{ENSEMBLE.name}={path} does not record the precision of {member.name}'s predictions "
                f"(written before schema {ensemble_file.SCHEMA_VERSION}): rerun ensemble.py")
    if member.precision != MODEL_PRECISION:
        return (f"{member.name}'s predictions were computed under {member.precision}, the served graph is "
                f"{MODEL_PRECISION}: rerun predict.py with --precision={MODEL_PRECISION} (the default) and "
                "ensemble.py")
    return None


def status(runs: Sequence[RunFolder], ensemble: ensemble_file.Ensemble | None) -> dict[str, Any]:
    """export.json's validation record: "validated", "why" (one line per problem), the limit, and per
    member the policies that trained it and computed its validation (and ensemble) predictions."""
    members = [None] * len(runs) if ensemble is None else list(ensemble.members)
    rows, why = [], []
    for run, member in zip(runs, members):
        rows.append(dict(zip(VALIDATION_KEYS, (run.trained_under, run.validated_under,
                                               None if member is None else member.precision,
                                               run.precision_parity))))
        problems = [_run_problem(run, ensemble is None),
                    None if member is None else _predictions_problem(member, ensemble.path)]
        why += [p for p in problems if p is not None]
    return {"validated": not why, "limit": PARITY_LIMIT, "why": why, "members": rows}


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
