"""Temperature scaling of P(abnormal) (Guo et al., 2017): sigmoid(logit(p) / T), in one `ORDER`."""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize

ORDER = "member logit -> temperature -> probability -> weighted blend -> threshold"  # recorded in outputs
PROB_EPSILON = 1e-7  # p is clipped to [eps, 1 - eps] before the logit: float32 softmax hits 0 and 1
TEMPERATURE_RANGE = (0.01, 100.0)  # the search interval of T (100: a model near chance is flattened to ~0.5)
ECE_BINS = 10  # equal-width bins of P(abnormal) for the expected calibration error


def logit(probs: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(probs, dtype=np.float64), PROB_EPSILON, 1.0 - PROB_EPSILON)
    return np.log(p) - np.log1p(-p)


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """sigmoid(logit(p) / T): the calibrated P(abnormal)."""
    return 1.0 / (1.0 + np.exp(-logit(probs) / float(temperature)))


def _nll(labels: np.ndarray, z: np.ndarray, temperature: float) -> float:
    scaled = z / temperature
    # log(1 + exp(-s)) for positives, log(1 + exp(s)) for negatives, without overflow.
    return float(np.mean(np.logaddexp(0.0, np.where(labels == 1, -scaled, scaled))))


def negative_log_likelihood(labels: np.ndarray, probs: np.ndarray, temperature: float = 1.0) -> float:
    """The mean binary cross-entropy of the labels under sigmoid(logit(p) / T)."""
    return _nll(np.asarray(labels), logit(probs), temperature)


def fit_temperature(labels: np.ndarray, probs: np.ndarray) -> float | None:
    """The T minimising the NLL over known labels; None when they hold one class (no T identifiable)."""
    labels = np.asarray(labels)
    known = labels >= 0
    y, z = labels[known], logit(np.asarray(probs)[known])
    if len(np.unique(y)) < 2:
        return None
    low, high = (math.log(t) for t in TEMPERATURE_RANGE)
    found = optimize.minimize_scalar(lambda log_t: _nll(y, z, math.exp(log_t)), bounds=(low, high),
                                     method="bounded", options={"xatol": 1e-6})
    return float(math.exp(found.x))


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> float:
    """The record-weighted |fraction abnormal - mean p| over bins of p (NaN without known labels)."""
    found = reliability_bins(labels, probs, bins)
    total = sum(b["count"] for b in found)
    if not total:
        return math.nan
    return float(sum(b["count"] * abs(b["fraction_abnormal"] - b["mean_p"]) for b in found) / total)


def reliability_bins(labels: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> list[dict[str, float]]:
    """Returns, per non-empty bin of p, {"low", "high", "count", "mean_p", "fraction_abnormal"}."""
    labels = np.asarray(labels)
    known = labels >= 0
    y, p = labels[known].astype(np.float64), np.asarray(probs, dtype=np.float64)[known]
    index = np.minimum((p * bins).astype(np.int64), bins - 1)  # p = 1 falls in the last bin
    return [{"low": b / bins, "high": (b + 1) / bins, "count": int((index == b).sum()),
             "mean_p": float(p[index == b].mean()), "fraction_abnormal": float(y[index == b].mean())}
            for b in np.unique(index)]


def calibrate_findings(labels: np.ndarray, probs: np.ndarray,
                       temperatures: tuple[float | None, ...] | None = None) -> tuple[np.ndarray, tuple]:
    """(calibrated (N, 14), temperatures) of per-finding sigmoids: each finding's own temperature, the
    given ones or fitted on `labels` (-1 unknown; None where a finding has one class: left as is)."""
    probs = np.asarray(probs, dtype=np.float64)
    if temperatures is None:
        temperatures = tuple(fit_temperature(labels[:, k], probs[:, k]) for k in range(probs.shape[1]))
    columns = [p if t is None else apply_temperature(p, t) for p, t in zip(probs.T, temperatures)]
    return np.stack(columns, axis=1).reshape(probs.shape), tuple(temperatures)
