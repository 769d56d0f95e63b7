"""Resumable run state in `model_dir/checkpoints`: model, optimizer, epochs done, step, callback state.

Under MultiWorkerMirroredStrategy every worker takes part in a save, but only the chief writes into
`model_dir`; the others write to a private temporary folder that is emptied after each save. Every
worker restores from `model_dir/checkpoints`, which therefore must be on storage they all can read.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

import keras
import tensorflow as tf

from contracts import run_folder


class RunState:
    """The checkpointed state of one run and its manager.

    Args:
      model: the model being trained.
      optimizer: its optimizer, already built on the model's trainable variables (so that restoring
        fills its slots instead of deferring).
      model_dir: the run's output folder.
      chief: whether this process writes into `model_dir`.
      keep: checkpoints kept.
    """

    def __init__(self, model: keras.Model, optimizer: keras.optimizers.Optimizer, model_dir: str,
                 *, chief: bool, keep: int):
        self._epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epochs_done")
        self._step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        self._extra = tf.Variable("{}", dtype=tf.string, trainable=False, name="extra_state")
        self._checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=self._epoch,
                                               step=self._step, extra=self._extra)
        self.directory = os.path.join(model_dir, run_folder.CHECKPOINTS)
        self._chief = chief
        self._write_dir = self.directory if chief else tempfile.mkdtemp(prefix="cxr_worker_checkpoints_")
        self._manager = tf.train.CheckpointManager(self._checkpoint, self._write_dir, max_to_keep=keep)

    @property
    def epochs_done(self) -> int:
        """Epochs completed by the run so far (the next epoch's index)."""
        return int(self._epoch.numpy())

    @property
    def step(self) -> int:
        """Optimizer steps taken by the run so far."""
        return int(self._step.numpy())

    @property
    def extra(self) -> dict[str, Any]:
        """The JSON state saved with the last checkpoint (callbacks, best score, whether it finished)."""
        return json.loads(self._extra.numpy().decode())

    def restore_latest(self) -> str | None:
        """Restores the newest checkpoint of `model_dir`, if any; returns its path or None."""
        path = tf.train.latest_checkpoint(self.directory)
        if path is not None:
            self._checkpoint.restore(path).assert_existing_objects_matched()
        return path

    def save(self, epochs_done: int, step: int, extra: dict[str, Any]) -> None:
        """Checkpoints the run after `epochs_done` epochs and `step` steps, with `extra` as JSON.

        Every worker must call it at the same point.
        """
        self._epoch.assign(epochs_done)
        self._step.assign(step)
        self._extra.assign(json.dumps(extra))
        self._manager.save(checkpoint_number=epochs_done)
        if not self._chief:
            shutil.rmtree(self._write_dir, ignore_errors=True)
            os.makedirs(self._write_dir, exist_ok=True)

    def close(self) -> None:
        """Removes a non-chief worker's temporary folder."""
        if not self._chief:
            shutil.rmtree(self._write_dir, ignore_errors=True)
