"""Guaranteed triage thresholds (Learn-then-Test): a rule-out threshold whose miss rate and a rule-in
threshold whose false-alarm rate stay under a target with probability ≥ 1 − δ over the calibration draw.
The guarantee holds for images exchangeable with the calibration images."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import stats

from contracts.errors import UserInputError
from evaluation import settings

ALPHA, BETA, DELTA = settings.TRIAGE_ALPHA, settings.TRIAGE_BETA, settings.TRIAGE_DELTA


@dataclasses.dataclass(frozen=True)
class GuaranteedThreshold:
    """One threshold chosen on calibration images, with what it rests on.

    threshold: the rule-out (cleared: p < threshold) or rule-in (prioritized: p >= threshold)
        threshold; None when even the safest candidate fails the bound.
    target: the rate to stay under (α for rule-out, β for rule-in); delta: the allowed failure
        probability over the calibration draw.
    used: the calibration images the rate counts over (abnormal for rule-out, normal for rule-in).
    bound: the (1 − δ) Clopper–Pearson upper bound of the rate at the threshold (at the safest
        candidate, zero errors, when infeasible); empirical: the rate on calibration there.
    shortfall: 0 when feasible; else how many more such images, all without error, the bound needed.
    """
    threshold: float | None
    target: float
    delta: float
    used: int
    bound: float
    empirical: float
    shortfall: int


@dataclasses.dataclass(frozen=True)
class Shares:
    """For information, not guaranteed (they depend on prevalence): how many images are cleared and
    the share of abnormal among them, how many prioritized and the share of normal among them
    (NaN where the group is empty or its threshold is None)."""
    cleared: int
    abnormal_among_cleared: float
    prioritized: int
    normal_among_prioritized: float


def is_cleared(probs: np.ndarray, rule_out: float | None) -> np.ndarray:
    """The tie rule for clearing: p < rule-out (an image scored exactly at it is not cleared);
    nothing is cleared without a threshold."""
    probs = np.asarray(probs, dtype=np.float64)
    return np.zeros(probs.shape, bool) if rule_out is None else probs < rule_out


def is_prioritized(probs: np.ndarray, rule_in: float | None) -> np.ndarray:
    """The tie rule for prioritizing: p >= rule-in (an image scored exactly at it is prioritized);
    nothing is prioritized without a threshold."""
    probs = np.asarray(probs, dtype=np.float64)
    return np.zeros(probs.shape, bool) if rule_in is None else probs >= rule_in


def clopper_pearson_upper(failures, trials: int, delta: float):
    """The one-sided (1 − δ) Clopper–Pearson upper bound of a binomial rate from `failures` of
    `trials` (an int or an array of ints): the Beta(k + 1, n − k) quantile at 1 − δ; 1.0 when
    k = n, including n = 0 (no trials bound nothing)."""
    k = np.asarray(failures, dtype=np.float64)
    ppf = stats.beta.ppf(1.0 - delta, k + 1, np.maximum(trials - k, 1))
    bound = np.where(k >= trials, 1.0, ppf)
    return float(bound) if bound.ndim == 0 else bound


def images_needed(target: float, delta: float) -> int:
    """The fewest calibration images, all without error, whose (1 − δ) upper bound is ≤ `target`
    (45 at α = 0.05, δ = 0.1); the bound is 1 − δ^(1/n), so n ≥ ln δ / ln(1 − target)."""
    _check(target, delta)
    n = max(0, math.floor(math.log(delta) / math.log1p(-target)) - 1)  # a step below, then search up
    while clopper_pearson_upper(0, n, delta) > target:
        n += 1
    return n


def rule_out_threshold(labels: np.ndarray, probs: np.ndarray, alpha: float = ALPHA,
                       delta: float = DELTA) -> GuaranteedThreshold:
    """The highest threshold whose miss rate (abnormal images with p < t ÷ abnormal images) has a
    (1 − δ) Clopper–Pearson upper bound ≤ `alpha`: Learn-then-Test's fixed sequence over the
    distinct calibration scores, ascending from the lowest (which clears nothing), stopping at the
    first failure. Labels 1 abnormal, 0 normal, -1 unknown (ignored).

    Raises:
        UserInputError: `alpha` or `delta` outside (0, 1), or labels and probs of different lengths.
    """
    labels, probs = _known(labels, probs, alpha, delta)
    positives = np.sort(probs[labels == 1])
    candidates = np.unique(probs)  # ascending: the miss rate only grows along them
    misses = np.searchsorted(positives, candidates, side="left")  # positives with p < t (the tie rule)
    return _fixed_sequence(candidates, misses, len(positives), alpha, delta)


def rule_in_threshold(labels: np.ndarray, probs: np.ndarray, beta: float = BETA,
                      delta: float = DELTA) -> GuaranteedThreshold:
    """The lowest threshold whose false-alarm rate (normal images with p >= t ÷ normal images) has
    a (1 − δ) Clopper–Pearson upper bound ≤ `beta`: the fixed sequence descending from just above the
    highest calibration score (which prioritizes nothing) through the distinct scores, stopping at
    the first failure. Labels 1 abnormal, 0 normal, -1 unknown (ignored).

    Raises:
        UserInputError: `beta` or `delta` outside (0, 1), or labels and probs of different lengths.
    """
    labels, probs = _known(labels, probs, beta, delta)
    negatives = np.sort(probs[labels == 0])
    scores = np.unique(probs)[::-1]  # descending: the false-alarm rate only grows along them
    top = [np.nextafter(scores[0], math.inf)] if len(scores) else []
    candidates = np.concatenate([top, scores])
    # normals with p >= t (the tie rule): all but those strictly below t
    alarms = len(negatives) - np.searchsorted(negatives, candidates, side="left")
    return _fixed_sequence(candidates, alarms, len(negatives), beta, delta)


def shares(labels: np.ndarray, probs: np.ndarray, rule_out: float | None,
           rule_in: float | None) -> Shares:
    """The "for information" figures beside the thresholds (`Shares`), over the known labels."""
    labels, probs = np.asarray(labels), np.asarray(probs, dtype=np.float64)
    _same_length(labels, probs)
    labels, probs = labels[labels >= 0], probs[labels >= 0]
    cleared, prioritized = is_cleared(probs, rule_out), is_prioritized(probs, rule_in)
    return Shares(cleared=int(cleared.sum()), abnormal_among_cleared=_share(labels[cleared] == 1),
                  prioritized=int(prioritized.sum()),
                  normal_among_prioritized=_share(labels[prioritized] == 0))


def _fixed_sequence(candidates: np.ndarray, errors: np.ndarray, used: int, target: float,
                    delta: float) -> GuaranteedThreshold:
    """Tests `candidates` in order (the safe end first) and keeps the last before the first whose
    bound on errors ÷ `used` exceeds `target`."""
    bounds = clopper_pearson_upper(np.arange(used + 1), used, delta)[errors] if len(errors) else np.ones(0)
    failed = np.flatnonzero(bounds > target)
    last = (failed[0] if len(failed) else len(candidates)) - 1
    if last < 0:  # the safest candidate has no error, so only too few images can fail it
        return GuaranteedThreshold(None, target, delta, used, clopper_pearson_upper(0, used, delta),
                                   0.0 if used else math.nan,
                                   images_needed(target, delta) - used)
    return GuaranteedThreshold(float(candidates[last]), target, delta, used, float(bounds[last]),
                               float(errors[last]) / used, 0)


def _known(labels, probs, target: float, delta: float) -> tuple[np.ndarray, np.ndarray]:
    _check(target, delta)
    labels, probs = np.asarray(labels).ravel(), np.asarray(probs, dtype=np.float64).ravel()
    _same_length(labels, probs)
    return labels[labels >= 0], probs[labels >= 0]


def _check(target: float, delta: float) -> None:
    for name, value in (("the target rate", target), ("delta", delta)):
        if not 0.0 < value < 1.0:
            raise UserInputError(f"{name} {value}: must be strictly between 0 and 1")


def _same_length(labels: np.ndarray, probs: np.ndarray) -> None:
    if len(labels) != len(probs):
        raise UserInputError(f"{len(labels)} labels for {len(probs)} probabilities: give one label "
                             "per probability")


def _share(flags: np.ndarray) -> float:
    return float(flags.mean()) if len(flags) else math.nan
