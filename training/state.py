"""The loop's own state and the checkpoints that carry it: every worker saves (only the chief into
`model_dir`) and restores from `model_dir/checkpoints`, so it must be on storage they all read."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

from contracts import run_folder
from contracts.errors import UserInputError
from training.config import TrainConfig

LOWER_LOSS_MIN_DELTA = 1e-4  # a val loss counts as lower when it drops by more (Keras' ReduceLROnPlateau)
BEST = "best"  # the subfolder of the best epochs' checkpoints (model weights only)
STATE_KEY = "loop_state/.ATTRIBUTES/VARIABLE_VALUE"


@dataclasses.dataclass(frozen=True)
class LoopState:
    """What the loop decides by, saved with each checkpoint."""

    learning_rate: float  # the one the next epoch trains at
    epoch: int = 0  # epochs done
    step: int = 0  # optimizer steps done
    best_epoch: int = 0  # the best by val AUROC (the last without validation): model.keras comes from it
    best_auroc: float = -math.inf
    epochs_without_better_auroc: int = 0  # early stopping's patience counter
    lowest_loss: float = math.inf
    epochs_without_lower_loss: int = 0  # the learning rate plateau's counter
    finished: bool = False

    def after_epoch(self, config: TrainConfig, steps: int, auroc: float | None,
                    loss: float | None) -> LoopState:
        """The state after one more epoch scoring `auroc` and `loss` on validation (None without)."""
        epoch, step = self.epoch + 1, self.step + steps
        if auroc is None:
            return dataclasses.replace(self, epoch=epoch, step=step, best_epoch=epoch,
                                       finished=epoch >= config.epochs)
        # The first epoch is the best until one beats it, even with a NaN AUROC (one class).
        better = self.best_epoch == 0 or auroc > self.best_auroc
        waited = 0 if better else self.epochs_without_better_auroc + 1
        lower = loss < self.lowest_loss - LOWER_LOSS_MIN_DELTA
        plateau = 0 if lower else self.epochs_without_lower_loss + 1
        learning_rate = self.learning_rate
        if plateau >= config.reduce_lr_patience and learning_rate > np.float32(config.min_learning_rate):
            learning_rate, plateau = max(learning_rate * config.reduce_lr_factor, config.min_learning_rate), 0
        return LoopState(
            learning_rate=learning_rate, epoch=epoch, step=step,
            best_epoch=epoch if better else self.best_epoch,
            best_auroc=auroc if better else self.best_auroc, epochs_without_better_auroc=waited,
            lowest_loss=loss if lower else self.lowest_loss, epochs_without_lower_loss=plateau,
            finished=epoch >= config.epochs or (waited >= config.early_stopping_patience and epoch > 1))


class Checkpoints:
    """The last `keep` checkpoints (model, optimizer, `LoopState`) and the best epoch's weights."""

    def __init__(self, model: keras.Model, optimizer: keras.optimizers.Optimizer, model_dir: str, *,
                 chief: bool, keep: int):
        self.directory = os.path.join(model_dir, run_folder.CHECKPOINTS)
        self._model_dir, self._chief, self._model = model_dir, chief, model
        self._state = tf.Variable("", dtype=tf.string, trainable=False, name="loop_state")
        self._write_dir = self.directory if chief else tempfile.mkdtemp(prefix="cxr_worker_checkpoints_")
        self._checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, loop_state=self._state)
        self._latest = tf.train.CheckpointManager(self._checkpoint, self._write_dir, max_to_keep=keep)
        # Two: a kill between the two saves of an epoch leaves a best the restored state does not name.
        self._best = tf.train.CheckpointManager(tf.train.Checkpoint(model=model),
                                                os.path.join(self._write_dir, BEST), max_to_keep=2)

    def restore_latest(self) -> LoopState | None:
        path = tf.train.latest_checkpoint(self.directory)
        if path is None:
            return None
        if not tf.train.load_checkpoint(path).has_tensor(STATE_KEY):
            raise UserInputError(f"{self._model_dir} holds checkpoints of an older version of the trainer, "
                                 "which this one cannot resume; train into a new model_dir")
        self._checkpoint.restore(path).assert_existing_objects_matched()
        return LoopState(**json.loads(self._state.numpy().decode()))

    def restore_best(self, epoch: int) -> None:
        path = os.path.join(self.directory, BEST, f"ckpt-{epoch}")
        tf.train.Checkpoint(model=self._model).restore(path).expect_partial().assert_existing_objects_matched()

    def save(self, state: LoopState, *, best: bool) -> None:
        if best:  # first: a checkpoint naming a best epoch always finds its weights
            self._best.save(checkpoint_number=state.epoch)
        self._state.assign(json.dumps(dataclasses.asdict(state)))
        self._latest.save(checkpoint_number=state.epoch)
        if not self._chief:
            shutil.rmtree(self._write_dir, ignore_errors=True)
            os.makedirs(os.path.join(self._write_dir, BEST), exist_ok=True)

    def close(self) -> None:
        if not self._chief:
            shutil.rmtree(self._write_dir, ignore_errors=True)
