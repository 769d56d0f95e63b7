"""Writing one shard atomically from the workers' processed images (the builder's TensorFlow side).

Only the builder's parent process imports this module: workers return encoded images, and the
parent serialises records and writes each shard to a temporary name, renaming it when complete,
so a shard file that exists under its final name is always whole.
"""

from __future__ import annotations

import tensorflow as tf

from contracts import records
from contracts.atomic import atomic_path
from preprocess.sources import Source


def example_for(source: Source, encoded: bytes, crop_applied: bool, boxes, config) -> bytes:
    """Serialises one record of `source`; `boxes` is its `preprocess.plan.ImageBoxes`, or None."""
    entry = source.entry
    return records.make_example(
        image=encoded,
        image_format=config.image_format,
        image_size=config.image_size,
        image_id=entry.image,
        label=entry.label,
        findings=entry.findings,
        patient_id=entry.patient_id,
        view_position=entry.view_position,
        crop_applied=crop_applied,
        box=boxes.union if boxes is not None else records.NO_BOX,
        boxes=boxes.boxes if boxes is not None else (),
        sex=entry.sex,
        age=entry.age,
    ).SerializeToString(deterministic=True)  # map keys sorted: same bytes in every process


# TFRecord frames each record with its length (8 bytes), the length's CRC (4) and the data's CRC (4).
TFRECORD_FRAMING_BYTES = 16


def file_bytes(serialized: list[bytes]) -> int:
    """The size of the TFRecord file `write_atomically` makes of `serialized` (no compression)."""
    return sum(len(record) + TFRECORD_FRAMING_BYTES for record in serialized)


def write_atomically(path: str, serialized: list[bytes]) -> None:
    """Writes `serialized` records to `path` through `contracts.atomic` (temporary name, fsync, rename)."""
    with atomic_path(path) as tmp, tf.io.TFRecordWriter(tmp) as writer:
        for record in serialized:
            writer.write(record)
