"""Assigning images to splits by patient, so no patient is seen in two splits."""

from __future__ import annotations

import collections
from typing import Iterable, Sequence

import numpy as np


def grouped_split(items: Sequence[tuple[str, str, int]], fractions: dict[str, float],
                  seed: int) -> dict[str, str]:
    """Image name -> split for (image, patient, label) `items`, each patient's images together: within
    a majority-label stratum, patients go (largest first, `seed` order among equals) to the split
    furthest below its share of `fractions` (>= 0, summing to 1)."""
    by_patient: dict[str, list[tuple[str, int]]] = collections.defaultdict(list)
    for name, patient, label in items:
        by_patient[patient].append((name, label))
    strata: dict[int, list[str]] = collections.defaultdict(list)
    for patient, images in by_patient.items():
        abnormal = sum(label == 1 for _, label in images)
        strata[int(2 * abnormal >= len(images))].append(patient)
    rng = np.random.default_rng(seed)
    splits = [s for s, f in fractions.items() if f > 0]
    assignment: dict[str, str] = {}
    for stratum in sorted(strata):
        patients = sorted(strata[stratum])
        # A stable sort on size after a seeded shuffle: big patients first, ties in seeded order.
        shuffled = [patients[i] for i in rng.permutation(len(patients))]
        patients = sorted(shuffled, key=lambda p: -len(by_patient[p]))
        total = sum(len(by_patient[p]) for p in patients)
        filled = dict.fromkeys(splits, 0)
        for patient in patients:
            target = max(splits, key=lambda s: (fractions[s] * total - filled[s], fractions[s]))
            filled[target] += len(by_patient[patient])
            for name, _ in by_patient[patient]:
                assignment[name] = target
    return assignment


def ordered_by_seed(names: Iterable[str], seed: int) -> list[str]:
    """`names` sorted, then shuffled with `seed` (the record order inside a split)."""
    names = sorted(names)
    return [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
