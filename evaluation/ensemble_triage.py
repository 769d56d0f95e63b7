"""ensemble.py's triage: thresholds fitted on --calibrate_on predictions (else, approximately, on the
--fit_on ones) blended exactly as the predictions are, then applied to the blend and to each member."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np
from absl import logging

from contracts.errors import UserInputError
from contracts.output_names import SPREAD, TRIAGE, TRIAGE_GROUPS
from contracts.prediction_files import Aligned, Predictions, align, read_predictions
from evaluation import blend as blend_lib
from evaluation import triage as triage_lib
from evaluation.triage import Triage

NOTHING_TO_FIT = ("no triage: no labelled calibration predictions (--calibrate_on, or --fit_on); every "
                  "image goes to review")


@dataclasses.dataclass(frozen=True)
class Fitted:
    """The blend's triage and each member's (None: none fitted, `why` says why)."""
    blend: Triage | None
    members: list[Triage | None]
    why: str | None = None


def fit(config: Any, files: Sequence[Predictions], temperatures: Sequence[float], weights: np.ndarray,
        validation: tuple[np.ndarray, np.ndarray] | None,
        check_pairs: Callable[..., None]) -> Fitted:
    """Fits the triage of ensemble.py's `config` (its --calibrate_on files, paired with `files` by
    `check_pairs`; else `validation`, the --fit_on labels and calibrated members)."""
    settings = triage_lib.settings_of(config)
    if config.calibrate_on:
        calibration = [read_predictions(path) for path in config.calibrate_on]
        check_pairs(files, calibration, "calibrate_on")
        aligned = align(calibration)
        if aligned.labels is None or not (aligned.labels >= 0).any():
            raise UserInputError(f"--calibrate_on: {config.calibrate_on[0]} has no labels; pass predictions "
                                 "of the calibration split (predict.py --split=calibration), which has them")
        overlap = _shared_with_fit_on(aligned, config.fit_on)
        note = None if not overlap else (
            f"the --calibrate_on images share {overlap} with --fit_on, which chose the blend: the guarantee "
            "is approximate; calibrate on a split of its own (build_tfrecords.py --calibration_fraction)")
        members = blend_lib.calibrate_members(aligned.uncalibrated, temperatures)
        blend, own = triage_lib.fit_blend(aligned.labels, members, weights, aligned.spreads, settings,
                                          files=list(config.calibrate_on), exact=not overlap, note=note)
        return Fitted(blend, own)
    if validation is None:
        return Fitted(None, [None] * len(files), NOTHING_TO_FIT)
    labels, members = validation
    blend, own = triage_lib.fit_blend(labels, members, weights, None, settings, files=list(config.fit_on),
                                      exact=False)
    return Fitted(blend, own)


def _shared_with_fit_on(calibration: Aligned, fit_on: Sequence[str]) -> int:
    if not fit_on:
        return 0
    return len(set(calibration.ids) & set(read_predictions(fit_on[0]).ids))


def columns(probs: np.ndarray, triage: Triage | None, spread: np.ndarray | None) -> dict[str, np.ndarray]:
    """The prediction file's p_spread (when there is a spread) and triage columns."""
    out = {} if spread is None else {SPREAD: spread}
    return {**out, TRIAGE: triage_lib.groups(probs, triage, spread)}


def record(triage: Triage | None, why: str | None) -> dict[str, Any]:
    """The sidecar's "triage" entry: the fitted record, or why there is none."""
    return triage_lib.to_record(triage) if triage is not None else {"why": why}


def loaded(ensemble) -> Triage | None:
    """The triage an ensemble file holds (evaluation.triage.from_record); None for a file written
    before triage, said in one line."""
    if ensemble.triage is None:
        logging.warning("triage: %s holds none (written before schema 6, or without calibration "
                        "predictions); every image goes to review; rerun ensemble.py with --calibrate_on",
                        ensemble.path)
        return None
    return triage_lib.from_record(ensemble.triage, f"--ensemble={ensemble.path}")


def summary(triage: Triage | None, groups: np.ndarray, why: str | None) -> list[str]:
    """Printed lines: the thresholds (or why none) and how many images each group got."""
    counts = ", ".join(f"{int((groups == g).sum())} {g}" for g in TRIAGE_GROUPS)
    if triage is None:
        return [f"triage: {why or NOTHING_TO_FIT}", f"triage: {counts}"]
    exact = "" if triage.calibration["exact"] else f" (approximate: {triage.calibration['note']})"
    return [f"triage: {triage_lib.describe(triage.rule_out, 'rule-out')}",
            f"triage: {triage_lib.describe(triage.rule_in, 'rule-in')}",
            f"triage: {counts}; calibrated on {triage.calibration['images']} images{exact}"]
