"""The Python API: an export, or run folders with an ensemble file, loaded once and scoring files, bytes or
pixels in-process into predict.py's columns; PNG/JPEG decoded by the served graph, DICOM by the builder."""

from __future__ import annotations

import dataclasses
import io
import json
import os
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import tensorflow as tf
from PIL import Image

from contracts import storage
from contracts.decode_rules import MAX_IMAGE_PIXELS, MIN_IMAGE_SIDE, MIN_IMAGE_STD
from contracts.demographics import AGE_UNKNOWN
from contracts.errors import UserInputError
from contracts.export_folder import (
    EXPORT_INFO,
    EXPORT_SCHEMA_VERSION,
    INPUT_BYTES,
    INPUT_PIXELS,
    OUTPUT_DECISION,
    OUTPUT_FINDINGS,
    OUTPUT_IMPLAUSIBLE,
    OUTPUT_LOGIT,
    OUTPUT_MEMBERS,
    OUTPUT_MEMBERS_PROB,
    OUTPUT_PROB,
    OUTPUT_SPREAD,
    OUTPUT_TRIAGE,
    OUTPUT_UNCALIBRATED,
    PIXELS,
    READABLE_SCHEMAS,
    SERVING_DEFAULT,
    VALIDATION_INFO,
)
from contracts.labels import FINDINGS
from contracts.output_names import ID, finding_prob
from contracts.prediction_files import AGE, META_COLUMNS
from preprocess import chest_gate, dicom, sources
from preprocess import images as builder
from preprocess.image_error import ImageError
from serving import exporter

BATCH_SIZE = 32  # images per call of the graph: a folder of 10,000 files is never one tensor
_TRACE_LINES = ("Graph execution error", "Detected at node", "<stack traces", "[[")
SKIPPED = "skipped"  # table.attrs[SKIPPED]: [{"image", "reason"}], as predict.py's sidecar lists them


def member_column(name: str) -> str:
    """An ensemble member's softmax output, the `p_uncalibrated` of predict.py's `<output>.<name>.csv`."""
    return f"{OUTPUT_UNCALIBRATED}.{name}"


def member_prob_column(name: str) -> str:
    """An ensemble member's probability after its temperature in the ensemble file: what the blend mixes."""
    return f"{OUTPUT_PROB}.{name}"


@dataclasses.dataclass(frozen=True)
class _Item:
    image_id: str
    path: str | None = None  # read when its batch is scored
    data: bytes | None = None
    meta: tuple[str, str, str, int] | None = None  # patient, view, sex, age; None: from a DICOM header


def _reason(err: Exception) -> str:
    if isinstance(err, tf.errors.OpError):  # the graph's own words, without its node trace
        lines = [line.strip() for line in err.message.splitlines()]
        said = [line for line in lines if line and not line.startswith(_TRACE_LINES)] or [type(err).__name__]
        message = said[-1].removeprefix("assertion failed: [").removesuffix("]").replace("\\'", "'")
        return f"{message}; skipped"
    return f"{err}; skipped"


def _meta(item: _Item, data: bytes) -> tuple[str, str, str, int]:
    if item.meta is not None:
        return item.meta
    if not dicom.is_dicom(data):
        return "", "", "", AGE_UNKNOWN  # what predict.py writes for a PNG or JPEG
    tags = dicom.read_tags(data)
    return (tags.patient_id or "", tags.view_position or "", tags.sex or "",
            AGE_UNKNOWN if tags.age is None else tags.age)


def _folder_items(images: str) -> tuple[list[_Item], list[dict[str, str]], int]:
    """(items sorted by id, skipped, ignored count) of a folder or glob, as predict.py --images finds them."""
    if not os.path.isdir(images) and not sources.is_pattern(images):
        raise UserInputError(f"{images}: neither a folder, a file nor a glob; pass a folder (searched "
                             "recursively), a glob such as 'scans/*.dcm', one path or a list of paths")
    found = sources.from_folder(images)
    items = [_Item(s.entry.image, path=s.path, meta=(s.entry.patient_id, s.entry.view_position, s.entry.sex,
                                                     AGE_UNKNOWN if s.entry.age is None else s.entry.age))
             for s in found.sources]
    skipped = [{"image": s.image, "reason": s.reason} for s in found.skipped]
    return sorted(items, key=lambda item: item.image_id), skipped, found.unlisted


class Classifier:
    """A served model in-process: `load` an export.py folder or build one `from_runs`, then score.

    Every `score_*` returns a DataFrame indexed by `image_id` with `p_abnormal`, `p_uncalibrated` (one
    model) or `p_uncalibrated.<member>` and `p_abnormal.<member>` (an ensemble), `decision`, `logit`,
    `p_spread` (several members or views), `triage`, one `p_<finding>` per NIH finding when the export
    serves `p_findings`, `patient_id`, `view_position`, `patient_sex`, `patient_age`; unreadable images
    are left out and listed in `table.attrs["skipped"]`. `validation` is export.json's record of whether
    the served graph is the validated one (`["validated"]`, `["why"]`; None for an export before it).
    """

    def __init__(self, signatures: Mapping[str, Callable], image_size: int, max_pixels: int,
                 members: Sequence[str], threshold: float, keep: Any = None,
                 validation: dict[str, Any] | None = None):
        self._signatures = signatures
        self._keep = keep  # what owns the signatures' variables
        self.image_size, self.max_pixels, self.threshold = image_size, max_pixels, threshold
        self.members, self.validation = list(members), validation

    @classmethod
    def load(cls, export_dir: str) -> Classifier:
        """Loads an export.py folder (its SavedModel and export.json) once."""
        path = os.path.join(export_dir, EXPORT_INFO)
        if not os.path.isfile(path):
            raise UserInputError(f"{export_dir}: no {EXPORT_INFO}, not a folder export.py wrote; export "
                                 "the runs with export.py, or use Classifier.from_runs")
        with open(path) as f:
            info = json.load(f)
        if info.get("schema_version") not in READABLE_SCHEMAS:
            raise UserInputError(f"{path}: schema {info.get('schema_version')}, not {EXPORT_SCHEMA_VERSION} "
                                 "(other output names); export the runs again with this export.py")
        loaded = tf.saved_model.load(export_dir)
        max_pixels = int(info.get("max_image_pixels", MAX_IMAGE_PIXELS))
        names = [m["name"] for m in info["members"]]
        return cls(loaded.signatures, int(info["image_size"]), max_pixels, names, float(info["threshold"]),
                   keep=loaded, validation=info.get(VALIDATION_INFO))

    @classmethod
    def from_runs(cls, model_dirs: str | Sequence[str], ensemble: str | None = None,
                  threshold: float | None = None, tta: int | None = None) -> Classifier:
        """Builds in memory the module export.py would save of train.py's run folder(s): several need
        `ensemble` (ensemble.py's .probabilities.json, its views and triage); one takes `threshold`
        (default as export.py's), `tta` views (default 1) and the triage fitted on its validation."""
        model_dirs = [model_dirs] if isinstance(model_dirs, (str, os.PathLike)) else list(model_dirs)
        served = exporter.plan([str(d) for d in model_dirs], ensemble, threshold, tta)
        module, _, _, _ = exporter.build_module(served)
        signatures = {SERVING_DEFAULT: module.serve_bytes.get_concrete_function(),
                      PIXELS: module.serve_pixels.get_concrete_function()}
        return cls(signatures, module.image_size, module.max_pixels, [m.name for m in served.members],
                   served.threshold, keep=module, validation=served.validation)

    def score_files(self, images: str | os.PathLike | Sequence[str | os.PathLike],
                    batch_size: int = BATCH_SIZE) -> pd.DataFrame:
        """Scores a folder (recursive) or a glob, with predict.py --images' ids, or a list of paths, each
        keyed by its file name (two with one name: UserInputError)."""
        if isinstance(images, (str, os.PathLike)):
            return self._score(str(images), *_folder_items(str(images)), batch_size)
        paths = [str(p) for p in images]
        by_name: dict[str, str] = {}
        for path in paths:
            name = os.path.basename(path)
            if name in by_name:
                raise UserInputError(f"{by_name[name]} and {path} share the file name {name}, the image id; "
                                     "score them in separate calls or rename one")
            by_name[name] = path
        items = [_Item(name, path=path) for name, path in by_name.items()]
        return self._score("the paths given", items, [], 0, batch_size)

    def score_bytes(self, images: Mapping[str, bytes], batch_size: int = BATCH_SIZE) -> pd.DataFrame:
        """Scores encoded files (PNG, JPEG or DICOM, by content) keyed by their image ids."""
        items = [_Item(str(image_id), data=bytes(data)) for image_id, data in images.items()]
        return self._score("the bytes given", items, [], 0, batch_size)

    def score_pixels(self, pixels: np.ndarray, ids: Sequence[str] | None = None,
                     batch_size: int = BATCH_SIZE) -> pd.DataFrame:
        """Scores stored pixels: uint8 (N, S, S) gray, or float32 (N, S, S, 3) in 0..255, at the
        model's size S (not resized); `ids` default to "0", "1", ..."""
        array = np.asarray(pixels)
        size = self.image_size
        if array.ndim == 3 and array.dtype == np.uint8:
            array = np.repeat(array[..., None], 3, axis=-1)  # as the input pipeline feeds a stored image
        if array.ndim != 4 or array.shape[1:] != (size, size, 3):
            raise UserInputError(f"pixels of shape {array.shape} ({array.dtype}): expected uint8 (N, {size}, "
                                 f"{size}) or float32 (N, {size}, {size}, 3) in 0..255; score_files resizes")
        ids = [str(i) for i in range(len(array))] if ids is None else [str(i) for i in ids]
        if len(ids) != len(array) or len(set(ids)) != len(ids):
            raise UserInputError(f"ids: {len(ids)} given ({len(set(ids))} distinct) for {len(array)} images; "
                                 "give one distinct id per image")
        rows: dict[str, dict[str, np.ndarray]] = {}
        for start in range(0, len(array), batch_size):
            chunk = array[start:start + batch_size].astype(np.float32)
            self._run(PIXELS, INPUT_PIXELS, ids[start:start + batch_size], chunk, rows, [])
        unknown = ("", "", "", AGE_UNKNOWN)
        return self._table(ids, rows, {i: unknown for i in ids}, [])

    def _run(self, signature: str, key: str, ids: list[str], values, rows: dict, skipped: list) -> None:
        """Scores one batch into `rows`; a batch the graph refuses is retried one image at a time."""
        try:
            outputs = self._signatures[signature](**{key: tf.constant(values)})
        except tf.errors.InvalidArgumentError as err:
            if len(ids) == 1:
                skipped.append({"image": ids[0], "reason": _reason(err)})
                return
            for k, image_id in enumerate(ids):
                self._run(signature, key, [image_id], values[k:k + 1], rows, skipped)
            return
        arrays = {name: value.numpy() for name, value in outputs.items()}
        for k, image_id in enumerate(ids):
            rows[image_id] = {name: value[k] for name, value in arrays.items()}

    def _host_decoded(self, data: bytes) -> np.ndarray:
        """A DICOM file as the builder stores it (its own code, the model's size and pixel limit, no crop);
        ImageError for what the builder's default gate refuses (not a frontal chest film, or implausible)."""
        refused, _ = chest_gate.check(chest_gate.DEFAULT, chest_gate.tag_values(dicom.read_tags(data)))
        if refused:
            raise ImageError(refused.removesuffix("; skipped"))
        stored = builder.process(data, box=None, image_size=self.image_size, image_format="png",
                                 max_pixels=self.max_pixels)
        implausible = chest_gate.implausible(stored.source_size, stored.std, MIN_IMAGE_SIDE, MIN_IMAGE_STD)
        if implausible:
            raise ImageError(implausible)
        return np.asarray(Image.open(io.BytesIO(stored.encoded)), dtype=np.float32)

    def _score_batch(self, batch: Iterable[_Item], rows: dict, meta: dict, skipped: list) -> None:
        encoded: list[tuple[str, bytes]] = []
        decoded: list[tuple[str, np.ndarray]] = []
        for item in batch:
            try:
                data = item.data if item.data is not None else storage.read_bytes(item.path)
                meta[item.image_id] = _meta(item, data)
                if dicom.is_dicom(data):
                    decoded.append((item.image_id, self._host_decoded(data)))
                else:
                    encoded.append((item.image_id, data))
            except (ImageError, OSError) as err:
                skipped.append({"image": item.image_id, "reason": _reason(err)})
        if encoded:
            self._run(SERVING_DEFAULT, INPUT_BYTES, [i for i, _ in encoded], [d for _, d in encoded], rows,
                      skipped)
        if decoded:
            gray = np.stack([p for _, p in decoded])
            self._run(PIXELS, INPUT_PIXELS, [i for i, _ in decoded], np.repeat(gray[..., None], 3, axis=-1),
                      rows, skipped)

    def _score(self, what: str, items: list[_Item], skipped: list[dict[str, str]], ignored: int,
               batch_size: int) -> pd.DataFrame:
        if batch_size < 1:
            raise UserInputError(f"batch_size={batch_size}: give a positive number of images per call")
        rows: dict[str, dict[str, np.ndarray]] = {}
        meta: dict[str, tuple] = {}
        for start in range(0, len(items), batch_size):
            self._score_batch(items[start:start + batch_size], rows, meta, skipped)
        if not rows:
            reasons = "; ".join(f"{s['image']}: {s['reason']}" for s in skipped[:3])
            raise UserInputError(f"{what}: no readable PNG, JPEG or DICOM image"
                                 f"{f' ({len(skipped)} skipped: {reasons})' if skipped else ''}")
        table = self._table([i.image_id for i in items], rows, meta, skipped)
        table.attrs["ignored_files"] = ignored  # not PNG, JPEG or DICOM by name or content
        return table

    def _table(self, ids: list[str], rows: dict, meta: dict, skipped: list) -> pd.DataFrame:
        ids = [i for i in ids if i in rows]
        column = lambda name: np.array([rows[i][name] for i in ids])  # noqa: E731
        columns = {OUTPUT_PROB: column(OUTPUT_PROB)}
        if len(self.members) == 1:
            columns[OUTPUT_UNCALIBRATED] = column(OUTPUT_UNCALIBRATED)
        else:
            per_member = ((OUTPUT_MEMBERS, member_column), (OUTPUT_MEMBERS_PROB, member_prob_column))
            for output, name_of in per_member:
                if ids and output not in rows[ids[0]]:  # an export of schema 2
                    continue
                members = column(output).reshape(len(ids), len(self.members))
                columns.update({name_of(name): members[:, m] for m, name in enumerate(self.members)})
        columns[OUTPUT_DECISION] = column(OUTPUT_DECISION)
        columns[OUTPUT_LOGIT] = column(OUTPUT_LOGIT)
        if ids and OUTPUT_SPREAD in rows[ids[0]]:
            columns[OUTPUT_SPREAD] = column(OUTPUT_SPREAD)
        if not ids or OUTPUT_TRIAGE in rows[ids[0]]:  # absent from an export of schema 2
            columns[OUTPUT_TRIAGE] = np.array([rows[i][OUTPUT_TRIAGE].decode() for i in ids], dtype=object)
            columns[OUTPUT_IMPLAUSIBLE] = column(OUTPUT_IMPLAUSIBLE)
        if ids and OUTPUT_FINDINGS in rows[ids[0]]:
            findings = column(OUTPUT_FINDINGS).reshape(len(ids), len(FINDINGS))
            columns.update({finding_prob(f): findings[:, k] for k, f in enumerate(FINDINGS)})
        for k, name in enumerate(META_COLUMNS):
            columns[name] = np.array([meta[i][k] for i in ids], dtype=np.int64 if name == AGE else object)
        table = pd.DataFrame(columns, index=pd.Index(ids, name=ID))
        table.attrs[SKIPPED] = list(skipped)
        return table

