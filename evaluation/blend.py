"""Blending models' probabilities: weights (the reference's 0.6 / 0.3 / 0.1 by default), the
weighted average, the threshold (0.6 by default), and `fit`, which chooses both on validation."""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Sequence

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import balanced_accuracy_score, brier_score_loss, roc_curve

from contracts.errors import UserInputError
from contracts.prediction_files import Predictions, few
from evaluation import settings
from models import calibration, registry

MAX_GRID_POINTS = 200_000  # weight vectors `fit` tries; more would take minutes

# Balanced accuracy, not accuracy: on unbalanced sets accuracy rewards leaning to the majority class.
# Unlike AUROC it depends on the threshold, so one number chooses weights and threshold together.
# Ties (common on small validation sets) go to the lower Brier score, a proper scoring rule.
CRITERION = "max balanced accuracy (= (1 + Youden's J) / 2), ties to the lower Brier score"
# A finding has no threshold to choose: its weights rank, so AUROC; same tie rule, then grid order.
AUROC_CRITERION = "max AUROC, ties to the lower Brier score"
_CANDIDATES_AT_ONCE = 256  # weight vectors scored in one (N, 256) block


@dataclasses.dataclass(frozen=True)
class Fit:
    """Weights (summing to 1) and threshold chosen on validation, and their validation scores."""
    weights: np.ndarray
    threshold: float
    balanced_accuracy: float
    brier: float
    fitted_weights: bool
    fitted_threshold: bool
    records: int


def parse_weights(values: Sequence[str]) -> list[float]:
    weights = []
    for value in values:
        try:
            weight = float(value)
        except ValueError:
            weight = math.nan
        if not math.isfinite(weight):
            raise UserInputError(f"--blend_weight: {value!r} is not a number; pass one number per "
                                 "--blend_weight, repeated, e.g. --blend_weight=0.6 --blend_weight=0.3 "
                                 "--blend_weight=0.1")
        weights.append(weight)
    return weights


def normalise_weights(weights: Sequence[float], count: int) -> np.ndarray:
    """`weights` (one per each of `count` models) checked and scaled to sum to 1."""
    array = np.asarray(weights, dtype=np.float64)
    if array.shape != (count,):
        raise UserInputError(
            f"--blend_weight: got {array.size} weight(s) for {count} prediction file(s); pass one per file"
        )
    if (array < 0).any() or not np.isfinite(array).all():
        raise UserInputError(f"--blend_weight: weights must be finite and non-negative, got {list(weights)}")
    if array.sum() <= 0:
        raise UserInputError("--blend_weight: weights sum to 0; give at least one model a positive weight")
    return array / array.sum()


def reference_weights(files: Sequence[Predictions]) -> np.ndarray:
    """The registry's weights of the backbones the files' sidecars name, normalised."""
    weights = []
    for file in files:
        if file.backbone is None:
            raise UserInputError(
                f"{file.path}: no sidecar JSON beside it naming its backbone, so its default weight is "
                "unknown; pass --blend_weight once per file or --fit_on=<validation prediction file> once "
                "per file"
            )
        if file.backbone not in registry.BACKBONES:
            raise UserInputError(
                f"{file.path}: backbone {file.backbone!r} has no default weight (known: "
                f"{registry.describe('ensemble_weight')}); pass --blend_weight or --fit_on"
            )
        weights.append(registry.BACKBONES[file.backbone].ensemble_weight)
    return normalise_weights(weights, len(files))


def blend(probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The (N,) weighted average of (N, M) probabilities, one column per model."""
    return np.asarray(probs, dtype=np.float64) @ np.asarray(weights, dtype=np.float64)


def calibrate_members(probs: np.ndarray, temperatures: Sequence[float]) -> np.ndarray:
    """Column m after temperatures[m] (1 leaves it exactly as it is): the first step of the one
    order, member logit -> temperature -> probability -> blend -> threshold."""
    probs = np.asarray(probs, dtype=np.float64)
    return np.stack([column if t == 1.0 else calibration.apply_temperature(column, t)
                     for column, t in zip(probs.T, temperatures)], axis=1)


def decide(probs: np.ndarray, threshold: float) -> np.ndarray:
    return (np.asarray(probs) >= threshold).astype(np.int64)


def check_threshold(threshold: float) -> float:
    if not 0.0 <= threshold <= 1.0:
        raise UserInputError(f"--threshold={threshold} is outside [0, 1]; it compares with a probability")
    return float(threshold)


def simplex_grid(count: int, step: float) -> np.ndarray:
    """Every weight vector of `count` non-negative multiples of `step` that sum to 1."""
    parts = round(1.0 / step) if step > 0 else 0
    if parts < 1 or not math.isclose(parts * step, 1.0, rel_tol=1e-9):
        raise UserInputError(f"--fit_step={step} must divide 1 (e.g. 0.05, 0.1, 0.25)")
    size = math.comb(parts + count - 1, count - 1)
    if size > MAX_GRID_POINTS:
        raise UserInputError(f"--fit_step={step} with {count} models gives {size:,} weight vectors "
                             f"(limit {MAX_GRID_POINTS:,}); pass a larger --fit_step")
    # Stars and bars: the bar positions split `parts` units among `count` models.
    grid = []
    for bars in itertools.combinations(range(parts + count - 1), count - 1):
        edges = (-1,) + bars + (parts + count - 1,)
        grid.append([edges[i + 1] - edges[i] - 1 for i in range(count)])
    return np.asarray(grid, dtype=np.float64) / parts


def best_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The threshold maximising balanced accuracy (= (1 + Youden's J) / 2) of `scores >= threshold`,
    midway between the chosen cut and the next lower score, not on one validation image's score."""
    fpr, tpr, cuts = roc_curve(labels, scores, drop_intermediate=False)
    youden = tpr - fpr
    # The first ROC point needs an infinite cut (everyone normal); it is never the useful choice.
    youden[0] = -np.inf
    best = int(np.argmax(youden))  # the first maximum: the highest cut among equals
    lower = cuts[best + 1] if best + 1 < len(cuts) else 0.0
    return float((cuts[best] + lower) / 2)


def check_fit_labels(labels: np.ndarray | None, paths: Sequence[str], ids: np.ndarray) -> np.ndarray:
    """The validation labels of the files `paths`, checked: all known, both classes."""
    if labels is None:
        raise UserInputError(
            f"--fit_on: {few(paths)} have no label column; pass validation predictions with labels "
            "(training's val_predictions.csv)"
        )
    unknown = labels < 0
    if unknown.any():
        raise UserInputError(f"--fit_on: {unknown.sum()} validation id(s) have no label: {few(ids[unknown])}")
    if len(np.unique(labels)) < 2:
        raise UserInputError("--fit_on: validation labels are all one class; weights and threshold need both")
    return labels


def fit_by_auroc(probs: np.ndarray, labels: np.ndarray, step: float) -> np.ndarray:
    """The weights on `simplex_grid(M, step)` whose blend of (N, M) `probs` best ranks the (N,) 0/1
    `labels` by `AUROC_CRITERION` (the first in grid order among equals)."""
    labels = np.asarray(labels, dtype=np.int64)
    positives, count = labels == 1, int((labels == 1).sum())
    grid = simplex_grid(probs.shape[1], step)
    aurocs, briers = [], []
    for start in range(0, len(grid), _CANDIDATES_AT_ONCE):
        scores = blend(probs, grid[start:start + _CANDIDATES_AT_ONCE].T)  # (N, candidates)
        ranks = rankdata(scores, axis=0)  # Mann-Whitney over mid-ranks, as models.metrics.auroc_or_nan
        pairs = count * (len(labels) - count)
        aurocs.append((ranks[positives].sum(axis=0) - count * (count + 1) / 2) / pairs)
        briers.append(np.mean((np.clip(scores, 0.0, 1.0) - labels[:, None]) ** 2, axis=0))
    # Rounded so that float noise does not break a tie the Brier score should break; lexsort is stable.
    best = np.lexsort((np.concatenate(briers), -np.round(np.concatenate(aurocs), 12)))[0]
    return grid[best]


def fit(probs: np.ndarray, labels: np.ndarray, *, step: float = settings.FIT_STEP,
        weights: np.ndarray | None = None, threshold: float | None = None) -> Fit:
    """Chooses the blend weights on a `step` grid and/or the threshold (whichever is not given)
    maximising `CRITERION` on (N, M) validation probabilities and their (N,) 0/1 labels."""
    if weights is not None and threshold is not None:
        raise UserInputError(
            "--fit_on with both --blend_weight and --threshold leaves nothing to fit; drop one of the three"
        )
    labels = np.asarray(labels, dtype=np.int64)
    candidates = simplex_grid(probs.shape[1], step) if weights is None else np.asarray([weights])
    best = None
    for candidate in candidates:
        scores = blend(probs, candidate)
        cut = best_threshold(labels, scores) if threshold is None else threshold
        balanced = float(balanced_accuracy_score(labels, decide(scores, cut)))
        brier = float(brier_score_loss(labels, np.clip(scores, 0.0, 1.0)))
        # Rounded so that float noise does not break a tie the Brier score should break.
        key = (round(balanced, 12), -brier)
        if best is None or key > best[0]:
            best = (key, candidate, cut, balanced, brier)
    _, chosen, cut, balanced, brier = best
    return Fit(weights=chosen, threshold=float(cut), balanced_accuracy=balanced, brier=brier,
               fitted_weights=weights is None, fitted_threshold=threshold is None, records=len(labels))

