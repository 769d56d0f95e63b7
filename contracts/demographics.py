"""Patient sex and age as records carry them, and the one tolerant reader of each.

NIH's CSVs write ages as `58` (v2020) or `058Y` (2017); DICOM's PatientAge is an Age String
(`062Y`, `018M`, `003W`, `010D`), though real files also hold a bare `62`. Sex is NIH's
"Patient Gender" or DICOM's PatientSex. Anything unreadable is unknown, never a guess.
"""

from __future__ import annotations

import re

SEXES = ("M", "F")  # anything else (DICOM's "O", blanks, typos) is unknown: ""
AGE_UNKNOWN = -1  # how a record stores an unknown age
MAX_AGE_YEARS = 150

_AGE = re.compile(r"(\d+)\s*([DWMY]?)")
_DAYS_PER_UNIT = {"D": 1, "W": 7}


def parse_age(value) -> int | None:
    """Reads an age in whole years from an Age String ("062Y"), a bare number or an int.

    Months, weeks and days are floored to years ("062M" -> 5, "020D" -> 0).

    Returns:
      The age, or None when `value` is empty, unreadable, negative or over MAX_AGE_YEARS.
    """
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
