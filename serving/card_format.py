"""How MODEL_CARD.md prints numbers, names and tables; NOT_RECORDED for what nobody recorded."""

from __future__ import annotations

import math
from typing import Any, Sequence

NOT_RECORDED = "not recorded"
DIGITS = {"metric": 3, "threshold": 4, "temperature": 3, "weight": 3}  # decimals printed, per kind


def fmt(value: Any, kind: str = "metric") -> str:
    """Every number the card prints: `DIGITS[kind]` decimals, a "count" as an integer, "signed" a
    metric with its sign, a "share" as given; NOT_RECORDED for None or NaN."""
    if value is None or isinstance(value, bool) or (isinstance(value, float) and math.isnan(value)):
        return NOT_RECORDED
    if kind == "count":
        return str(int(value))
    if kind == "signed":
        return f"{value:+.{DIGITS['metric']}f}"
    return f"{value:g}" if kind == "share" else f"{value:.{DIGITS[kind]}f}"


def fmt_interval(entry: dict[str, Any], key: str) -> str:
    if key not in entry:
        return NOT_RECORDED
    ci = entry[key]
    return "not formed" if ci is None else f"[{fmt(ci[0])}, {fmt(ci[1])}]"


def code(text: Any) -> str:
    return NOT_RECORDED if text is None else f"`{text}`"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows] + [""]
