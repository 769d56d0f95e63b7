"""Patient sex and age as records carry them, and one tolerant reader of each (NIH's `58`/`058Y`,
DICOM's Age Strings `062Y`/`018M`/`003W`/`010D`). Anything unreadable is unknown, never a guess."""

from __future__ import annotations

import re

SEXES = ("M", "F")  # anything else (DICOM's "O", blanks, typos) is unknown: ""
AGE_UNKNOWN = -1  # how a record stores an unknown age
MAX_AGE_YEARS = 150

_AGE = re.compile(r"(\d+)\s*([DWMY]?)")
_DAYS_PER_UNIT = {"D": 1, "W": 7}


def parse_age(value) -> int | None:
    """Whole years ("062M" -> 5) from an Age String, a bare number or an int; None when empty,
    unreadable, negative or over MAX_AGE_YEARS."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        if value != value or not float(value).is_integer():  # NaN or a fraction
            return None
        years = int(value)
    else:
        match = _AGE.fullmatch(str(value).strip().upper())
        if match is None:
            return None
        count, unit = int(match.group(1)), match.group(2)
        if unit in _DAYS_PER_UNIT:
            years = count * _DAYS_PER_UNIT[unit] // 365
        else:
            years = count // 12 if unit == "M" else count
    return years if 0 <= years <= MAX_AGE_YEARS else None


def parse_sex(value) -> str:
    """Returns "M" or "F", or "" (unknown) for anything else ("O", blank, None)."""
    text = str(value or "").strip().upper()
    return text if text in SEXES else ""
