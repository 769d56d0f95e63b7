"""The TFRecord format shared by the builder and every reader: feature keys, spec, writer and parser.

One record is one radiograph, already cropped and resized offline, stored as a single grayscale
channel (the pipeline expands it to three channels). Defining the format once keeps the writer in
`preprocess/` and the readers in `pipeline/`, `predict.py` and the tests from drifting apart.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import tensorflow as tf

from contracts.boxes import FindingBox
from contracts.demographics import AGE_UNKNOWN, SEXES
from contracts.labels import (  # noqa: F401  (re-exported: the format's label vocabulary)
    FINDINGS,
    LABEL_ABNORMAL,
    LABEL_NORMAL,
    LABEL_UNKNOWN,
    NO_FINDING,
    findings_multi_hot,
)

IMAGE = "image/encoded"
IMAGE_FORMAT = "image/format"  # b"png" or b"jpeg"
IMAGE_SIZE = "image/size"  # the stored image is size x size
IMAGE_ID = "image/id"  # the original file name, e.g. b"00000001_000.png"
LABEL = "label"
FINDINGS_KEY = "findings"
PATIENT_ID = "patient_id"
VIEW_POSITION = "view_position"
CROP_APPLIED = "crop/applied"  # 1 when the stored image is the bbox crop
SEX = "patient/sex"  # b"M", b"F", or b"" when unknown (NIH "Patient Gender", DICOM PatientSex)
AGE = "patient/age"  # whole years; AGE_UNKNOWN when unknown (NIH "Patient Age", DICOM PatientAge)
BOX = "box"  # union of the image's boxes as x, y, w, h in the 1024 frame; zeros when none
# Every box of the image with its finding, in two parallel lists: BOXES holds x, y, w, h of box i at
# 4i..4i+3 (1024 frame), BOX_FINDINGS the `FINDINGS` name of box i. Empty when the image has none.
BOXES = "boxes/xywh"
BOX_FINDINGS = "boxes/finding"

FEATURE_SPEC: dict[str, tf.io.FixedLenFeature | tf.io.VarLenFeature] = {
    IMAGE: tf.io.FixedLenFeature([], tf.string),
    IMAGE_FORMAT: tf.io.FixedLenFeature([], tf.string),
    IMAGE_SIZE: tf.io.FixedLenFeature([], tf.int64),
    IMAGE_ID: tf.io.FixedLenFeature([], tf.string),
    LABEL: tf.io.FixedLenFeature([], tf.int64),
    FINDINGS_KEY: tf.io.FixedLenFeature([len(FINDINGS)], tf.int64),
    PATIENT_ID: tf.io.FixedLenFeature([], tf.string, default_value=b""),
    VIEW_POSITION: tf.io.FixedLenFeature([], tf.string, default_value=b""),
    CROP_APPLIED: tf.io.FixedLenFeature([], tf.int64, default_value=0),
    # Defaults: shards built before these fields existed read as "unknown".
    SEX: tf.io.FixedLenFeature([], tf.string, default_value=b""),
    AGE: tf.io.FixedLenFeature([], tf.int64, default_value=AGE_UNKNOWN),
    BOX: tf.io.FixedLenFeature([4], tf.float32, default_value=[0.0, 0.0, 0.0, 0.0]),
    # Variable length (parsed as sparse tensors); records written before them read as empty.
    BOXES: tf.io.VarLenFeature(tf.float32),
    BOX_FINDINGS: tf.io.VarLenFeature(tf.string),
}

NO_BOX = (0.0, 0.0, 0.0, 0.0)


def _bytes(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _ints(values: Sequence[int]) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))


def _floats(values: Sequence[float]) -> tf.train.Feature:
    return tf.train.Feature(float_list=tf.train.FloatList(value=list(values)))


def make_example(
    *,
    image: bytes,
    image_format: str,
    image_size: int,
    image_id: str,
    label: int,
    findings: Sequence[int],
    patient_id: str = "",
    view_position: str = "",
    crop_applied: bool = False,
    box: Sequence[float] = NO_BOX,
    boxes: Sequence[FindingBox] = (),
    sex: str = "",
    age: int | None = None,
) -> tf.train.Example:
    """Builds one record.

    Args:
      image: the encoded (PNG or JPEG) single-channel image, `image_size` x `image_size`.
      image_format: "png" or "jpeg".
      image_size: side of the stored square image.
      image_id: the original file name; predictions are keyed by it.
      label: 0 normal, 1 abnormal, -1 unknown.
      findings: the 14-long multi-hot vector (see `findings_multi_hot`).
      patient_id: NIH Patient ID as a string ("" when unknown).
      view_position: "PA", "AP", ... ("" when unknown).
      crop_applied: whether the stored image is the crop to `box`.
      box: union of the image's boxes (x, y, w, h) in the original 1024 frame, `NO_BOX` when none.
      boxes: every box of the image with its finding (1024 frame), in the bbox CSV's order.
      sex: "M", "F" or "" (unknown).
      age: whole years, or None when unknown.

    Returns:
      The `tf.train.Example`.

    Raises:
      ValueError: an argument is outside the format.
    """
    if image_format not in ("png", "jpeg"):
        raise ValueError(f"image_format must be 'png' or 'jpeg', got {image_format!r}")
    if label not in (LABEL_NORMAL, LABEL_ABNORMAL, LABEL_UNKNOWN):
        raise ValueError(f"label must be 0, 1 or -1, got {label!r}")
    if len(findings) != len(FINDINGS):
        raise ValueError(f"findings must have {len(FINDINGS)} entries, got {len(findings)}")
    if len(box) != 4:
        raise ValueError(f"box must be (x, y, w, h), got {box!r}")
    if sex not in SEXES + ("",):
        raise ValueError(f"sex must be 'M', 'F' or '' (unknown), got {sex!r}")
    if age is not None and age < 0:
        raise ValueError(f"age must be >= 0 or None (unknown), got {age!r}")
    for found in boxes:
        if found.finding not in FINDINGS:
            raise ValueError(f"box finding must be one of FINDINGS, got {found.finding!r}")
    feature = {
        IMAGE: _bytes(image),
        IMAGE_FORMAT: _bytes(image_format.encode()),
        IMAGE_SIZE: _ints([image_size]),
        IMAGE_ID: _bytes(image_id.encode()),
        LABEL: _ints([label]),
        FINDINGS_KEY: _ints(findings),
        PATIENT_ID: _bytes(patient_id.encode()),
        VIEW_POSITION: _bytes(view_position.encode()),
        CROP_APPLIED: _ints([int(bool(crop_applied))]),
        BOX: _floats(box),
        BOXES: _floats([v for found in boxes for v in found.xywh]),
        BOX_FINDINGS: tf.train.Feature(bytes_list=tf.train.BytesList(value=[b.finding.encode() for b in boxes])),
        SEX: _bytes(sex.encode()),
        AGE: _ints([AGE_UNKNOWN if age is None else int(age)]),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature))


def parse_example(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """Parses a scalar or a batch (vector) of serialized records with `FEATURE_SPEC`.

    Vectorised: call it after `batch()` to parse a whole batch in one op.
    """
    return tf.io.parse_example(serialized, FEATURE_SPEC)


def decode_image(encoded: tf.Tensor, image_size: int) -> tf.Tensor:
    """Decodes one stored image to a `(image_size, image_size, 1)` uint8 tensor.

    `decode_image` reads PNG and JPEG alike; the static shape lets the model see fixed sizes.
    Fails at run time when the stored image has another size.
    """
    image = tf.io.decode_image(encoded, channels=1, expand_animations=False)
    # Fails loudly (rather than resizing) when the shards were built at another --image_size.
    return tf.ensure_shape(image, [image_size, image_size, 1])


def finding_boxes(xywh: Sequence[float], findings: Sequence[bytes | str]) -> list[FindingBox]:
    """Returns the `FindingBox`es of a record's BOXES and BOX_FINDINGS values (parsed or raw).

    Raises:
      ValueError: the two lists do not describe the same number of boxes.
    """
    if len(xywh) != 4 * len(findings):
        raise ValueError(f"a record has {len(xywh)} box coordinates for {len(findings)} box findings")
    names = [f.decode() if isinstance(f, bytes) else str(f) for f in findings]
    return [FindingBox(name, *(float(v) for v in xywh[4 * i:4 * i + 4])) for i, name in enumerate(names)]


def example_to_dict(example_bytes: bytes) -> Mapping[str, object]:
    """Parses one serialized record in plain Python (for tests and tools, not the hot path)."""
    example = tf.train.Example.FromString(example_bytes)
    feature = example.features.feature
    return {
        "image": feature[IMAGE].bytes_list.value[0],
        "image_format": feature[IMAGE_FORMAT].bytes_list.value[0].decode(),
        "image_size": feature[IMAGE_SIZE].int64_list.value[0],
        "image_id": feature[IMAGE_ID].bytes_list.value[0].decode(),
        "label": feature[LABEL].int64_list.value[0],
        "findings": list(feature[FINDINGS_KEY].int64_list.value),
        "patient_id": feature[PATIENT_ID].bytes_list.value[0].decode(),
        "view_position": feature[VIEW_POSITION].bytes_list.value[0].decode(),
        "crop_applied": bool(feature[CROP_APPLIED].int64_list.value[0]),
        "box": list(feature[BOX].float_list.value),
        "boxes": finding_boxes(feature[BOXES].float_list.value if BOXES in feature else [],
                               feature[BOX_FINDINGS].bytes_list.value if BOX_FINDINGS in feature else []),
        "sex": feature[SEX].bytes_list.value[0].decode() if SEX in feature else "",
        "age": feature[AGE].int64_list.value[0] if AGE in feature else AGE_UNKNOWN,
    }
