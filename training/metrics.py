"""Metrics training and the report share, without TensorFlow (the report imports them from here)."""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import roc_auc_score


def auroc_or_nan(labels: np.ndarray, scores: np.ndarray) -> float:
    """Returns the AUROC of `scores` against 0/1 `labels`, NaN when only one class is present."""
    return float(roc_auc_score(labels, scores)) if len(np.unique(labels)) == 2 else math.nan
