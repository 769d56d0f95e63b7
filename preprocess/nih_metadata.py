"""Reading NIH ChestX-ray14 metadata: Data_Entry CSVs (2017 and v2020, by column name), the bbox
CSV and split lists. Rows that cannot become a record are `Skip`s with a reason, never dropped."""

from __future__ import annotations

import csv
import dataclasses
import os

from contracts.boxes import FindingBox, finding_of_bbox_label, frame_region
from contracts.demographics import parse_age, parse_sex
from contracts.labels import FINDINGS, parse_finding_labels
from contracts.labels_csv import open_text

REQUIRED_COLUMNS = ("Image Index", "Finding Labels", "Patient ID")


@dataclasses.dataclass(frozen=True)
class Entry:
    image: str
    label: int
    findings: tuple[int, ...] = (0,) * len(FINDINGS)
    patient_id: str = ""
    view_position: str = ""
    sex: str = ""  # "M", "F" or "" (contracts.demographics)
    age: int | None = None  # whole years
    findings_known: bool = False  # the source named them (NIH's Finding Labels); else zeros mean unknown
    study_uid: str = ""  # a DICOM file's StudyInstanceUID; contracts.study_ids decides the record's study


@dataclasses.dataclass(frozen=True)
class Skip:
    """An input item that does not become a record, and why."""
    image: str
    reason: str


@dataclasses.dataclass
class DataEntry:
    entries: dict[str, Entry]
    skipped: list[Skip]
    identical_duplicates: int  # extra identical rows collapsed into one
    rows: int


def unsafe_name_reason(name: str) -> str | None:
    """Why `name` is not a plain file name inside the image folder; None when it is."""
    if not name:
        return "empty image name"
    if "\x00" in name:
        return "image name contains a NUL byte"
    if name in (".", "..") or "/" in name or "\\" in name or os.path.isabs(name):
        return "image name is not a plain file name (a path could leave --image_dir); skipped"
    if name.startswith("."):
        return "image name starts with '.' (hidden file); skipped"
    return None


def _row_entry(row: dict[str, str]) -> Entry:
    label, findings = parse_finding_labels(row["Finding Labels"] or "")
    patient = (row["Patient ID"] or "").strip()
    if not patient:
        raise ValueError("missing Patient ID")
    return Entry(image=row["Image Index"].strip(), label=label, findings=findings, findings_known=True,
                 patient_id=str(int(patient)) if patient.isdigit() else patient,  # "00000001" is "1"
                 view_position=(row.get("View Position") or "").strip(),
                 sex=parse_sex(row.get("Patient Gender")), age=parse_age(row.get("Patient Age")))


def read_data_entry(path: str) -> DataEntry:
    """Reads a Data_Entry CSV (ValueError without a required column); identical duplicate rows
    collapse into one (counted), conflicting ones are all skipped."""
    with open_text(path) as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; is this an NIH Data_Entry CSV? "
                             f"header has: {header}")
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
            if name in entries and entries[name] != entry:
                conflicts[name] = "conflicting duplicate rows in the CSV (labels, patient or view differ)"
                del entries[name]
            elif name in entries:
                identical += 1
            elif name not in conflicts:
                entries[name] = entry
    skipped.extend(Skip(name, reason) for name, reason in conflicts.items())
    return DataEntry(entries=entries, skipped=skipped, identical_duplicates=identical, rows=rows)


BBOX_COLUMNS = ("Image Index", "Finding Label")  # the first two of BBox_List_2017.csv's header


def read_bbox_csv(path: str) -> tuple[dict[str, list[FindingBox]], list[Skip]]:
    """Reads BBox_List_2017.csv by position (its header has 9 fields, its rows 6): image -> its
    `FindingBox`es, and unreadable rows as `Skip`s; ValueError when the header is not BBox_List's."""
    boxes: dict[str, list[FindingBox]] = {}
    problems: list[Skip] = []
    with open_text(path) as f:
        reader = csv.reader(f)
        header = [cell.strip() for cell in next(reader, [])]
        if header[:2] != list(BBOX_COLUMNS):
            raise ValueError(f"{path}: not NIH's BBox_List CSV (its header starts {header[:3]}, not "
                             f"{list(BBOX_COLUMNS)} then the box); pass BBox_List_2017.csv as --bbox_csv")
        for line_no, row in enumerate(reader, start=2):
            if not row or not any(cell.strip() for cell in row):
                continue
            name = row[0].strip()
            try:
                x, y, w, h = (float(v) for v in row[2:6])
            except ValueError:
                problems.append(Skip(name, f"{path} line {line_no}: unreadable box {row[2:6]}; box ignored"))
                continue
            try:
                finding = finding_of_bbox_label(row[1] if len(row) > 1 else "")
            except ValueError as err:
                problems.append(Skip(name, f"{path} line {line_no}: {err}; box ignored"))
                continue
            boxes.setdefault(name, []).append(FindingBox(finding, x, y, w, h))
    return boxes, problems


def union_box(boxes: list[tuple[float, float, float, float]]) -> tuple[float, float, float, float]:
    """The union (x, y, w, h) of (x, y, w, h) boxes; ValueError when one is not finite or has no area."""
    for box in boxes:
        frame_region(box)
    x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    x1, y1 = max(b[0] + b[2] for b in boxes), max(b[1] + b[3] for b in boxes)
    return (x0, y0, x1 - x0, y1 - y0)


def read_name_list(path: str) -> list[str]:
    """An NIH split list's image names (one a line)."""
    with open_text(path) as f:
        return [line.strip() for line in f if line.strip()]
