"""Each NIH finding blended like the binary output: per member and finding a temperature, per finding
weights (fitted on validation by AUROC, or the binary weights), in `calibration.ORDER`."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
from absl import logging

from contracts.labels import FINDINGS
from contracts.prediction_files import Aligned, Predictions, few
from evaluation import blend as blend_lib
from evaluation.findings import MIN_POSITIVES
from models import calibration

FITTED = "fitted"  # a finding's weights chosen on validation by blend.AUROC_CRITERION
BINARY = "binary"  # a finding's weights are the binary output's


@dataclasses.dataclass(frozen=True)
class FindingBlend:
    """(M, 14) weights (each finding's column sums to 1) and temperatures (1: none), and per finding
    which weights it got and why (None: nothing fitted, every finding takes the binary weights)."""

    weights: np.ndarray
    temperatures: np.ndarray
    choices: dict[str, dict[str, Any]] | None = None


def blended_findings(files: Sequence[Predictions], aligned: Aligned) -> bool:
    """Whether the findings can be blended: every file has them. Some but not all: one line says so."""
    if aligned.finding_uncalibrated is not None:
        return True
    without = [file.path for file in files if file.findings is None]
    if len(without) < len(files):
        logging.warning("findings: %d of %d prediction files have no finding columns (%s); blending the "
                        "binary output only", len(without), len(files), few(without))
    return False


def binary(weights: np.ndarray, choices: dict[str, dict[str, Any]] | None = None) -> FindingBlend:
    """Every finding with the binary `weights` (M,) and temperature 1."""
    column = np.asarray(weights, dtype=np.float64)[:, None]
    return FindingBlend(np.repeat(column, len(FINDINGS), axis=1), np.ones((len(column), len(FINDINGS))),
                        choices)


def _choose_one(uncalibrated: np.ndarray, labels: np.ndarray, weights: np.ndarray, fit_weights: bool,
                step: float) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """One finding's (M,) temperatures and weights on its known validation records, and the record."""
    known = labels >= 0
    y, members = labels[known], uncalibrated[known]
    temperatures = np.array([calibration.fit_temperature(y, column) or 1.0 for column in members.T])
    positives, negatives = int((y == 1).sum()), int((y == 0).sum())
    record = {"positives": positives, "negatives": negatives, "weights": BINARY}
    if not fit_weights:
        return temperatures, weights, {**record, "why": "--blend_weight gave the weights"}
    if min(positives, negatives) < MIN_POSITIVES:
        return temperatures, weights, {
            **record, "why": f"fewer than {MIN_POSITIVES} positives or negatives in the --fit_on files"}
    fitted = blend_lib.fit_by_auroc(blend_lib.calibrate_members(members, temperatures), y, step)
    return temperatures, fitted, {**record, "weights": FITTED, "why": None}


def choose(validation: Aligned | None, weights: np.ndarray, fit_weights: bool, step: float) -> FindingBlend:
    """Per finding: each member's temperature fitted on `validation` (the --fit_on files; 1 where a
    finding has one class there), and weights fitted by AUROC when `fit_weights` and the finding has
    MIN_POSITIVES positives and negatives there; otherwise the binary `weights` (M,)."""
    if validation is None:
        return binary(weights)
    if validation.finding_uncalibrated is None or validation.finding_labels is None:
        why = "the --fit_on files have no finding columns or no finding labels"
        return binary(weights, {f: {"weights": BINARY, "why": why} for f in FINDINGS})
    chosen = [_choose_one(validation.finding_uncalibrated[:, :, k], validation.finding_labels[:, k],
                          weights, fit_weights, step) for k in range(len(FINDINGS))]
    return FindingBlend(np.stack([c[1] for c in chosen], axis=1), np.stack([c[0] for c in chosen], axis=1),
                        {f: c[2] for f, c in zip(FINDINGS, chosen)})


def apply(uncalibrated: np.ndarray, chosen: FindingBlend) -> tuple[np.ndarray, np.ndarray]:
    """(members (N, M, 14) after their temperatures, blend (N, 14)) of (N, M, 14) uncalibrated sigmoids."""
    members = np.stack([blend_lib.calibrate_members(uncalibrated[:, :, k], chosen.temperatures[:, k])
                        for k in range(len(FINDINGS))], axis=2)
    return members, np.einsum("nmk,mk->nk", members, chosen.weights)


def from_members(finding_weights: Sequence[Sequence[float] | None],
                 finding_temperatures: Sequence[Sequence[float] | None]) -> FindingBlend | None:
    """An ensemble file's recorded per-finding weights and temperatures, None unless every member has both."""
    if any(w is None for w in finding_weights) or any(t is None for t in finding_temperatures):
        return None
    return FindingBlend(np.asarray(finding_weights, dtype=np.float64),
                        np.asarray(finding_temperatures, dtype=np.float64))


def summary(chosen: FindingBlend) -> str:
    """One line: the findings with weights of their own, and which took the binary weights and why."""
    if chosen.choices is None:
        return f"findings: all {len(FINDINGS)} blended with the binary weights (nothing fitted)"
    binary_by_why: dict[str, list[str]] = {}
    for finding, choice in chosen.choices.items():
        if choice["weights"] != FITTED:
            binary_by_why.setdefault(choice["why"], []).append(finding)
    fitted = len(FINDINGS) - sum(len(names) for names in binary_by_why.values())
    rest = "".join(f"; the binary weights for {few(names)} ({why})" for why, names in binary_by_why.items())
    return f"findings: {fitted} of {len(FINDINGS)} with weights fitted by {blend_lib.AUROC_CRITERION}{rest}"
