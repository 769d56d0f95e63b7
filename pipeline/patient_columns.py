"""A split's patient columns by image id, read from the records without decoding an image."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from contracts import records
from contracts.manifest import ShardFolder
from contracts.prediction_files import AGE, PATIENT, SEX, VIEW

_BATCH = 4096
_COLUMNS = {PATIENT: records.PATIENT_ID, VIEW: records.VIEW_POSITION, SEX: records.SEX, AGE: records.AGE}
_SPEC = {key: records.FEATURE_SPEC[key] for key in (records.IMAGE_ID, *_COLUMNS.values())}


def read_patient_columns(shards: ShardFolder, split: str, ids: np.ndarray) -> dict[str, np.ndarray]:
    """{PATIENT, VIEW, SEX, AGE} for `ids` in their order ("" and age -1 where unknown)."""
    by_id: dict[str, tuple] = {}
    dataset = tf.data.TFRecordDataset(list(shards.split(split).paths)).batch(_BATCH).map(
        lambda serialized: tf.io.parse_example(serialized, _SPEC))
    for batch in dataset.as_numpy_iterator():
        for row, key in enumerate(batch[records.IMAGE_ID]):
            by_id[key.decode("utf-8")] = tuple(batch[field][row] for field in _COLUMNS.values())
    rows = [by_id[i] for i in ids]
    columns = {name: np.array([r[k].decode("utf-8") for r in rows], dtype=object).astype(str)
               for k, name in enumerate((PATIENT, VIEW, SEX))}
    return {**columns, AGE: np.array([int(r[3]) for r in rows], dtype=np.int64)}
