"""A split's patient columns (and study ids) by image id, read from the records without decoding an image."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from contracts import records
from contracts.manifest import ShardFolder
from contracts.prediction_files import AGE, PATIENT, SEX, STUDY, VIEW

_BATCH = 4096
_COLUMNS = {PATIENT: records.PATIENT_ID, VIEW: records.VIEW_POSITION, SEX: records.SEX, AGE: records.AGE}


def read_patient_columns(shards: ShardFolder, split: str, ids: np.ndarray,
                         study: bool = False) -> dict[str, np.ndarray]:
    """{PATIENT, VIEW, SEX, AGE} for `ids` in their order ("" and age -1 where unknown), and with
    `study` the records' STUDY ("" where unknown)."""
    fields = {**_COLUMNS, **({STUDY: records.STUDY_ID} if study else {})}
    spec = {key: records.FEATURE_SPEC[key] for key in (records.IMAGE_ID, *fields.values())}
    by_id: dict[str, tuple] = {}
    dataset = tf.data.TFRecordDataset(list(shards.split(split).paths)).batch(_BATCH).map(
        lambda serialized: tf.io.parse_example(serialized, spec))
    for batch in dataset.as_numpy_iterator():
        for row, key in enumerate(batch[records.IMAGE_ID]):
            by_id[key.decode("utf-8")] = {name: batch[field][row] for name, field in fields.items()}
    rows = [by_id[i] for i in ids]
    return {name: np.array([r[name] for r in rows], dtype=np.int64) if name == AGE else
            np.array([r[name].decode("utf-8") for r in rows], dtype=object).astype(str) for name in fields}
