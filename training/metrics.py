"""Metrics training and the report share, without TensorFlow (the report imports them from here)."""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata


def auroc_or_nan(labels: np.ndarray, scores: np.ndarray) -> float:
    """Returns the AUROC of `scores` against 0/1 `labels`, NaN when only one class is present.

    Computed as the Mann-Whitney statistic over mid-ranks, which is scikit-learn's roc_auc_score
    to rounding, ties counted as half (tests/test_report.py checks it), in a twentieth of the time:
    the report's bootstrap intervals call it thousands of times per model and subgroup.
    """
    labels = np.asarray(labels)
    positives = labels == 1
    n_pos = int(positives.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
