"""Scoring encoded image files with an exported SavedModel, as a server would: bytes in, outputs back."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from contracts import storage
from contracts.export_folder import INPUT_BYTES, SERVING_DEFAULT


def score_files(export_dir: str, paths: Sequence[str], batch_size: int = 32) -> dict[str, np.ndarray]:
    """Each output of `serving_default` over the files, in `paths` order."""
    signature = tf.saved_model.load(export_dir).signatures[SERVING_DEFAULT]
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(paths), batch_size):
        data = [storage.read_bytes(path) for path in paths[start:start + batch_size]]
        for name, value in signature(**{INPUT_BYTES: tf.constant(data)}).items():
            parts.setdefault(name, []).append(value.numpy())
    return {name: np.concatenate(values) for name, values in parts.items()}
