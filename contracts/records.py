"""The TFRecord format shared by the builder and every reader: feature keys, spec, writer, parser.
One record is one radiograph, cropped and resized offline, stored as one grayscale channel."""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import tensorflow as tf

from contracts.boxes import FindingBox
from contracts.demographics import AGE_UNKNOWN
from contracts.labels import FINDINGS, LABEL_UNKNOWN  # noqa: F401  (LABEL_UNKNOWN: re-exported)

IMAGE = "image/encoded"
IMAGE_FORMAT = "image/format"  # b"png" or b"jpeg"
IMAGE_SIZE = "image/size"  # the stored image is size x size
IMAGE_ID = "image/id"  # the original file name, e.g. b"00000001_000.png"
LABEL = "label"
FINDINGS_KEY = "findings"
# 1: the source named the findings (NIH's Finding Labels); 0: it did not (a 0/1 label, unlabeled), so
# the zeros of FINDINGS_KEY mean unknown; -1 (the default): a record written before schema 5, which
# `ShardFolder.findings_known` decides from the manifest.
FINDINGS_KNOWN = "findings/known"
FINDINGS_NOT_RECORDED = -1
PATIENT_ID = "patient_id"
VIEW_POSITION = "view_position"
# The study the image belongs to (contracts.study_ids says which); b"" (the default): a record written
# before schema 6, whose study is unknown.
STUDY_ID = "study_id"
CROP_APPLIED = "crop/applied"  # 1 when the stored image is the bbox crop
SEX = "patient/sex"  # b"M", b"F", or b"" when unknown
AGE = "patient/age"  # whole years; AGE_UNKNOWN when unknown
BOX = "box"  # union of the image's boxes as x, y, w, h in the 1024 frame; zeros when none
# Every box with its finding, in parallel lists: BOXES holds box i's x, y, w, h at 4i..4i+3.
BOXES = "boxes/xywh"
BOX_FINDINGS = "boxes/finding"

FEATURE_SPEC: dict[str, tf.io.FixedLenFeature | tf.io.VarLenFeature] = {
    IMAGE: tf.io.FixedLenFeature([], tf.string),
    IMAGE_FORMAT: tf.io.FixedLenFeature([], tf.string),
    IMAGE_SIZE: tf.io.FixedLenFeature([], tf.int64),
    IMAGE_ID: tf.io.FixedLenFeature([], tf.string),
    LABEL: tf.io.FixedLenFeature([], tf.int64),
    FINDINGS_KEY: tf.io.FixedLenFeature([len(FINDINGS)], tf.int64),
    FINDINGS_KNOWN: tf.io.FixedLenFeature([], tf.int64, default_value=FINDINGS_NOT_RECORDED),
    PATIENT_ID: tf.io.FixedLenFeature([], tf.string, default_value=b""),
    VIEW_POSITION: tf.io.FixedLenFeature([], tf.string, default_value=b""),
    STUDY_ID: tf.io.FixedLenFeature([], tf.string, default_value=b""),
    CROP_APPLIED: tf.io.FixedLenFeature([], tf.int64, default_value=0),
    # Defaults: shards built before these fields existed read as "unknown" (or empty).
    SEX: tf.io.FixedLenFeature([], tf.string, default_value=b""),
    AGE: tf.io.FixedLenFeature([], tf.int64, default_value=AGE_UNKNOWN),
    BOX: tf.io.FixedLenFeature([4], tf.float32, default_value=[0.0, 0.0, 0.0, 0.0]),
    BOXES: tf.io.VarLenFeature(tf.float32),
    BOX_FINDINGS: tf.io.VarLenFeature(tf.string),
}

NO_BOX = (0.0, 0.0, 0.0, 0.0)


@dataclasses.dataclass(frozen=True)
class Record:
    """One record's values, as the builder checked them (a box's finding checked here)."""
    image: bytes  # the encoded PNG or JPEG, image_size x image_size, one channel
    image_format: str  # "png" or "jpeg"
    image_size: int
    image_id: str  # the original file name; predictions are keyed by it
    label: int  # 0 normal, 1 abnormal, -1 unknown
    findings: Sequence[int]  # the 14-long multi-hot vector
    patient_id: str = ""
    view_position: str = ""  # "PA", "AP", ... or ""
    crop_applied: bool = False  # the stored image is the crop to `box`
    box: Sequence[float] = NO_BOX  # union of `boxes` (x, y, w, h, 1024 frame)
    boxes: Sequence[FindingBox] = ()  # every box with its finding, in the bbox CSV's order
    sex: str = ""  # "M", "F" or "" (unknown)
    age: int | None = None  # whole years, None when unknown
    findings_known: bool = False  # the label source named the findings; else `findings` is all zeros
    study_id: str = ""  # "" when unknown

    def __post_init__(self):  # the bbox CSV spells findings its own way ("Infiltrate"): never store that
        for found in self.boxes:
            if found.finding not in FINDINGS:
                raise ValueError(f"box finding must be one of FINDINGS, got {found.finding!r}")


def _bytes(*values: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def _ints(*values: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))


def _floats(*values: float) -> tf.train.Feature:
    return tf.train.Feature(float_list=tf.train.FloatList(value=list(values)))


def make_example(record: Record) -> tf.train.Example:
    feature = {
        IMAGE: _bytes(record.image),
        IMAGE_FORMAT: _bytes(record.image_format.encode()),
        IMAGE_SIZE: _ints(record.image_size),
        IMAGE_ID: _bytes(record.image_id.encode()),
        LABEL: _ints(record.label),
        FINDINGS_KEY: _ints(*record.findings),
        FINDINGS_KNOWN: _ints(int(bool(record.findings_known))),
        PATIENT_ID: _bytes(record.patient_id.encode()),
        VIEW_POSITION: _bytes(record.view_position.encode()),
        STUDY_ID: _bytes(record.study_id.encode()),
        CROP_APPLIED: _ints(int(bool(record.crop_applied))),
        BOX: _floats(*record.box),
        BOXES: _floats(*(v for found in record.boxes for v in found.xywh)),
        BOX_FINDINGS: _bytes(*(found.finding.encode() for found in record.boxes)),
        SEX: _bytes(record.sex.encode()),
        AGE: _ints(AGE_UNKNOWN if record.age is None else int(record.age)),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature))


def parse_example(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """Parses a scalar or a batch of serialized records (call it after `batch()`: one op)."""
    return tf.io.parse_example(serialized, FEATURE_SPEC)


def decode_image(encoded: tf.Tensor, image_size: int) -> tf.Tensor:
    """One stored image as `(image_size, image_size, 1)` uint8; fails, not resizes, at another size."""
    image = tf.io.decode_image(encoded, channels=1, expand_animations=False)
    return tf.ensure_shape(image, [image_size, image_size, 1])


def finding_boxes(xywh: Sequence[float], findings: Sequence[bytes | str]) -> list[FindingBox]:
    """The `FindingBox`es of a record's BOXES and BOX_FINDINGS values; ValueError when they disagree."""
    if len(xywh) != 4 * len(findings):
        raise ValueError(f"a record has {len(xywh)} box coordinates for {len(findings)} box findings")
    names = [f.decode() if isinstance(f, bytes) else str(f) for f in findings]
    return [FindingBox(name, *(float(v) for v in xywh[4 * i:4 * i + 4])) for i, name in enumerate(names)]


def example_to_dict(example_bytes: bytes) -> Mapping[str, object]:
    """Parses one serialized record in plain Python (for tests and tools, not the hot path)."""
    feature = tf.train.Example.FromString(example_bytes).features.feature
    return {
        "image": feature[IMAGE].bytes_list.value[0],
        "image_format": feature[IMAGE_FORMAT].bytes_list.value[0].decode(),
        "image_size": feature[IMAGE_SIZE].int64_list.value[0],
        "image_id": feature[IMAGE_ID].bytes_list.value[0].decode(),
        "label": feature[LABEL].int64_list.value[0],
        "findings": list(feature[FINDINGS_KEY].int64_list.value),
        "findings_known": (feature[FINDINGS_KNOWN].int64_list.value[0] if FINDINGS_KNOWN in feature
                           else FINDINGS_NOT_RECORDED),
        "patient_id": feature[PATIENT_ID].bytes_list.value[0].decode(),
        "view_position": feature[VIEW_POSITION].bytes_list.value[0].decode(),
        "study_id": feature[STUDY_ID].bytes_list.value[0].decode() if STUDY_ID in feature else "",
        "crop_applied": bool(feature[CROP_APPLIED].int64_list.value[0]),
        "box": list(feature[BOX].float_list.value),
        "boxes": finding_boxes(feature[BOXES].float_list.value if BOXES in feature else [],
                               feature[BOX_FINDINGS].bytes_list.value if BOX_FINDINGS in feature else []),
        "sex": feature[SEX].bytes_list.value[0].decode() if SEX in feature else "",
        "age": feature[AGE].int64_list.value[0] if AGE in feature else AGE_UNKNOWN,
    }
