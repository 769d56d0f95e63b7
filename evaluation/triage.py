"""Three-way triage: the guaranteed rule-out and rule-in thresholds (evaluation/conformal.py) fitted on
labelled calibration predictions, a spread limit, each prediction's group, and their JSON record."""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Sequence

import numpy as np

from contracts import run_folder
from contracts.errors import UserInputError
from contracts.output_names import CLEARED, PRIORITIZED, REVIEW
from contracts.prediction_files import read_predictions
from contracts.run_folder import RunFolder
from evaluation import conformal
from evaluation import settings as defaults
from evaluation.conformal import GuaranteedThreshold
from models import calibration

EXCHANGEABLE = ("The guarantee holds for images exchangeable with the calibration images (same site, "
                "population, scanner mix); a new site should calibrate on its own labelled images "
                "(ensemble.py --calibrate_on with predictions of its files does).")
APPROXIMATE = ("fitted on validation images, which also chose the epoch, the temperatures and the blend: "
               "the guarantee is approximate; build with --calibration_fraction and pass predictions of that "
               "split as ensemble.py --calibrate_on for one that holds as stated")


_NAMES = ("alpha", "beta", "delta", "uncertain_share")  # each a --triage_<name> flag


@dataclasses.dataclass(frozen=True)
class TriageSettings:
    """The targets: miss rate α of the cleared, false-alarm rate β of the prioritized, failure
    probability δ over the calibration draw, and the uncertain share behind the spread limit."""
    alpha: float = defaults.TRIAGE_ALPHA
    beta: float = defaults.TRIAGE_BETA
    delta: float = defaults.TRIAGE_DELTA
    uncertain_share: float = defaults.UNCERTAIN_SHARE


@dataclasses.dataclass(frozen=True)
class Triage:
    """What sorts predictions into cleared / review / prioritized, and what it rests on.

    spread_limit: an image whose spread exceeds it goes to review (None: no limit, e.g. no spread).
    calibration: the images fitted on ("files", "images", "abnormal", "normal") and whether the
        guarantee holds as stated ("exact") or only approximately ("note" says why).
    """
    rule_out: GuaranteedThreshold
    rule_in: GuaranteedThreshold
    spread_limit: float | None
    settings: TriageSettings
    calibration: dict[str, Any]


def check_settings(settings: TriageSettings) -> TriageSettings:
    for flag, value in (("triage_alpha", settings.alpha), ("triage_beta", settings.beta),
                        ("triage_delta", settings.delta)):
        if not 0.0 < value < 1.0:
            raise UserInputError(f"--{flag}={value}: must be strictly between 0 and 1")
    if not 0.0 <= settings.uncertain_share < 1.0:
        raise UserInputError(f"--triage_uncertain_share={settings.uncertain_share}: must be in [0, 1)")
    return settings


def settings_of(config: Any) -> TriageSettings:
    """The triage settings of a predict.py, ensemble.py or export.py config (None or absent: the
    default; only ensemble.py takes --triage_uncertain_share, since only it has calibration spreads)."""
    given = {name: getattr(config, f"triage_{name}", None) for name in _NAMES}
    return check_settings(TriageSettings(**{k: v for k, v in given.items() if v is not None}))


def refuse_with_ensemble(config: Any) -> None:
    """An ensemble file holds the triage ensemble.py fitted: refuses triage flags given beside it."""
    given = [f"--triage_{name}" for name in _NAMES
             if getattr(config, f"triage_{name}", None) is not None]
    if config.ensemble is not None and given:
        raise UserInputError(f"{', '.join(given)} with --ensemble: the ensemble file holds the triage "
                             "ensemble.py fitted; refit it with ensemble.py " + " ".join(given))


def run_validation(run: RunFolder) -> tuple[np.ndarray, np.ndarray] | None:
    """A run's val_predictions.csv as (labels, probabilities after the run's temperature); None
    without the file or its labels."""
    path = os.path.join(run.path, run_folder.VAL_PREDICTIONS)
    validation = read_predictions(path) if os.path.exists(path) else None
    if validation is None or validation.labels is None:
        return None
    # The raw column through the run's temperature, whatever the file's format version.
    raw = validation.uncalibrated.astype(np.float64)
    return validation.labels, raw if run.temperature is None else calibration.apply_temperature(
        raw, run.temperature)


def run_triage(run: RunFolder, settings: TriageSettings) -> Triage | None:
    """One run's own triage, fitted on its validation predictions (approximate: they also chose its
    epoch and temperature; no spread, so no spread limit); None without them."""
    validation = run_validation(run)
    if validation is None:
        return None
    path = os.path.join(os.path.abspath(run.path), run_folder.VAL_PREDICTIONS)
    return fit(*validation, None, settings, files=[path], exact=False)


def fit(labels: np.ndarray, probs: np.ndarray, spread: np.ndarray | None, settings: TriageSettings, *,
        files: Sequence[str], exact: bool, note: str | None = None) -> Triage:
    """Both thresholds on the calibration images' known labels and calibrated probabilities, and the
    spread limit (the (1 − uncertain share) quantile of their `spread`, None without one)."""
    check_settings(settings)
    labels, probs = np.asarray(labels), np.asarray(probs, dtype=np.float64)
    rule_out = conformal.rule_out_threshold(labels, probs, settings.alpha, settings.delta)
    rule_in = conformal.rule_in_threshold(labels, probs, settings.beta, settings.delta)
    limit = None
    if spread is not None and settings.uncertain_share > 0 and len(spread):
        limit = float(np.quantile(np.asarray(spread, np.float64), 1.0 - settings.uncertain_share,
                                  method="higher"))
    shares = conformal.shares(labels, probs, rule_out.threshold, rule_in.threshold)
    calibration = {"files": list(files), "images": int((labels >= 0).sum()),
                   "shares": {k: (None if isinstance(v, float) and math.isnan(v) else v)
                              for k, v in dataclasses.asdict(shares).items()},
                   "abnormal": int((labels == 1).sum()), "normal": int((labels == 0).sum()),
                   "exact": bool(exact), "note": None if exact else (note or APPROXIMATE)}
    return Triage(rule_out, rule_in, limit, settings, calibration)


def fit_blend(labels: np.ndarray, members: np.ndarray, weights: np.ndarray, member_spreads: np.ndarray | None,
              settings: TriageSettings, *, files: Sequence[str], exact: bool,
              note: str | None = None) -> tuple[Triage, list[Triage]]:
    """The blend's triage and each member's own, on calibration labels and (N, M) calibrated member
    probabilities blended by `weights` (the spread as `blend_spread`); members' spreads are their
    own TTA spreads."""
    blend = np.asarray(members, np.float64) @ np.asarray(weights, np.float64)
    common = dict(files=files, exact=exact, note=note)
    own = [fit(labels, members[:, m], None if member_spreads is None else member_spreads[:, m], settings,
               **common) for m in range(members.shape[1])]
    return fit(labels, blend, blend_spread(members, weights, member_spreads), settings, **common), own


def blend_spread(members: np.ndarray, weights: np.ndarray,
                 member_spreads: np.ndarray | None) -> np.ndarray | None:
    """The blend's p_spread: `spread` where there is one to take (several members, or TTA spreads);
    None for one model without TTA."""
    if np.shape(members)[1] < 2 and member_spreads is None:
        return None
    return spread(members, weights, member_spreads)


def groups(probs: np.ndarray, triage: Triage | None, spread: np.ndarray | None = None) -> np.ndarray:
    """Each prediction's group: cleared (p < rule-out), prioritized (p >= rule-in), else review; also
    review where both hold (the thresholds cross) or the spread exceeds the limit; all review without
    a triage. (N,) object array."""
    probs = np.asarray(probs, dtype=np.float64)
    if triage is None:
        return np.full(probs.shape, REVIEW, dtype=object)
    cleared = conformal.is_cleared(probs, triage.rule_out.threshold)
    prioritized = conformal.is_prioritized(probs, triage.rule_in.threshold)
    unsure = cleared & prioritized
    if triage.spread_limit is not None and spread is not None:
        unsure |= np.asarray(spread, dtype=np.float64) > triage.spread_limit
    out = np.full(probs.shape, REVIEW, dtype=object)
    out[cleared & ~unsure] = CLEARED
    out[prioritized & ~unsure] = PRIORITIZED
    return out


def spread(members: np.ndarray, weights: np.ndarray, member_spreads: np.ndarray | None = None) -> np.ndarray:
    """(N,) the weighted spread of (N, M) calibrated member probabilities about their blend,
    sqrt(Σ w_m (p_m − p̄)² + Σ w_m s_m²), with each member's own TTA spread s_m (N, M) when given
    (the total variance of the member × view probabilities)."""
    members, weights = np.asarray(members, np.float64), np.asarray(weights, np.float64)
    blend = members @ weights
    variance = ((members - blend[:, None]) ** 2) @ weights
    if member_spreads is not None:
        variance = variance + (np.asarray(member_spreads, np.float64) ** 2) @ weights
    return np.sqrt(np.maximum(variance, 0.0))


def describe(threshold: GuaranteedThreshold, kind: str) -> str:
    """One line: the threshold and its bound, or why there is none and by how many images."""
    rate, images = ("miss rate", "abnormal") if kind == "rule-out" else ("false-alarm rate", "normal")
    if threshold.threshold is None:
        return (f"no {kind} threshold: {threshold.used} {images} calibration images, "
                f"{threshold.used + threshold.shortfall} needed (all without error) to bound the {rate} by "
                f"{threshold.target:g} at δ={threshold.delta:g}; short by {threshold.shortfall}")
    return (f"{kind} {threshold.threshold:.6g}: {rate} on calibration {threshold.empirical:.3f} of "
            f"{threshold.used} {images}, upper bound {threshold.bound:.3f} <= {threshold.target:g} "
            f"(δ={threshold.delta:g})")


def to_record(triage: Triage) -> dict[str, Any]:
    """The JSON form in sidecars, ensemble files and export.json."""
    def threshold(t: GuaranteedThreshold) -> dict[str, Any]:
        return {"threshold": t.threshold, "target": t.target, "bound": t.bound,
                "empirical": None if math.isnan(t.empirical) else t.empirical, "used": t.used,
                "shortfall": t.shortfall}
    return {**dataclasses.asdict(triage.settings), "rule_out": threshold(triage.rule_out),
            "rule_in": threshold(triage.rule_in), "spread_limit": triage.spread_limit,
            "calibration": triage.calibration, "groups": f"{CLEARED} / {REVIEW} / {PRIORITIZED}"}


def from_record(record: Any, where: str) -> Triage:
    """`to_record`'s inverse; UserInputError naming `where` for a record it did not write (a threshold
    outside [0, 1], a negative spread limit, a missing key, text or true where numbers belong)."""
    def number(value: Any, low: float, high: float, what: str) -> float:
        if type(value) not in (int, float) or not low <= value <= high:
            raise ValueError(f"{what} {value!r} is not a number in [{low:g}, {high:g}]")
        return float(value)

    try:
        settings = check_settings(TriageSettings(*(number(record[k], 0.0, 1.0, k) for k in _NAMES)))
        parts = []
        for kind, target in (("rule_out", settings.alpha), ("rule_in", settings.beta)):
            entry = record[kind]
            value, empirical = entry["threshold"], entry["empirical"]
            parts.append(GuaranteedThreshold(
                None if value is None else number(value, 0.0, 1.0, f"{kind} threshold"), target,
                settings.delta, int(number(entry["used"], 0, math.inf, "used")),
                number(entry["bound"], 0.0, 1.0, "bound"),
                math.nan if empirical is None else number(empirical, 0.0, 1.0, "empirical"),
                int(number(entry["shortfall"], 0, math.inf, "shortfall"))))
        limit = record["spread_limit"]
        calibration = dict(record["calibration"])
        missing = sorted({"files", "images", "abnormal", "normal", "exact", "note"} - set(calibration))
        if missing:
            raise KeyError(f"calibration {', '.join(missing)}")
        limit = None if limit is None else number(limit, 0.0, math.inf, "spread_limit")
        return Triage(*parts, limit, settings, calibration)
    except (KeyError, TypeError, ValueError, UserInputError) as err:
        raise UserInputError(f"{where}: its triage record is not one ensemble.py writes ({err}); rerun "
                             "ensemble.py to refit it") from None
