"""The patient columns of a split (patient id, view position, sex, age) by image id, for the report's
intervals (which resample patients) and subgroups.

Read straight from the shards without decoding a single image, so it costs a fraction of the
prediction pass it accompanies.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from contracts import records
from contracts.prediction_files import AGE, PATIENT, SEX, VIEW
from pipeline.input_pipeline import list_shards

_BATCH = 4096
_SPEC = {key: records.FEATURE_SPEC[key] for key in (records.IMAGE_ID, records.PATIENT_ID, records.VIEW_POSITION,
                                                     records.SEX, records.AGE)}


def read_patient_columns(data_dir: str, split: str, ids: np.ndarray) -> dict[str, np.ndarray]:
    """Returns {PATIENT, VIEW, SEX, AGE} for `ids` (in that order): "" (age -1) where a record lacks them.

    Raises:
      KeyError: an id is not in the split's shards.
    """
    patient, view, sex, age = {}, {}, {}, {}
    dataset = tf.data.TFRecordDataset(list_shards(data_dir, split)).batch(_BATCH).map(
        lambda serialized: tf.io.parse_example(serialized, _SPEC))
    for batch in dataset.as_numpy_iterator():
        for key, p, v, s, a in zip(batch[records.IMAGE_ID], batch[records.PATIENT_ID], batch[records.VIEW_POSITION],
                                   batch[records.SEX], batch[records.AGE]):
            name = key.decode("utf-8")
            patient[name], view[name], sex[name], age[name] = p.decode("utf-8"), v.decode("utf-8"), s.decode("utf-8"), int(a)
    return {PATIENT: np.array([patient[i] for i in ids], dtype=object).astype(str),
            VIEW: np.array([view[i] for i in ids], dtype=object).astype(str),
            SEX: np.array([sex[i] for i in ids], dtype=object).astype(str),
            AGE: np.array([age[i] for i in ids], dtype=np.int64)}
