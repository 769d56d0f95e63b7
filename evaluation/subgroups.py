"""The report per subgroup: view position, sex and age band, each with n, prevalence and AUROC.

A model can rank well overall and badly for a group (AP films from the ward, children); each row
carries its bootstrap interval so a reader sees which differences the data can support.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from contracts.demographics import AGE_UNKNOWN
from contracts.prediction_files import AGE, PATIENT, SEX, VIEW
from evaluation import bootstrap
from models.metrics import auroc_or_nan

AGE_BANDS = ((0, 20, "<20"), (20, 40, "20-39"), (40, 60, "40-59"), (60, 200, ">=60"))
UNKNOWN = "unknown"
SUBGROUPS_FILE = "subgroups.json"


def _age_band(age: int) -> str:
    if age == AGE_UNKNOWN or age < 0:
        return UNKNOWN
    return next((name for low, high, name in AGE_BANDS if low <= age < high), UNKNOWN)


def group_labels(meta: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Returns {"view": ..., "sex": ..., "age band": ...} group names per record (`UNKNOWN` where a
    record does not say), for the patient columns present in `meta`."""
    groups = {}
    if VIEW in meta:
        groups["view"] = np.array([v.strip().upper() or UNKNOWN for v in meta[VIEW]], dtype=object)
    if SEX in meta:
        groups["sex"] = np.array([s.strip().upper() or UNKNOWN for s in meta[SEX]], dtype=object)
    if AGE in meta:
        groups["age band"] = np.array([_age_band(int(a)) for a in meta[AGE]], dtype=object)
    return groups


def _order(attribute: str, names) -> list[str]:
    if attribute == "age band":
        known = [name for _, _, name in AGE_BANDS]
        return [n for n in known if n in names] + [n for n in sorted(names) if n not in known]
    return sorted(names, key=lambda n: (n == UNKNOWN, n))


def subgroup_table(labels: np.ndarray, probs: np.ndarray, meta: Mapping[str, np.ndarray],
                   resamples: int) -> list[dict[str, Any]]:
    """Returns one row per (attribute, group) over the records with a known label.

    Each row: attribute, group, n, prevalence, auroc (NaN when the group holds one class),
    auroc_ci95 (resampling the group's patients, `meta[PATIENT]`, evaluation/bootstrap.py; None when
    no resample holds both classes), auroc_resamples_used and patients.
    """
    labels, probs = np.asarray(labels), np.asarray(probs, dtype=np.float64)
    known = labels >= 0
    everyone = bootstrap.clusters(meta.get(PATIENT), len(labels))
    rows = []
    for attribute, groups in group_labels(meta).items():
        for name in _order(attribute, set(groups[known])):
            members = known & (groups == name)
            y, p = labels[members], probs[members]
            clusters = everyone.subset(members)
            drawn = bootstrap.intervals(clusters, {"auroc": bootstrap.auroc(y, p)}, resamples)["auroc"]
            rows.append({"attribute": attribute, "group": name, "n": int(members.sum()),
                         "patients": clusters.patients, "prevalence": float(y.mean()) if len(y) else math.nan,
                         "auroc": auroc_or_nan(y, p), "auroc_ci95": drawn["ci95"],
                         "auroc_resamples_used": drawn["resamples_used"]})
    return rows


def format_subgroups(rows: list[dict[str, Any]]) -> str:
    """Returns the subgroup table as text."""
    lines = [f"{'attribute':<10} {'group':<8} {'n':>6} {'patients':>8} {'prevalence':>10} {'AUROC':>7}  "
             f"95% CI (by {bootstrap.UNIT})"]
    for row in rows:
        auroc = "n/a" if row["auroc"] is None or math.isnan(row["auroc"]) else f"{row['auroc']:.3f}"
        ci = row["auroc_ci95"]
        shown = f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "-"
        lines.append(f"{row['attribute']:<10} {row['group']:<8} {row['n']:>6} {row.get('patients', 'n/a'):>8} "
                     f"{row['prevalence']:>10.3f} "
                     f"{auroc:>7}  {shown}")
    return "\n".join(lines)
