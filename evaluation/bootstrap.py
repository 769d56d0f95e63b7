"""The report's 95% intervals: a percentile bootstrap that resamples patients, not images.

A patient's images are not independent (NIH has up to 184 per patient, and a grouped split keeps them
together), so each resample draws patients with replacement and takes all their images. Every
section's interval comes from here, with one seed, so the models of one report share resamples.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import pandas as pd

SEED = 0
UNIT = "patient"
_BLOCK = 64  # resamples weighed at once: (_BLOCK, images) float64 weights


@dataclasses.dataclass(frozen=True)
class Clusters:
    """Which records share a patient.

    Attributes:
      index: (N,) int64, the cluster of each record (0 .. count - 1).
      count: clusters: the patients, plus one per record whose patient is unknown.
      alone: records whose patient is unknown (""), each its own cluster.
    """

    index: np.ndarray
    count: int
    alone: int

    @property
    def patients(self) -> int:
        """Clusters that are known patients."""
        return self.count - self.alone

    def subset(self, mask: np.ndarray) -> "Clusters":
        """The clusters of the records in `mask`, numbered afresh (known patients still first)."""
        kept, index = np.unique(self.index[mask], return_inverse=True)
        return Clusters(index.astype(np.int64).reshape(-1), len(kept), int((kept >= self.patients).sum()))

    def summary(self) -> dict[str, Any]:
        """What the report says of the resampling unit."""
        records = len(self.index)
        return {"bootstrap_by": UNIT, "patients": self.patients,
                "images_per_patient": (records - self.alone) / self.patients if self.patients else math.nan,
                "images_without_patient": self.alone}


def clusters(patient_ids: np.ndarray | None, records: int) -> Clusters:
    """Groups `records` records by patient id; an empty or missing id makes its record its own cluster.

    Known patients are numbered first (in order of first appearance), then the records without one.
    """
    if patient_ids is None:
        ids = np.full(records, "")
    else:
        ids = np.asarray(patient_ids).astype(str)
        if len(ids) != records:
            raise ValueError(f"{len(ids)} patient ids for {records} records")
    unknown = np.char.str_len(np.char.strip(ids)) == 0 if records else np.zeros(0, dtype=bool)
    index = np.empty(records, dtype=np.int64)
    codes, uniques = pd.factorize(ids[~unknown])
    index[~unknown] = codes
    alone = int(unknown.sum())
    index[unknown] = len(uniques) + np.arange(alone)
    return Clusters(index, len(uniques) + alone, alone)


def weights(groups: Clusters, resamples: int, seed: int = SEED) -> Iterator[np.ndarray]:
    """Yields the resamples in blocks of (B, N) record weights: how often each record's cluster was drawn.

    A metric of the multiset of drawn records equals the same metric with these weights, so every
    statistic below is a weighted one and no resample is materialised.
    """
    rng = np.random.default_rng(seed)
    for start in range(0, resamples, _BLOCK):
        block = min(_BLOCK, resamples - start)
        counts = np.stack([np.bincount(rng.integers(0, groups.count, groups.count), minlength=groups.count)
                           for _ in range(block)])
        yield counts[:, groups.index].astype(np.float64)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan)


def rate(hits: np.ndarray, among: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """The weighted share of `hits` among the records in `among` (NaN where none was drawn)."""
    hits, among = np.asarray(hits, dtype=np.float64), np.asarray(among, dtype=np.float64)
    return lambda w: _ratio(w @ (hits * among), w @ among)


def auroc(labels: np.ndarray, probs: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """The weighted Mann-Whitney AUROC (ties count one half); NaN where a resample holds one class."""
    labels, probs = np.asarray(labels), np.asarray(probs, dtype=np.float64)
    order = np.argsort(probs, kind="stable")
    ordered = probs[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]) if len(ordered) else np.zeros(0, int)
    positive, negative = (labels[order] == 1).astype(np.float64), (labels[order] == 0).astype(np.float64)

    def statistic(w: np.ndarray) -> np.ndarray:
        if not len(starts):
            return np.full(len(w), np.nan)
        w = w[:, order]
        pos, neg = np.add.reduceat(w * positive, starts, axis=1), np.add.reduceat(w * negative, starts, axis=1)
        below = np.cumsum(neg, axis=1) - neg  # negative weight strictly below each tie group
        pairs = pos.sum(axis=1) * neg.sum(axis=1)
        return _ratio((pos * (below + 0.5 * neg)).sum(axis=1), pairs)

    return statistic


def difference(a: Callable[[np.ndarray], np.ndarray],
               b: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    """a - b on the same resample (a paired comparison)."""
    return lambda w: a(w) - b(w)


def interval(values: np.ndarray) -> list[float] | None:
    """The percentile 95% interval [2.5%, 97.5%] of usable (finite) bootstrap values.

    None when it cannot be formed: no usable value, or all of them equal (one cluster, or a
    statistic the resampling cannot move), which would otherwise show as [x, x].
    """
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if not len(values) or values.min() == values.max():
        return None
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def intervals(groups: Clusters, statistics: Mapping[str, Callable[[np.ndarray], np.ndarray]], resamples: int,
              seed: int = SEED) -> dict[str, dict[str, Any]]:
    """Resamples patients `resamples` times and returns, per statistic, its interval and the resamples used.

    Args:
      groups: the records' clusters (`clusters`).
      statistics: name -> function of (B, N) weights giving (B,) values, NaN where a resample cannot
        form it (e.g. AUROC of a resample holding one class; such resamples are skipped).
      resamples: 0 gives no intervals.
      seed: the same seed for every entry of a report, so they share their resamples.

    Returns:
      name -> {"ci95": [low, high] or None, "resamples_used": int, "absent": why ci95 is None, or None}.
    """
    values: dict[str, list[np.ndarray]] = {name: [] for name in statistics}
    if resamples > 0 and groups.count > 0:
        for w in weights(groups, resamples, seed):
            for name, statistic in statistics.items():
                values[name].append(statistic(w))
    result = {}
    for name, parts in values.items():
        drawn = np.concatenate(parts) if parts else np.zeros(0)
        used = int(np.isfinite(drawn).sum())
        ci95 = interval(drawn)
        absent = None if ci95 is not None else (
            "no resample could form it" if not used else "it is the same in every resample")
        result[name] = {"ci95": ci95, "resamples_used": used, "absent": absent}
    return result
