"""The report finding by finding: per NIH finding the counts, prevalence and AUROC with its interval by
patient, the mean over the findings that have one, and the published AUROCs (other splits) beside them."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import numpy as np

from contracts.labels import FINDINGS
from evaluation import statistics
from models.metrics import auroc_or_nan

KEY = "findings"  # the table's key in a metrics.json entry
# Under 10 positives (or negatives) one image can move a finding's AUROC by over 0.1 (1 / positives)
# and many patient resamples hold none of them: the counts are shown, not the number.
MIN_POSITIVES = 10
SCALE_ONLY = "other splits, for scale only"
MEAN = "mean"


@dataclasses.dataclass(frozen=True)
class Published:
    """A published per-finding AUROC table: `short` heads its column, `digits` as printed."""
    short: str
    citation: str
    auroc: Mapping[str, float]
    mean: float
    digits: int = 3


def _published(columns: tuple[tuple[str, str, float, int], ...],
               rows: Mapping[str, tuple[float, ...]]) -> tuple[Published, ...]:
    return tuple(Published(short, citation, {f: rows[f][i] for f in FINDINGS}, mean, digits)
                 for i, (short, citation, mean, digits) in enumerate(columns))


# None of these used NIH's official test_list.txt: for scale only (DESIGN.md, checked 2026-12-07).
PUBLISHED = _published((
    ("Wang17", "Wang et al. 2017, ChestX-ray8 (CVPR), ResNet-50", 0.738, 3),
    ("CheXNet", "Rajpurkar et al. 2017, CheXNet (arXiv:1711.05225)", 0.841, 3),
    ("repro", "Zech, github.com/jrzech/reproduce-chexnet (random split)", 0.838, 3),
    ("txv", 'Cohen et al., torchxrayvision DenseNet121 "all" (its NIH split)', 0.774, 2),
), {
    "Atelectasis": (0.716, 0.809, 0.818, 0.76),
    "Cardiomegaly": (0.807, 0.925, 0.909, 0.88),
    "Effusion": (0.784, 0.864, 0.883, 0.85),
    "Infiltration": (0.609, 0.735, 0.716, 0.68),
    "Mass": (0.706, 0.868, 0.838, 0.80),
    "Nodule": (0.671, 0.780, 0.776, 0.69),
    "Pneumonia": (0.633, 0.768, 0.762, 0.71),
    "Pneumothorax": (0.806, 0.889, 0.878, 0.75),
    "Consolidation": (0.708, 0.790, 0.800, 0.77),
    "Edema": (0.835, 0.888, 0.895, 0.85),
    "Emphysema": (0.815, 0.937, 0.932, 0.73),
    "Fibrosis": (0.769, 0.805, 0.825, 0.72),
    "Pleural_Thickening": (0.708, 0.806, 0.789, 0.74),
    "Hernia": (0.767, 0.916, 0.918, 0.91),
})


def _once_per_draw(statistic: statistics.Statistic) -> statistics.Statistic:
    """`statistic` remembering its last draw: the mean reuses each finding's values, not recomputes them."""
    last: list = [None, None]

    def remembered(w: np.ndarray) -> np.ndarray:
        if last[0] is not w:
            last[:] = [w, statistic(w)]
        return last[1]

    return remembered


def _row(finding: str, y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    positives, negatives = int((y == 1).sum()), int((y == 0).sum())
    scored = min(positives, negatives) >= MIN_POSITIVES
    return {"finding": finding, "positives": positives, "negatives": negatives,
            "prevalence": positives / len(y) if len(y) else math.nan,
            "auroc": auroc_or_nan(y, p) if scored else math.nan, "auroc_ci95": None,
            "auroc_resamples_used": 0,
            "absent": None if scored else f"fewer than {MIN_POSITIVES} positives or negatives"}


def table(finding_labels: np.ndarray, finding_probs: np.ndarray, patients: np.ndarray | None,
          bootstrap: int) -> dict[str, Any]:
    """Per finding (FINDINGS order) over the records whose findings are known (no -1): positives,
    negatives, prevalence, AUROC and its 95% interval over `bootstrap` resamples of `patients` (one
    draw for every finding and the mean); NaN AUROC, with `absent` saying why, under MIN_POSITIVES.
    No known finding at all: {"records_known": 0, ..., "absent": one line}. ValueError: bad shapes."""
    labels, probs = np.asarray(finding_labels, dtype=np.int64), np.asarray(finding_probs, dtype=np.float64)
    if labels.ndim != 2 or labels.shape[1] != len(FINDINGS) or probs.shape != labels.shape:
        raise ValueError(f"finding labels {labels.shape} and probabilities {probs.shape} must both be "
                         f"(records, {len(FINDINGS)})")
    known = (labels >= 0).all(axis=1)  # the format marks a record's 14 findings known or unknown together
    counts = {"records_known": int(known.sum()), "records_unknown": int((~known).sum())}
    if not known.any():
        why = f"none of its {len(labels)} records has finding labels: binary report only"
        return {**counts, "absent": why}
    labels, probs = labels[known], probs[known]
    groups = statistics.clusters(None if patients is None else np.asarray(patients)[known], len(labels))
    rows, drawn = [], {}
    for j, finding in enumerate(FINDINGS):
        rows.append(_row(finding, labels[:, j], probs[:, j]))
        if rows[-1]["absent"] is None:
            drawn[finding] = _once_per_draw(statistics.auroc(labels[:, j], probs[:, j]))
    parts = list(drawn.values())
    if parts:  # a resample where any of these findings has one class gives no mean: left out
        drawn[MEAN] = lambda w: np.mean([part(w) for part in parts], axis=0)
    spread = statistics.intervals(groups, drawn, bootstrap)
    for row in rows:
        if row["finding"] in spread:
            interval = spread[row["finding"]]
            row.update(auroc_ci95=interval["ci95"], auroc_resamples_used=interval["resamples_used"],
                       absent=interval["absent"] and f"interval: {interval['absent']}")
    mean = spread.get(MEAN, {})
    return {**counts, "min_positives": MIN_POSITIVES, "bootstrap_resamples": int(bootstrap),
            **groups.summary(), "rows": rows,
            "mean_auroc": float(np.mean([r["auroc"] for r in rows if r["finding"] in drawn]))
            if parts else math.nan,
            "mean_over": [r["finding"] for r in rows if r["finding"] in drawn],
            "mean_auroc_ci95": mean.get("ci95"), "mean_auroc_resamples_used": mean.get("resamples_used", 0)}


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))  # NaN, or null in JSON


def _number(value: Any, digits: int = 3) -> str:
    return "-" if _missing(value) else f"{value:.{digits}f}"


def _interval(value: Any) -> str:
    return f"[{value[0]:.3f}, {value[1]:.3f}]" if value else "-"


def header() -> list[str]:
    return ["finding", "pos", "neg", "prev.", "AUROC", "95% CI"] + [source.short for source in PUBLISHED]


def display_rows(findings: Mapping[str, Any]) -> list[list[str]]:
    """The table as text cells (header() columns), the mean last; [] when it has no rows."""
    rows = []
    for row in findings.get("rows", ()):
        name = row["finding"]
        ci = f"n<{findings['min_positives']}" if _missing(row["auroc"]) else _interval(row["auroc_ci95"])
        rows.append([name, str(row["positives"]), str(row["negatives"]), _number(row["prevalence"]),
                     _number(row["auroc"]), ci] + [_number(s.auroc[name], s.digits) for s in PUBLISHED])
    if rows:
        mean = [_number(findings["mean_auroc"]), _interval(findings["mean_auroc_ci95"])]
        rows.append([f"mean ({len(findings['mean_over'])} of {len(FINDINGS)})", "", "", ""] + mean
                    + [_number(s.mean) for s in PUBLISHED])  # the means are given to 3 digits
    return rows


def caption(name: str, findings: Mapping[str, Any]) -> str:
    """One line: the entry, the records the table is on, and how its intervals were drawn."""
    if "rows" not in findings:
        return f"{name} per finding: {findings['absent']}."
    return (f"{name} per finding: {findings['records_known']} records ({findings['records_unknown']} with "
            f"unknown findings left out); 95% CI by {statistics.UNIT}")


def notes() -> list[str]:
    """What the columns mean and where the published figures come from."""
    return ([f"n<{MIN_POSITIVES}: fewer than {MIN_POSITIVES} positives or negatives, counts only; mean: over "
             "the findings with an AUROC.",
             f"{', '.join(s.short for s in PUBLISHED)}: published AUROCs on {SCALE_ONLY}:"]
            + [f"  {s.short}: {s.citation}" for s in PUBLISHED])


def format_findings(metrics: Mapping[str, Mapping[str, Any]]) -> str:
    """The per-finding tables of the entries that have one, one block each, then the notes; "" if none."""
    blocks = []
    for name, entry in metrics.items():
        findings = entry.get(KEY)
        if findings is None:
            continue
        rows = [header()] + display_rows(findings)
        if len(rows) == 1:
            blocks.append(caption(name, findings))
            continue
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])])
                 for row in rows]
        blocks.append("\n".join([caption(name, findings), lines[0], "-" * len(lines[0])] + lines[1:]))
    if not any(KEY in entry and "rows" in entry[KEY] for entry in metrics.values()):
        return "\n\n".join(blocks)
    return "\n\n".join(blocks + ["\n".join(notes())])
