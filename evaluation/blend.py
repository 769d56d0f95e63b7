"""Blending models' probabilities: weights, the weighted average, the threshold, and fitting both.

The reference blended EfficientNet, DenseNet and ResNet at 0.6 / 0.3 / 0.1 and called an image
abnormal above 0.6. Those stay the defaults; `fit` chooses weights and threshold on validation
predictions instead, by one stated criterion.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Sequence

import numpy as np
from sklearn.metrics import balanced_accuracy_score, brier_score_loss, roc_curve

from contracts.errors import UserInputError
from contracts.prediction_files import Predictions, few
from evaluation import settings
from models import calibration, registry

MAX_GRID_POINTS = 200_000  # weight vectors tried by `fit`; more would take minutes per validation set

# Why balanced accuracy: NIH is close to balanced overall but subsets and other sources are not, and
# plain accuracy then rewards leaning towards the majority class; balanced accuracy weighs
# sensitivity and specificity equally. It equals (1 + Youden's J) / 2, so its best threshold is the
# ROC point farthest above the diagonal. Unlike AUROC it depends on the threshold, so one number
# chooses weights and threshold together. Ties (common on small validation sets) go to the blend
# with the lower Brier score: a proper scoring rule that prefers the sharper, better-ranked mixture.
CRITERION = "max balanced accuracy (= (1 + Youden's J) / 2), ties to the lower Brier score"


@dataclasses.dataclass(frozen=True)
class Fit:
    """Weights and threshold chosen on validation predictions.

    Attributes:
      weights: (M,) non-negative, summing to 1.
      threshold: P(blend) >= threshold is called abnormal.
      balanced_accuracy: the criterion's value on validation at these weights and threshold.
      brier: the blend's Brier score on validation (the tie-breaker).
      fitted_weights: whether the weights were chosen (False: given by the user).
      fitted_threshold: whether the threshold was chosen (False: given by the user).
      records: validation records used.
    """

    weights: np.ndarray
    threshold: float
    balanced_accuracy: float
    brier: float
    fitted_weights: bool
    fitted_threshold: bool
    records: int


def parse_weights(values: Sequence[str]) -> list[float]:
    """Parses `--blend_weight` strings into floats.

    Raises:
      UserInputError: a value is not a finite number.
    """
    weights = []
    for value in values:
        try:
            weight = float(value)
        except ValueError:
            weight = math.nan
        if not math.isfinite(weight):
            raise UserInputError(f"--blend_weight: {value!r} is not a number; pass one number per --blend_weight, "
                                 "repeated, e.g. --blend_weight=0.6 --blend_weight=0.3 --blend_weight=0.1")
        weights.append(weight)
    return weights


def normalise_weights(weights: Sequence[float], count: int) -> np.ndarray:
    """Returns `weights` scaled to sum to 1.

    Args:
      weights: one non-negative weight per model.
      count: how many models there are.

    Raises:
      UserInputError: wrong number of weights, a negative weight, or all zero.
    """
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
    """Returns the reference weights of the files' backbones, normalised to sum 1.

    Args:
      files: prediction files whose sidecars record a backbone.

    Raises:
      UserInputError: a file has no sidecar naming its backbone, or its backbone has no reference
        weight; the message says to pass --blend_weight.
    """
    weights = []
    for file in files:
        if file.backbone is None:
            raise UserInputError(
                f"{file.path}: no sidecar JSON beside it naming its backbone, so its default weight is unknown; "
                "pass --blend_weight once per file or --fit_on=<validation prediction file> once per file"
            )
        if file.backbone not in registry.BACKBONES:
            raise UserInputError(
                f"{file.path}: backbone {file.backbone!r} has no default weight (known: "
                f"{registry.describe('ensemble_weight')}); pass --blend_weight or --fit_on"
            )
        weights.append(registry.BACKBONES[file.backbone].ensemble_weight)
    return normalise_weights(weights, len(files))


def blend(probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Returns the weighted average of models' probabilities.

    Args:
      probs: (N, M) P(abnormal), one column per model.
      weights: (M,) summing to 1.

    Returns:
      (N,) blended P(abnormal).
    """
    return np.asarray(probs, dtype=np.float64) @ np.asarray(weights, dtype=np.float64)


def calibrate_members(probs: np.ndarray, temperatures: Sequence[float]) -> np.ndarray:
    """Returns each model's probabilities after its temperature (column m by temperatures[m]); a
    temperature of 1 leaves its column exactly as it is. The first step of the one order: member
    logit -> temperature -> probability -> weighted blend -> threshold."""
    probs = np.asarray(probs, dtype=np.float64)
    return np.stack([column if t == 1.0 else calibration.apply_temperature(column, t)
                     for column, t in zip(probs.T, temperatures)], axis=1)


def fit_temperatures(probs: np.ndarray, labels: np.ndarray, names: Sequence[str]) -> list[float]:
    """Fits each model's temperature on validation (training.calibration.fit_temperature).

    Raises:
      UserInputError: validation of a single class, where no temperature is identifiable.
    """
    temperatures = []
    for column, name in zip(np.asarray(probs).T, names):
        temperature = calibration.fit_temperature(labels, column)
        if temperature is None:
            raise UserInputError(f"--fit_on: the validation labels hold one class, so no temperature can be "
                                 f"fitted for {name}; use validation files with normal and abnormal images")
        temperatures.append(temperature)
    return temperatures


def decide(probs: np.ndarray, threshold: float) -> np.ndarray:
    """Returns 1 (abnormal) where `probs >= threshold`, else 0, as int64."""
    return (np.asarray(probs) >= threshold).astype(np.int64)


def check_threshold(threshold: float) -> float:
    """Returns `threshold` after checking it is in [0, 1].

    Raises:
      UserInputError: it is not.
    """
    if not 0.0 <= threshold <= 1.0:
        raise UserInputError(f"--threshold={threshold} is outside [0, 1]; it compares with a probability")
    return float(threshold)


def simplex_grid(count: int, step: float) -> np.ndarray:
    """Returns every weight vector of `count` non-negative multiples of `step` that sum to 1.

    Raises:
      UserInputError: `step` does not divide 1 or the grid would exceed MAX_GRID_POINTS.
    """
    parts = round(1.0 / step) if step > 0 else 0
    if parts < 1 or not math.isclose(parts * step, 1.0, rel_tol=1e-9):
        raise UserInputError(f"--fit_step={step} must divide 1 (e.g. 0.05, 0.1, 0.25)")
    size = math.comb(parts + count - 1, count - 1)
    if size > MAX_GRID_POINTS:
        raise UserInputError(
            f"--fit_step={step} with {count} models gives {size:,} weight vectors (limit {MAX_GRID_POINTS:,}); "
            "pass a larger --fit_step"
        )
    # Stars and bars: the bar positions split `parts` units among `count` models.
    grid = []
    for bars in itertools.combinations(range(parts + count - 1), count - 1):
        edges = (-1,) + bars + (parts + count - 1,)
        grid.append([edges[i + 1] - edges[i] - 1 for i in range(count)])
    return np.asarray(grid, dtype=np.float64) / parts


def best_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """Returns the threshold maximising balanced accuracy of `scores >= threshold` on `labels`.

    The threshold lies midway between the chosen cut's lowest abnormal score and the next lower
    score: the same validation decisions, but not sitting on one validation image's score.
    """
    fpr, tpr, cuts = roc_curve(labels, scores, drop_intermediate=False)
    youden = tpr - fpr
    # The first ROC point needs an infinite cut (everyone normal); it is never the useful choice.
    youden[0] = -np.inf
    best = int(np.argmax(youden))  # the first maximum: the highest cut among equals
    lower = cuts[best + 1] if best + 1 < len(cuts) else 0.0
    return float((cuts[best] + lower) / 2)


def _score(labels: np.ndarray, scores: np.ndarray, threshold: float) -> tuple[float, float]:
    return (
        float(balanced_accuracy_score(labels, decide(scores, threshold))),
        float(brier_score_loss(labels, np.clip(scores, 0.0, 1.0))),
    )


def check_fit_labels(labels: np.ndarray | None, paths: Sequence[str], ids: np.ndarray) -> np.ndarray:
    """Returns validation labels after checking they can drive `fit`.

    Args:
      labels: merged labels of the validation files, or None.
      paths: the validation files, for the message.
      ids: the validation ids, aligned with `labels`.

    Raises:
      UserInputError: no labels, some unknown, or only one class.
    """
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


def fit(
    probs: np.ndarray,
    labels: np.ndarray,
    *,
    step: float = settings.FIT_STEP,
    weights: np.ndarray | None = None,
    threshold: float | None = None,
) -> Fit:
    """Chooses blend weights and/or threshold maximising balanced accuracy on validation.

    Args:
      probs: (N, M) validation P(abnormal), one column per model.
      labels: (N,) 0/1 validation labels, both classes present.
      step: spacing of the weight grid on the simplex.
      weights: fixed weights (only the threshold is fitted), or None to fit them.
      threshold: fixed threshold (only the weights are fitted), or None to fit it.

    Returns:
      The chosen weights and threshold with their validation scores.

    Raises:
      UserInputError: both weights and threshold are fixed (nothing to fit), or the step is unusable.
    """
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
        balanced, brier = _score(labels, scores, cut)
        # Rounded so that float noise does not break a tie the Brier score should break.
        key = (round(balanced, 12), -brier)
        if best is None or key > best[0]:
            best = (key, candidate, cut, balanced, brier)
    _, chosen, cut, balanced, brier = best
    return Fit(
        weights=chosen, threshold=float(cut), balanced_accuracy=balanced, brier=brier,
        fitted_weights=weights is None, fitted_threshold=threshold is None, records=len(labels),
    )

