"""Temperature scaling: how far a model's P(abnormal) can be read as a probability, and its fix.

One order everywhere (predict.py, ensemble.py, the exported SavedModel): member logit ->
temperature -> probability -> weighted blend -> threshold. A member's logit is recovered from its
softmax output, z = log p - log(1 - p) (equal to the difference of its two pre-softmax logits), and
its calibrated probability is sigmoid(z / T). T > 1 softens an over-confident model, T < 1 sharpens
an under-confident one, and T = 1 changes nothing; the ranking (AUROC) never changes.

T is fitted on validation predictions by minimising the negative log-likelihood (Guo et al., 2017,
"On Calibration of Modern Neural Networks"). Training fits each run's own T on its
val_predictions.csv (recorded in the sidecar); `ensemble.py --fit_on` fits each member's T on its
validation file before fitting the blend.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize

ORDER = "member logit -> temperature -> probability -> weighted blend -> threshold"  # recorded in outputs
PROB_EPSILON = 1e-7  # probabilities are clipped to [eps, 1 - eps] before the logit: float32 softmax hits 0 and 1
TEMPERATURE_RANGE = (0.01, 100.0)  # the search interval of T (100: a model near chance is flattened to ~0.5)
ECE_BINS = 10  # equal-width bins of P(abnormal) for the expected calibration error


def logit(probs: np.ndarray) -> np.ndarray:
    """Returns log p - log(1 - p) of P(abnormal), in float64, after clipping to [eps, 1 - eps]."""
    p = np.clip(np.asarray(probs, dtype=np.float64), PROB_EPSILON, 1.0 - PROB_EPSILON)
    return np.log(p) - np.log1p(-p)


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Returns sigmoid(logit(p) / T): the calibrated P(abnormal)."""
    return 1.0 / (1.0 + np.exp(-logit(probs) / float(temperature)))


def _nll(labels: np.ndarray, z: np.ndarray, temperature: float) -> float:
    scaled = z / temperature
    # log(1 + exp(-s)) for positives, log(1 + exp(s)) for negatives, without overflow.
    return float(np.mean(np.logaddexp(0.0, np.where(labels == 1, -scaled, scaled))))


def negative_log_likelihood(labels: np.ndarray, probs: np.ndarray, temperature: float = 1.0) -> float:
    """Returns the mean binary cross-entropy of the labels under sigmoid(logit(p) / T)."""
    return _nll(np.asarray(labels), logit(probs), temperature)


def fit_temperature(labels: np.ndarray, probs: np.ndarray) -> float | None:
    """Returns the T in `TEMPERATURE_RANGE` that minimises the validation NLL, or None when the
    records known (label 0 or 1) hold a single class, where no T is identifiable.

    Args:
      labels: (N,) 1 abnormal, 0 normal, -1 unknown (ignored).
      probs: (N,) the model's uncalibrated P(abnormal).
    """
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
    """Returns the ECE of P(abnormal): over `bins` equal-width bins of p, the record-weighted mean of
    |fraction abnormal - mean p|. NaN without known labels."""
    labels = np.asarray(labels)
    known = labels >= 0
    y, p = labels[known].astype(np.float64), np.asarray(probs, dtype=np.float64)[known]
    if not len(y):
        return math.nan
    index = np.minimum((p * bins).astype(np.int64), bins - 1)  # p = 1 falls in the last bin
    total = 0.0
    for b in np.unique(index):
        members = index == b
        total += members.sum() * abs(y[members].mean() - p[members].mean())
    return float(total / len(y))


def reliability_bins(labels: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> list[dict[str, float]]:
    """Returns, per non-empty bin of p, {"low", "high", "count", "mean_p", "fraction_abnormal"}."""
    labels = np.asarray(labels)
    known = labels >= 0
    y, p = labels[known].astype(np.float64), np.asarray(probs, dtype=np.float64)[known]
    index = np.minimum((p * bins).astype(np.int64), bins - 1)
    return [{"low": b / bins, "high": (b + 1) / bins, "count": int((index == b).sum()),
             "mean_p": float(p[index == b].mean()), "fraction_abnormal": float(y[index == b].mean())}
            for b in np.unique(index)]
