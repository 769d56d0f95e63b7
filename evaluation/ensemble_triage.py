"""ensemble.py's triage: thresholds fitted on --calibrate_on predictions (else, approximately, on the
--fit_on ones) blended exactly as the predictions are, then applied to the blend and to each member."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

import numpy as np
from absl import logging

from contracts.ensemble_file import TRIAGE_SINCE
from contracts.errors import UserInputError
from contracts.manifest import CALIBRATION_SPLIT
from contracts.output_names import SPREAD, TRIAGE, TRIAGE_GROUPS, views
from contracts.prediction_files import Aligned, Predictions, align, few, read_predictions
from contracts.run_folder import MODEL_PRECISION
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
        note = _not_separate(aligned, calibration, files, config.fit_on)
        members = blend_lib.calibrate_members(aligned.uncalibrated, temperatures)
        blend, own = triage_lib.fit_blend(aligned.labels, members, weights, aligned.spreads, settings,
                                          files=_absolute(config.calibrate_on), exact=note is None, note=note)
        return Fitted(blend, own)
    if validation is None:
        return Fitted(None, [None] * len(files), NOTHING_TO_FIT)
    labels, members = validation
    many = [f.path for f in files if views(f.sidecar) > 1]
    note = None if not many else (f"{triage_lib.APPROXIMATE}; and fitted on single-view --fit_on predictions "
                                  f"but applied to the test-time views' means of {few(many)}")
    blend, own = triage_lib.fit_blend(labels, members, weights, None, settings,
                                      files=_absolute(config.fit_on), exact=False, note=note)
    return Fitted(blend, own)


def _not_separate(calibration: Aligned, read: Sequence[Predictions], files: Sequence[Predictions],
                  fit_on: Sequence[str]) -> str | None:
    """Why the --calibrate_on images are not a calibration split of their own (None: they are): they
    share images with --predictions (scored) or --fit_on (which chose the blend), or a sidecar names
    another split."""
    ids = set(calibration.ids)
    fitted = set(read_predictions(fit_on[0]).ids) if fit_on else set()
    shared = [(len(ids & set(files[0].ids)), "--predictions, which the report scores"),
              (len(ids & fitted), "--fit_on, which chose the blend")]
    why = [f"share {n} images with {what}" for n, what in shared if n]
    splits = sorted({str(f.sidecar.get("split")) for f in read if f.sidecar and f.sidecar.get("split")} - {
        CALIBRATION_SPLIT})
    why += [f"come from split {', '.join(splits)}, not {CALIBRATION_SPLIT}"] if splits else []
    if not why:
        return None
    return (f"the --calibrate_on images {' and '.join(why)}: the guarantee is approximate; calibrate on a "
            "split of its own (build_tfrecords.py --calibration_fraction; predict.py --split=calibration)")


def _absolute(paths: Sequence[str]) -> list[str]:
    return [os.path.abspath(p) for p in paths]


def columns(probs: np.ndarray, triage: Triage | None, spread: np.ndarray | None) -> dict[str, np.ndarray]:
    """The prediction file's p_spread (when there is a spread) and triage columns."""
    out = {} if spread is None else {SPREAD: spread}
    return {**out, TRIAGE: triage_lib.groups(probs, triage, spread)}


def record(triage: Triage | None, why: str | None) -> dict[str, Any]:
    """The sidecar's "triage" entry: the fitted record, or why there is none."""
    return triage_lib.to_record(triage) if triage is not None else {"why": why}


def loaded(ensemble, warn: bool = True) -> tuple[Triage | None, str | None]:
    """The triage an ensemble file holds (evaluation.triage.from_record) and, when it holds none, why
    (said in one line): written before triage (schema 5), or fitted without calibration predictions."""
    if ensemble.triage is not None:
        return triage_lib.from_record(ensemble.triage, f"--ensemble={ensemble.path}"), None
    why = (f"no triage: {ensemble.path} was written before triage (schema {ensemble.schema_version}); "
           "every image goes to review; rerun ensemble.py with --calibrate_on"
           if ensemble.schema_version < TRIAGE_SINCE else f"{NOTHING_TO_FIT} when {ensemble.path} was fitted")
    if warn:
        logging.warning("triage: %s", why)
    return None, why


def check_views(ensemble, tta: int) -> None:
    """Refuses predictions with other test-time views than the ensemble's members were fitted on."""
    fitted = sorted({m.tta for m in ensemble.members})
    if fitted != [tta]:
        raise UserInputError(f"--tta={tta}: --ensemble={ensemble.path} was fitted on predictions of "
                             f"{' or '.join(map(str, fitted))} test-time view(s) per member; predict with "
                             "the same --tta, or refit the ensemble")


def check_precision(ensemble, precision: str | None, where: str = "--precision", members=None) -> None:
    """Refuses predictions computed under another dtype policy than the ensemble's `members` (default:
    all) were, when both are known ("auto" resolves later: the files are checked then)."""
    fitted = sorted({m.precision for m in (members or ensemble.members) if m.precision})
    if precision not in ("auto", None) and fitted and fitted != [precision]:
        raise UserInputError(f"{where}: {precision}, but --ensemble={ensemble.path} was fitted on "
                             f"predictions computed under {' or '.join(fitted)}; predict under the same "
                             f"--precision ({MODEL_PRECISION}, the default), or refit the ensemble")


def summary(triage: Triage | None, groups: np.ndarray, why: str | None) -> list[str]:
    """Printed lines: the thresholds (or why none) and how many images each group got."""
    counts = ", ".join(f"{int((groups == g).sum())} {g}" for g in TRIAGE_GROUPS)
    if triage is None:
        return [f"triage: {why or NOTHING_TO_FIT}", f"triage: {counts}"]
    exact = "" if triage.calibration["exact"] else f" (approximate: {triage.calibration['note']})"
    return [f"triage: {triage_lib.describe(triage.rule_out, 'rule-out')}",
            f"triage: {triage_lib.describe(triage.rule_in, 'rule-in')}",
            f"triage: {counts}; calibrated on {triage.calibration['images']} images{exact}"]
