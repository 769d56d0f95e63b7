"""The report's triage section: per entry with a triage, its groups on the scored split, the miss and
false-alarm rates with patient intervals beside the targets, and the risk–coverage curve with its area."""

from __future__ import annotations

import math
import textwrap
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from scipy import stats

from contracts.output_names import CLEARED, PRIORITIZED, TRIAGE_GROUPS
from evaluation import statistics, triage
from evaluation.statistics import Scores

KEY = "triage"  # the section's key in a metrics.json entry
FIGURE_FILE = "risk_coverage.png"
WIDTH = 100  # the printed notes wrap to a terminal
CURVE_POINTS = 20  # metrics.json keeps the curve at k = ceil(j N / 20); the figure draws every k


def confidence(probs: np.ndarray, threshold: float) -> np.ndarray:
    """How far each probability sits from the decision threshold, scaled by the room on its side:
    (p − t) / (1 − t) at or above t, (t − p) / t below; 0 where that side has no room."""
    p = np.asarray(probs, dtype=np.float64)
    above = p >= threshold
    distance = np.where(above, p - threshold, threshold - p)
    room = np.where(above, 1.0 - threshold, threshold)
    return np.divide(distance, room, out=np.zeros_like(p), where=room > 0)


def risk_coverage(labels: np.ndarray, probs: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(coverage k / N, risk) for k = 1..N: the error rate of the decisions (p >= threshold) of the k
    most confident images. Images of equal confidence enter as one block: within it each kept image
    carries the block's error rate (the mean over every order of the block), so no input order shows."""
    labels, probs = np.asarray(labels), np.asarray(probs, dtype=np.float64)
    wrong = ((probs >= threshold).astype(int) != labels).astype(np.float64)
    sure = confidence(probs, threshold)
    order = np.argsort(-sure, kind="stable")
    ranked, wrong = sure[order], wrong[order]
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]]) if len(ranked) else np.zeros(0, int)
    sizes = np.diff(np.r_[starts, len(ranked)])
    block_errors = np.add.reduceat(wrong, starts) if len(starts) else np.zeros(0)
    before = np.r_[0.0, np.cumsum(block_errors)][:-1]  # errors of the blocks kept before each block
    block = np.repeat(np.arange(len(starts)), sizes)
    kept = np.arange(1, len(ranked) + 1)
    errors = before[block] + (kept - starts[block]) * (block_errors / np.maximum(sizes, 1))[block]
    return kept / max(len(ranked), 1), errors / kept


def _thinned(coverage: np.ndarray, risk: np.ndarray) -> dict[str, list[float]]:
    n = len(coverage)
    at = sorted({math.ceil(j * n / CURVE_POINTS) - 1 for j in range(1, CURVE_POINTS + 1)}) if n else []
    return {"coverage": [float(coverage[i]) for i in at], "risk": [float(risk[i]) for i in at]}


def _known(entry: Scores) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    labels = np.asarray(entry.labels)
    known = labels >= 0
    sorted_into = triage.groups(entry.probs, entry.triage, entry.spread)[known]
    patients = None if entry.patients is None else np.asarray(entry.patients)[known]
    return labels[known], np.asarray(entry.probs, dtype=np.float64)[known], sorted_into, patients


def exact_interval(errors: int, count: int) -> list[float]:
    """The two-sided 95% Clopper–Pearson interval of errors / count, by image: where every patient
    resample gives the same rate (none or all in error) the bootstrap's [x, x] would claim certainty."""
    low = 0.0 if errors == 0 else float(stats.beta.ppf(0.025, errors, count - errors + 1))
    high = 1.0 if errors == count else float(stats.beta.ppf(0.975, errors + 1, count - errors))
    return [low, high]


def _share(flags: np.ndarray) -> float:
    return float(flags.mean()) if len(flags) else math.nan


def section_of(entry: Scores, bootstrap: int) -> dict[str, Any]:
    """{KEY: the entry's triage numbers on its known labels} (see docs/report.md), {} without a triage."""
    if entry.triage is None:
        return {}
    y, p, sorted_into, patients = _known(entry)
    cleared, prioritized = sorted_into == CLEARED, sorted_into == PRIORITIZED
    abnormal, normal = y == 1, y == 0
    drawn = statistics.intervals(statistics.clusters(patients, len(y)), {
        "miss_rate": statistics.rate(cleared, abnormal),
        "false_alarm_rate": statistics.rate(prioritized, normal)}, bootstrap)
    for name, errors, count in (("miss_rate", cleared & abnormal, abnormal), ("false_alarm_rate",
                                                                              prioritized & normal, normal)):
        if drawn[name]["absent"] == "it is the same in every resample" and bootstrap > 0:
            drawn[name]["ci95"] = exact_interval(int(errors.sum()), int(count.sum()))  # 0 of n: not [0, 0]
    coverage, risk = risk_coverage(y, p, entry.threshold)
    record = triage.to_record(entry.triage)
    result = {
        "images": len(y), "abnormal": int(abnormal.sum()), "normal": int(normal.sum()),
        "groups": {name: {"images": int((sorted_into == name).sum()), "share": _share(sorted_into == name)}
                   for name in TRIAGE_GROUPS},
        "miss_rate": _share(cleared[abnormal]), "false_alarm_rate": _share(prioritized[normal]),
        **{f"{name}_{part}": value[field] for name, value in drawn.items()
           for part, field in (("ci95", "ci95"), ("resamples_used", "resamples_used"))},
        "abnormal_among_cleared": _share(abnormal[cleared]),
        "normal_among_prioritized": _share(normal[prioritized]),
        **{k: record[k] for k in ("alpha", "beta", "delta", "rule_out", "rule_in", "spread_limit",
                                  "calibration")},
        "guarantee": "exact" if entry.triage.calibration.get("exact") else "approximate",
        "bootstrap_resamples": int(bootstrap), "decision_threshold": float(entry.threshold),
        "aurc": float(risk.mean()) if len(risk) else math.nan, "risk_coverage": _thinned(coverage, risk)}
    return {KEY: result}


def figure(scores: Sequence[Scores], bootstrap: int) -> Figure | None:
    """The risk–coverage curve of each entry with a triage, one line each; None when none has one."""
    drawn = [entry for entry in scores if entry.triage is not None]
    if not drawn:
        return None
    figure = Figure(figsize=(6, 6))  # no pyplot: no global backend, no display needed
    axes = figure.add_subplot()
    for entry in drawn:
        y, p, _, _ = _known(entry)
        coverage, risk = risk_coverage(y, p, entry.threshold)
        axes.plot(coverage, risk, label=f"{entry.name} (AURC {risk.mean():.3f})")
    axes.set(xlim=(0, 1), ylim=(0, None), xlabel="coverage (share kept, most confident first)",
             ylabel="risk (error rate of the kept decisions)", title="Risk-coverage")
    axes.legend(loc="upper left", fontsize="small")
    return figure


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _number(value: Any, digits: int = 3) -> str:
    return "-" if _missing(value) else f"{value:.{digits}f}"


def rate_text(section: Mapping[str, Any], name: str) -> str:
    interval = section[f"{name}_ci95"]
    return _number(section[name]) + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")


def _threshold(threshold: Mapping[str, Any]) -> str:
    if threshold["threshold"] is None:
        return f"none: short by {threshold['shortfall']}"
    return f"{threshold['threshold']:.4f} (bound {threshold['bound']:.3f})"


def _group(section: Mapping[str, Any], name: str) -> str:
    group = section["groups"][name]
    share = "-" if _missing(group["share"]) else f"{100 * group['share']:.1f}%"
    return f"{group['images']} ({share})"


def _calibration(section: Mapping[str, Any]) -> str:
    images = section["calibration"]
    return f"{images['images']} ({images['abnormal']} abnormal, {images['normal']} normal)"


ROWS = (
    *((name, lambda s, name=name: _group(s, name)) for name in TRIAGE_GROUPS),
    ("miss rate (abnormal cleared)", lambda s: rate_text(s, "miss_rate")),
    ("  target α", lambda s: f"{s['alpha']:g}"),
    ("false-alarm rate (normal prioritized)", lambda s: rate_text(s, "false_alarm_rate")),
    ("  target β", lambda s: f"{s['beta']:g}"),
    ("rule-out threshold (cleared: p <)", lambda s: _threshold(s["rule_out"])),
    ("rule-in threshold (prioritized: p >=)", lambda s: _threshold(s["rule_in"])),
    ("abnormal among cleared", lambda s: _number(s["abnormal_among_cleared"])),
    ("normal among prioritized", lambda s: _number(s["normal_among_prioritized"])),
    ("spread limit (above it: review)", lambda s: _number(s["spread_limit"], 4)),
    ("calibration images", _calibration),
    ("guarantee (δ)", lambda s: f"{s['guarantee']} ({s['delta']:g})"),
    ("AURC", lambda s: _number(s["aurc"])),
    ("  risk at full coverage", lambda s: _number(s["risk_coverage"]["risk"][-1] if s["images"] else None)),
)


def header(metrics: Mapping[str, Mapping[str, Any]]) -> list[str]:
    return ["triage"] + [name for name, entry in metrics.items() if KEY in entry]


def display_rows(metrics: Mapping[str, Mapping[str, Any]]) -> list[list[str]]:
    """One row per ROWS entry, one column per entry with a triage; [] when none has one."""
    sections = [entry[KEY] for entry in metrics.values() if KEY in entry]
    return [[label] + [show(s) for s in sections] for label, show in ROWS] if sections else []


def notes(metrics: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """What the numbers rest on, and why a guarantee is approximate (without the plain sentence,
    `triage.EXCHANGEABLE`, which follows them)."""
    sections = {name: entry[KEY] for name, entry in metrics.items() if KEY in entry}
    if not sections:
        return []
    lines = ["On the images with known labels. Miss rate: abnormal cleared / abnormal; false-alarm rate: "
             f"normal prioritized / normal (95% CI by {statistics.UNIT}); the shares among a group are for "
             "information (they move with prevalence)."]
    why: dict[str, list[str]] = {}  # one line per reason, naming the entries it holds for
    for name, s in sections.items():
        if s["guarantee"] != "exact":
            why.setdefault(str(s["calibration"].get("note")), []).append(name)
    return lines + [f"{', '.join(names)}: {note}." for note, names in why.items()]


def format_triage(metrics: Mapping[str, Mapping[str, Any]]) -> str:
    """The triage table of the entries that have one, then its notes; "" when none has one."""
    rows = display_rows(metrics)
    if not rows:
        return ""
    rows = [header(metrics)] + rows
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])])
             for row in rows]
    text = [textwrap.fill(line, WIDTH) for line in notes(metrics) + [triage.EXCHANGEABLE]]
    return "\n".join([lines[0], "-" * len(lines[0])] + lines[1:] + text)
