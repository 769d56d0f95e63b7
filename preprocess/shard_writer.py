"""Records serialised and one shard written atomically: the builder's TensorFlow side."""

from __future__ import annotations

import tensorflow as tf

from contracts import records
from contracts.atomic import atomic_path
from contracts.study_ids import study_id

TFRECORD_FRAMING_BYTES = 16  # per record: its length (8), the length's CRC (4), the data's CRC (4)


def example_for(entry, encoded: bytes, crop_applied: bool, boxes, config) -> bytes:
    """One serialised record of `nih_metadata.Entry` `entry`; `boxes` is a `plan.ImageBoxes` or None."""
    return records.make_example(records.Record(
        image=encoded, image_format=config.image_format, image_size=config.image_size, image_id=entry.image,
        label=entry.label, findings=entry.findings, findings_known=entry.findings_known,
        patient_id=entry.patient_id, view_position=entry.view_position, crop_applied=crop_applied,
        box=boxes.union if boxes is not None else records.NO_BOX,
        boxes=boxes.boxes if boxes is not None else (), sex=entry.sex, age=entry.age,
        study_id=study_id(entry.image, entry.study_uid),
    )).SerializeToString(deterministic=True)  # map keys sorted: the same bytes in every process


def file_bytes(serialized: list[bytes]) -> int:
    """The size of the TFRecord file `write_atomically` makes of `serialized`."""
    return sum(len(record) + TFRECORD_FRAMING_BYTES for record in serialized)


def write_atomically(path: str, serialized: list[bytes]) -> None:
    """Writes the records to `path` through `contracts.atomic` (temporary name, fsync, rename)."""
    with atomic_path(path) as tmp, tf.io.TFRecordWriter(tmp) as writer:
        for record in serialized:
            writer.write(record)
