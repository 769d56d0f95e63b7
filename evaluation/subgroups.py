"""The report per subgroup (view position, sex, age band): n, prevalence and AUROC with its
interval, so a reader sees which differences between groups the data can support."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from contracts.prediction_files import AGE, PATIENT, SEX, VIEW
from evaluation import statistics
from evaluation.statistics import Scores
from models.metrics import auroc_or_nan

AGE_BANDS = ((0, 20, "<20"), (20, 40, "20-39"), (40, 60, "40-59"), (60, 200, ">=60"))
UNKNOWN = "unknown"  # also the band of an unknown (negative) age
SUBGROUPS_FILE = "subgroups.json"


def group_labels(meta: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{"view", "sex", "age band"} -> group name per record, for the patient columns in `meta`."""
    groups = {}
    for attribute, column in (("view", VIEW), ("sex", SEX)):
        if column in meta:
            groups[attribute] = np.array([v.strip().upper() or UNKNOWN for v in meta[column]], dtype=object)
    if AGE in meta:
        bands = [next((name for low, high, name in AGE_BANDS if low <= int(age) < high), UNKNOWN)
                 for age in meta[AGE]]
        groups["age band"] = np.array(bands, dtype=object)
    return groups


def _order(attribute: str, names) -> list[str]:
    if attribute == "age band":
        known = [name for _, _, name in AGE_BANDS]
        return [n for n in known if n in names] + [n for n in sorted(names) if n not in known]
    return sorted(names, key=lambda n: (n == UNKNOWN, n))


def subgroup_table(labels: np.ndarray, probs: np.ndarray, meta: Mapping[str, np.ndarray],
                   resamples: int) -> list[dict[str, Any]]:
    """One row per (attribute, group) over the known labels: n, patients, prevalence, AUROC (NaN for
    one class) and its interval over the group's patients."""
    labels, probs = np.asarray(labels), np.asarray(probs, dtype=np.float64)
    known = labels >= 0
    everyone = statistics.clusters(meta.get(PATIENT), len(labels))
    rows = []
    for attribute, groups in group_labels(meta).items():
        for name in _order(attribute, set(groups[known])):
            members = known & (groups == name)
            y, p = labels[members], probs[members]
            clusters = everyone.subset(members)
            drawn = statistics.intervals(clusters, {"auroc": statistics.auroc(y, p)}, resamples)["auroc"]
            rows.append({"attribute": attribute, "group": name, "n": int(members.sum()),
                         "patients": clusters.patients, "prevalence": float(y.mean()) if len(y) else math.nan,
                         "auroc": auroc_or_nan(y, p), "auroc_ci95": drawn["ci95"],
                         "auroc_resamples_used": drawn["resamples_used"]})
    return rows


def section(scores: Sequence[Scores], bootstrap: int) -> dict[str, Any] | None:
    tables = {s.name: subgroup_table(s.labels, s.probs, s.meta, bootstrap) for s in scores if s.meta}
    return tables or None
