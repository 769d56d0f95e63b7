"""The one reader of labels CSVs (--labels_csv, --other_labels_csv), plain or gzip: keyed by the first
of `ID_COLUMNS`, labelled by `label`, NIH's `Finding Labels` or the one other column (0/1, YES/NO)."""

from __future__ import annotations

import csv
import gzip
import io
import zlib

from contracts import labels, storage
from contracts.errors import UserInputError

GZIP_MAGIC = b"\x1f\x8b"
ID_COLUMNS = ("image_id", "Image Index", "SOPInstanceUID")
LABEL_COLUMN = "label"
FINDING_LABELS = "Finding Labels"
_VALUES = {"0": labels.LABEL_NORMAL, "1": labels.LABEL_ABNORMAL, "no": labels.LABEL_NORMAL,
           "yes": labels.LABEL_ABNORMAL}


def open_text(path: str) -> io.TextIOBase:
    """A plain or gzip UTF-8 CSV (local or a bucket URL) as text; ValueError naming the file and fix."""
    data = storage.read_bytes(path)
    if data[:2] == GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as err:  # a partial download ends early
            raise ValueError(f"{path}: truncated or corrupt gzip file ({err}); download it again") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start:,}); "
                         "save it as a UTF-8 CSV") from None
    return io.StringIO(text, newline="")


def _value_column(path: str, header: list[str], key: str) -> str:
    if FINDING_LABELS in header:  # it names the findings too; a `label` beside it must agree
        return FINDING_LABELS
    if LABEL_COLUMN in header:
        return LABEL_COLUMN
    others = [h for h in header if h and h != key]
    if len(others) == 1:
        return others[0]
    raise ValueError(f"{path}: needs a key column ({', '.join(ID_COLUMNS)}) and one label column "
                     f"('{LABEL_COLUMN}' of 0/1 or YES/NO, or '{FINDING_LABELS}'); header has: {header}")


def _parse(path: str, line: int, column: str, raw: str) -> labels.Labelled:
    if column == FINDING_LABELS:
        try:
            return labels.Labelled(*labels.parse_finding_labels(raw))
        except ValueError as err:
            raise ValueError(f"{path} line {line}: {FINDING_LABELS}: {err}") from None
    if raw.lower() not in _VALUES:
        raise ValueError(f"{path} line {line}: {column}={raw!r} is not a label; use 0/1, YES/NO")
    return labels.Labelled(_VALUES[raw.lower()])


def read_labels_csv(path: str) -> dict[str, int]:
    """A labels CSV as key -> 0 (normal) or 1 (abnormal) (`read_labelled`'s labels)."""
    return {key: found.label for key, found in read_labelled(path).items()}


def read_labelled(path: str) -> dict[str, labels.Labelled]:
    """Reads a labels CSV: key -> its label, with the findings of a `Finding Labels` column; ValueError
    naming the line and the fix for a missing column, a value that is no label (a finding outside the
    14), an empty or a repeated key."""
    with open_text(path) as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        key = next((c for c in ID_COLUMNS if c in header), None)
        if key is None:
            raise ValueError(f"{path}: needs a key column ({', '.join(ID_COLUMNS)}); header has: {header}")
        column = _value_column(path, header, key)
        found: dict[str, labels.Labelled] = {}
        for line, row in enumerate(reader, start=2):
            label = _parse(path, line, column, (row.get(column) or "").strip())
            if column == FINDING_LABELS and LABEL_COLUMN in header:
                beside = _parse(path, line, LABEL_COLUMN, (row.get(LABEL_COLUMN) or "").strip())
                if beside.label != label.label:
                    raise ValueError(f"{path} line {line}: {LABEL_COLUMN}={beside.label} but "
                                     f"{FINDING_LABELS} says {label.label}; correct one of the two columns")
            name = (row.get(key) or "").strip()
            if not name:
                raise ValueError(f"{path} line {line}: empty {key}; every row needs an image id")
            if name in found:
                raise ValueError(f"{path} line {line}: {key} {name!r} is listed twice; keep one row per "
                                 "image")
            found[name] = label
    return found


def load_labels(path: str, flag: str) -> dict[str, labels.Labelled]:
    """`read_labelled` of --`flag`; UserInputError naming the file (or its line) and the fix."""
    if not storage.isfile(path):
        raise UserInputError(f"--{flag}={path} does not exist")
    try:
        return read_labelled(path)
    except ValueError as err:
        raise UserInputError(f"--{flag}: {err}") from None
