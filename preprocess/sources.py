"""The images a build will write: CSV rows matched to files, or every image in a folder; skipped (with
a reason), absent (listed, not on disk) and unlisted files counted apart."""

from __future__ import annotations

import collections
import dataclasses
import glob
import hashlib
import itertools
import os
from typing import Mapping

from contracts import labels, storage
from preprocess import chest_gate
from preprocess.image_error import ImageError
from preprocess.nih_metadata import Entry, Skip, read_data_entry, unsafe_name_reason

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
# DICOM is found by its content; a file named like DICOM without it is skipped with the reason.
DICOM_EXTENSIONS = (".dcm", ".dicom", ".dic")
GLOB_CHARACTERS = "*?["


@dataclasses.dataclass(frozen=True)
class Source:
    entry: Entry
    path: str


@dataclasses.dataclass
class Sources:
    sources: list[Source]
    skipped: list[Skip]
    absent: list[str]
    unlisted: int
    present_rows: int  # rows whose file is present (the denominator of the skip fraction)
    csv_rows: int = 0
    identical_duplicates: int = 0
    # Accepted images the frontal-chest gate could not check: {"image", "missing": the tags it lacks}.
    unchecked: list[dict] = dataclasses.field(default_factory=list)


def is_pattern(image_dir: str) -> bool:
    """Whether --image_dir names files, not a folder: a glob pattern ("**" recurses) or one file."""
    if storage.isdir(image_dir):
        return False
    return any(c in image_dir for c in GLOB_CHARACTERS) or storage.isfile(image_dir)


def pattern_root(image_dir: str) -> str:
    """The folder ids are relative to: the folder, a pattern's fixed leading folders, or a file's."""
    if not is_pattern(image_dir):
        return image_dir
    if storage.isfile(image_dir):
        return storage.dirname(image_dir)
    separator = "/" if storage.is_url(image_dir) else os.sep
    parts = image_dir.split(separator)
    fixed = itertools.takewhile(lambda part: not any(c in part for c in GLOB_CHARACTERS), parts)
    return separator.join(fixed) or "."


def _matching_files(pattern: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = collections.defaultdict(list)
    if storage.isfile(pattern):  # one file, whatever characters its name holds
        paths = [pattern]
    elif storage.is_url(pattern):
        paths = storage.glob(pattern)
    else:
        paths = sorted(glob.glob(pattern, recursive=True))
    for path in paths:
        name = path.rstrip("/").rsplit("/", 1)[-1]
        if storage.isfile(path) and not name.startswith("."):
            found[name].append(path)
    return found


def scan_images(image_dir: str) -> dict[str, list[str]]:
    """File name -> paths of every non-hidden file under the folder `image_dir` (recursively, local or
    bucket URL, linked folders followed once) or matching a glob."""
    if is_pattern(image_dir):
        return _matching_files(image_dir)
    url = storage.is_url(image_dir)
    walk = storage.walk(image_dir) if url else os.walk(image_dir, followlinks=True)
    found: dict[str, list[str]] = collections.defaultdict(list)
    visited: set[str] = set()
    for root, dirs, files in walk:
        real = root if url else os.path.realpath(root)
        if real in visited:
            dirs[:] = []
            continue
        visited.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                found[name].append(storage.join(root, name) if url else os.path.join(root, name))
    return found


def resolve_path(name: str, paths: list[str]) -> tuple[str | None, str | None]:
    """Picks the file for `name`: (path, None), or (None, reason) when copies differ."""
    if len(paths) == 1 or len({hashlib.sha256(storage.read_bytes(p)).hexdigest() for p in paths}) == 1:
        return paths[0], None  # byte-identical copies in two folders are one image
    return None, (f"{len(paths)} different files named {name} under --image_dir: {', '.join(paths[:3])}; "
                  "keep one")


def _unchecked(image: str, missing: list[str]) -> list[dict]:
    return [{"image": image, "missing": missing}] if missing else []


def _gate_listed(name: str, path: str, view: str, gate: chest_gate.Gate) -> tuple[str | None, list[str]]:
    """(why the gate refuses a Data_Entry row's file, or None; the tags it could not check): the row's View
    Position and, when the file is DICOM, its own tags too; its view is checked when either gives one. A
    PNG or JPEG by name is not opened here (NIH's 112,120 rows: one read each, on gs:// a request)."""
    tags = None if name.lower().endswith(IMAGE_EXTENSIONS) else _dicom_tags(path, name)
    if isinstance(tags, Skip):
        return tags.reason, []
    refused, missing = chest_gate.check(gate, {**({} if tags is None else chest_gate.tag_values(tags)),
                                               chest_gate.NIH_VIEW: view})
    views = {chest_gate.TAGS[-1], chest_gate.NIH_VIEW}  # the DICOM's ViewPosition, the row's
    if tags is not None and not views <= set(missing):
        missing = [tag for tag in missing if tag not in views]
    return refused, missing


def from_data_entry(csv_path: str, image_dir: str, gate: chest_gate.Gate = chest_gate.DEFAULT) -> Sources:
    """The CSV's rows matched to files under `image_dir`; a row is skipped when the gate refuses its View
    Position or, for a DICOM file, its own tags (the CSV may call a lateral or a CT slice PA)."""
    table = read_data_entry(csv_path)
    files = scan_images(image_dir)
    sources, skipped, absent, unchecked = [], [], [], []
    for skip in table.skipped:
        # A bad row whose image is absent is just absent; a name that is not a plain file name is
        # never looked up, so it always counts as skipped.
        (skipped if skip.image in files or unsafe_name_reason(skip.image) else absent).append(skip)
    present_rows = len(skipped)
    absent = [skip.image for skip in absent]
    for name in sorted(table.entries):
        if name not in files:
            absent.append(name)
            continue
        present_rows += 1
        path, reason = resolve_path(name, files[name])
        entry = table.entries[name]
        refused, missing = (None, []) if reason else _gate_listed(name, path, entry.view_position, gate)
        if reason or refused:
            skipped.append(Skip(name, reason or refused))
        else:
            sources.append(Source(entry, path))
            unchecked += _unchecked(name, missing)
    listed = set(table.entries) | {s.image for s in table.skipped}
    unlisted = sum(1 for name in files if name not in listed)
    return Sources(sources, skipped, sorted(absent), unlisted, present_rows, csv_rows=table.rows,
                   identical_duplicates=table.identical_duplicates, unchecked=unchecked)


def _labelled(known: Mapping[str, labels.Labelled], *keys: str) -> dict:
    """Entry fields of the first of `keys` in `known` (a labels CSV), or unlabeled."""
    found = next((known[k] for k in keys if k in known), labels.UNLABELED)
    if found.findings is None:
        return {"label": found.label}
    return {"label": found.label, "findings": found.findings, "findings_known": True}


def _dicom_tags(path: str, image_id: str):
    """A file's DICOM tags (`dicom.DicomTags`), a Skip when its header does not read, or None when it
    is not DICOM (by its name or content, as the decoder tells)."""
    from preprocess import dicom  # pydicom: loaded once a folder is scanned

    if not image_id.lower().endswith(DICOM_EXTENSIONS):
        try:
            if not dicom.is_dicom(storage.read_bytes(path, dicom.SIGNATURE_BYTES)):
                return None
        except OSError:
            return None
    try:
        with storage.open_binary(path) as f:
            return dicom.read_tags(f)
    except (ImageError, OSError) as err:
        return Skip(image_id, f"{err}; skipped")


def _dicom_entry(path: str, image_id: str, known: Mapping[str, labels.Labelled],
                 gate: chest_gate.Gate) -> tuple[Entry | Skip | None, list[str]]:
    """(an unlabeled entry from a DICOM file's header, why not, or None when it is not DICOM; the tags
    the frontal-chest gate could not check)."""
    tags = _dicom_tags(path, image_id)
    if tags is None or isinstance(tags, Skip):
        return tags, []
    refused, missing = chest_gate.check(gate, chest_gate.tag_values(tags))
    if refused:
        return Skip(image_id, refused), []
    return Entry(image_id, **_labelled(known, image_id, tags.sop_instance_uid or ""),
                 patient_id=tags.patient_id or "", view_position=tags.view_position or "", sex=tags.sex or "",
                 age=tags.age, study_uid=tags.study_instance_uid or ""), missing


def from_folder(image_dir: str, known: Mapping[str, labels.Labelled] | None = None,
                gate: chest_gate.Gate = chest_gate.DEFAULT) -> Sources:
    """Every image under `image_dir` as a record, labelled from `known` (id or SOPInstanceUID -> label)
    or unlabeled. PNG/JPEG by extension, keyed by file name (by path when names clash), unchecked by
    `gate`; DICOM by content, keyed by path, with its header's patient, view, sex and age, skipped
    when `gate` refuses it."""
    files = scan_images(image_dir)
    root = pattern_root(image_dir)
    known = known or {}
    sources, skipped, unchecked = [], [], []
    unlisted = present = 0
    for name in sorted(files):
        plain = []
        for path in files[name]:
            entry, missing = _dicom_entry(path, storage.relpath(path, root), known, gate)
            if isinstance(entry, Skip):
                skipped.append(entry)
            elif entry is not None:
                sources.append(Source(entry, path))
                unchecked += _unchecked(entry.image, missing)
            elif name.lower().endswith(IMAGE_EXTENSIONS):
                plain.append(path)
            else:
                unlisted += 1
            present += entry is not None
        if not plain:
            continue
        path, reason = resolve_path(name, plain)
        keyed = [(name, path)] if reason is None else [(storage.relpath(p, root), p) for p in plain]
        present += len(keyed)
        sources.extend(Source(Entry(image_id, **_labelled(known, image_id)), p)
                       for image_id, p in keyed)
        _, missing = chest_gate.check(gate, dict.fromkeys(chest_gate.TAGS))  # no header to check
        unchecked += [u for image_id, _ in keyed for u in _unchecked(image_id, missing)]
    return Sources(sources, skipped, [], unlisted, present, unchecked=unchecked)
