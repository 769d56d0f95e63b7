"""Writing one shard atomically from the workers' processed images (the builder's TensorFlow side).

Only the builder's parent process imports this module: workers return encoded images, and the
parent serialises records and writes each shard to a temporary name, renaming it when complete,
so a shard file that exists under its final name is always whole.
"""

from __future__ import annotations

import os

import tensorflow as tf

from pipeline import records
from preprocess.sources import Source


def example_for(source: Source, encoded: bytes, crop_applied: bool, box, config) -> bytes:
    """Serialises one record of `source`."""
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
        box=box if box is not None else records.NO_BOX,
    ).SerializeToString(deterministic=True)  # map keys sorted: same bytes in every process


def write_atomically(path: str, tmp_dir: str, serialized: list[bytes]) -> None:
    """Writes `serialized` records to `path` via a temporary file in `tmp_dir`, then renames.

    The data is flushed to disk before the rename, so a machine crash cannot leave a final-named
    shard with missing records.
    """
    os.makedirs(tmp_dir, exist_ok=True)
    tmp = os.path.join(tmp_dir, f"{os.path.basename(path)}.tmp-{os.getpid()}")
    with tf.io.TFRecordWriter(tmp) as writer:
        for record in serialized:
            writer.write(record)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
