"""Reading NIH ChestX-ray14 metadata: Data_Entry CSVs (both dialects), the bbox CSV and split lists.

Both Data_Entry dialects are read by column name, not position: the 2017 file has CRLF line
endings, a trailing comma in its header, zero-padded patient ids and ages like "058Y"; the v2020
file has plain integers. Rows that cannot become a record are returned as `Skip`s with a reason,
never dropped silently.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import math
import os

from contracts import demographics, labels, storage

REQUIRED_COLUMNS = ("Image Index", "Finding Labels", "Patient ID")
VIEW_COLUMN = "View Position"
SEX_COLUMN = "Patient Gender"
AGE_COLUMN = "Patient Age"
GZIP_MAGIC = b"\x1f\x8b"


@dataclasses.dataclass(frozen=True)
class Entry:
    """One image's metadata, validated."""

    image: str
    label: int
    findings: tuple[int, ...]
    patient_id: str
    view_position: str
    sex: str = ""  # "M", "F" or "" (contracts.demographics)
    age: int | None = None  # whole years


@dataclasses.dataclass(frozen=True)
class Skip:
    """An input item that does not become a record, and why."""

    image: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"image": self.image, "reason": self.reason}


@dataclasses.dataclass
class DataEntry:
    """The result of reading a Data_Entry CSV."""

    entries: dict[str, Entry]
    skipped: list[Skip]
    identical_duplicates: int  # extra identical rows collapsed into one
    rows: int


def open_text(path: str) -> io.TextIOBase:
    """Opens a plain or gzip-compressed CSV as text (universal newlines handle CRLF).

    A bucket URL (`gs://...`) is read whole through `contracts.storage` (NIH's largest CSV is 2 MB
    gzipped); a local file is streamed.
    """
    if storage.is_url(path):
        data = storage.read_bytes(path)
        data = gzip.decompress(data) if data[:2] == GZIP_MAGIC else data
        return io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", newline="")
    with open(path, "rb") as probe:
        gzipped = probe.read(2) == GZIP_MAGIC
    if gzipped:
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def unsafe_name_reason(name: str) -> str | None:
    """Returns why `name` is not a plain file name inside the image folder, or None when it is."""
    if not name:
        return "empty image name"
    if "\x00" in name:
        return "image name contains a NUL byte"
    if name in (".", "..") or "/" in name or "\\" in name or os.path.isabs(name):
        return "image name is not a plain file name (a path could leave --image_dir); skipped"
    if name.startswith("."):
        return "image name starts with '.' (hidden file); skipped"
    return None


def normalise_patient_id(raw: str) -> str:
    """Returns the patient id in one form for both dialects ("00000001" and "1" -> "1")."""
    raw = raw.strip()
    return str(int(raw)) if raw.isdigit() else raw


def parse_finding_labels(raw: str) -> tuple[int, tuple[int, ...]]:
    """Maps a "Finding Labels" cell to (binary label, 14-long multi-hot).

    Raises:
      ValueError: empty cell, unknown finding, or "No Finding" mixed with findings.
    """
    names = [part.strip() for part in raw.split("|")]
    if not raw.strip() or any(not n for n in names):
        raise ValueError(f"empty finding label in {raw!r}")
    if labels.NO_FINDING in names:
        if len(names) > 1:
            raise ValueError(f"'No Finding' combined with findings in {raw!r}")
        return labels.LABEL_NORMAL, tuple([0] * len(labels.FINDINGS))
    return labels.LABEL_ABNORMAL, tuple(labels.findings_multi_hot(names))


def _row_entry(row: dict[str, str]) -> Entry:
    label, findings = parse_finding_labels(row["Finding Labels"] or "")
    patient = normalise_patient_id(row["Patient ID"] or "")
    if not patient:
        raise ValueError("missing Patient ID")
    return Entry(
        image=row["Image Index"].strip(),
        label=label,
        findings=findings,
        patient_id=patient,
        view_position=(row.get(VIEW_COLUMN) or "").strip(),
        sex=demographics.parse_sex(row.get(SEX_COLUMN)),
        age=demographics.parse_age(row.get(AGE_COLUMN)),
    )


def read_data_entry(path: str) -> DataEntry:
    """Reads a Data_Entry CSV of either dialect.

    Identical duplicate rows collapse into one (counted); conflicting duplicates (same image,
    different label, patient or view) are skipped entirely, since neither row can be trusted.

    Raises:
      ValueError: the file lacks a required column (names the columns it has).
    """
    with open_text(path) as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise ValueError(
                f"{path}: missing column(s) {missing}; is this an NIH Data_Entry CSV? "
                f"header has: {header}"
            )
        reader.fieldnames = header
        entries: dict[str, Entry] = {}
        conflicts: dict[str, str] = {}
        skipped: list[Skip] = []
        identical = rows = 0
        for row in reader:
            rows += 1
            name = (row.get("Image Index") or "").strip()
            reason = unsafe_name_reason(name)
            if reason:
                skipped.append(Skip(name, reason))
                continue
            try:
                entry = _row_entry(row)
            except ValueError as err:
                skipped.append(Skip(name, f"{err}; fix the CSV row or remove it"))
                continue
            if name in conflicts:
                continue
            if name in entries:
                if entries[name] == entry:
                    identical += 1
                    continue
                conflicts[name] = "conflicting duplicate rows in the CSV (labels, patient or view differ)"
                del entries[name]
                continue
            entries[name] = entry
    skipped.extend(Skip(name, reason) for name, reason in conflicts.items())
    return DataEntry(entries=entries, skipped=skipped, identical_duplicates=identical, rows=rows)


def read_bbox_csv(path: str) -> tuple[dict[str, list[tuple[float, float, float, float]]], list[Skip]]:
    """Reads BBox_List_2017.csv: image -> list of (x, y, w, h) in the 1024 frame.

    The official header has 9 fields and its rows 6, so rows are read by position.
    Returns the boxes and the rows that could not be read (as `Skip`s, reported as warnings).
    """
    boxes: dict[str, list[tuple[float, float, float, float]]] = {}
    problems: list[Skip] = []
    with open_text(path) as f:
        reader = csv.reader(f)
        next(reader, None)
        for line_no, row in enumerate(reader, start=2):
            if not row or not any(cell.strip() for cell in row):
                continue
            name = row[0].strip()
            try:
                x, y, w, h = (float(v) for v in row[2:6])
            except ValueError:
                problems.append(Skip(name, f"{path} line {line_no}: unreadable box {row[2:6]}; box ignored"))
                continue
            boxes.setdefault(name, []).append((x, y, w, h))
    return boxes, problems


def union_box(boxes: list[tuple[float, float, float, float]]) -> tuple[float, float, float, float]:
    """Returns the union (x, y, w, h) of boxes given as (x, y, w, h).

    Raises:
      ValueError: a box is not finite or has no area.
    """
    for x, y, w, h in boxes:
        if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
            raise ValueError(f"invalid box (x={x}, y={y}, w={w}, h={h})")
    x0 = min(b[0] for b in boxes)
    y0 = min(b[1] for b in boxes)
    x1 = max(b[0] + b[2] for b in boxes)
    y1 = max(b[1] + b[3] for b in boxes)
    return (x0, y0, x1 - x0, y1 - y0)


def read_name_list(path: str) -> list[str]:
    """Reads an NIH split list (one image name a line), ignoring blank lines."""
    with open_text(path) as f:
        return [line.strip() for line in f if line.strip()]


LABEL_ID_COLUMNS = ("image_id", "Image Index", "SOPInstanceUID")  # what a labels CSV may key rows by
LABEL_COLUMN = "label"  # 0 normal, 1 abnormal (or NIH's "Finding Labels" instead)


def read_labels_csv(path: str) -> dict[str, int]:
    """Reads a labels CSV: key -> 0 (normal) or 1 (abnormal).

    The key column is the first of `LABEL_ID_COLUMNS` present: a record's id (a file name, or a
    DICOM file's path under the image folder) or a DICOM SOPInstanceUID. The label is a `label`
    column of 0/1, or NIH's `Finding Labels` ("No Finding" is normal). Plain or gzip.

    Raises:
      ValueError: no key or label column, an unreadable label, or one key with two labels.
    """
    with open_text(path) as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        key = next((c for c in LABEL_ID_COLUMNS if c in header), None)
        value = LABEL_COLUMN if LABEL_COLUMN in header else "Finding Labels" if "Finding Labels" in header else None
        if key is None or value is None:
            raise ValueError(f"{path}: needs a key column ({', '.join(LABEL_ID_COLUMNS)}) and a "
                             f"'{LABEL_COLUMN}' (0/1) or 'Finding Labels' column; header has: {header}")
        found: dict[str, int] = {}
        for line, row in enumerate(reader, start=2):
            raw = (row.get(value) or "").strip()
            try:
                label = parse_finding_labels(raw)[0] if value != LABEL_COLUMN else int(raw)
            except ValueError:
                label = None
            if label not in (labels.LABEL_NORMAL, labels.LABEL_ABNORMAL):
                raise ValueError(f"{path} line {line}: {value}={raw!r} is not a label; use 0/1 or NIH findings")
            name = (row.get(key) or "").strip()
            if found.get(name, label) != label:
                raise ValueError(f"{path}: {name!r} has two different labels; keep one row")
            found[name] = label
    return found
