"""MODEL_CARD.md's Triage section: the served three-way triage's thresholds and what bounds them, from
export.json's record (evaluation.triage.to_record), or the one line saying why there is none."""

from __future__ import annotations

from typing import Any

from contracts.export_folder import TRIAGE_INFO
from evaluation.triage import EXCHANGEABLE
from serving.card_format import fmt, table


def _row(group: str, entry: dict[str, Any], rate: str, images: str, delta: float) -> list[str]:
    if entry.get("threshold") is None:
        return [group, "none", f"{rate} <= {fmt(entry.get('target'), 'share')}", "infeasible: short by "
                f"{fmt(entry.get('shortfall'), 'count')} {images} images", "none"]
    return [group, fmt(entry["threshold"], "threshold"),
            f"{rate} <= {fmt(entry.get('target'), 'share')}, except with probability δ = "
            f"{fmt(delta, 'share')}",
            f"{fmt(entry.get('empirical'))} of {fmt(entry.get('used'), 'count')} {images}",
            fmt(entry.get("bound"))]


def section(info: dict[str, Any]) -> list[str]:
    record = info.get(TRIAGE_INFO)
    if not isinstance(record, dict):
        return []
    if "why" in record:
        return ["## Triage", "", f"{record['why']}.", ""]
    calibration, delta = record.get("calibration") or {}, record.get("delta")
    how = ("exact: images of their own, scored by nothing else" if calibration.get("exact") else
           f"approximate: {calibration.get('note')}")
    spread = record.get("spread_limit")
    spread = "" if spread is None else f" and whenever the members' spread exceeds {fmt(spread, 'threshold')}"
    return ["## Triage", "",
            "Served as `triage`: cleared below the rule-out threshold, prioritized at or above the rule-in "
            f"one, review otherwise{spread}, and for an image too small or flat to be a film.", "",
            *table(["group", "threshold", "guarantee", "on calibration", "upper bound"], [
                _row("cleared", record.get("rule_out") or {}, "miss rate", "abnormal", delta),
                _row("prioritized", record.get("rule_in") or {}, "false-alarm rate", "normal", delta)]),
            f"Calibrated on {fmt(calibration.get('images'), 'count')} images ({how}). {EXCHANGEABLE}", ""]
