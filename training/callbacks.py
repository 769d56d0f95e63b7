"""The reference Keras callbacks, driven from the custom loop through `keras.callbacks.CallbackList`.

ReduceLROnPlateau watches the validation loss, EarlyStopping the validation AUROC (restoring the best
weights, the same epoch that `model.keras` is exported from); TensorBoard writes the epoch logs
(when the `tensorboard` package is installed).
Their counters go into each checkpoint, so a resumed run keeps its patience and its best score.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import keras
import numpy as np
from absl import logging

from contracts import run_folder
from training.config import TrainConfig

EARLY_STOPPING_MONITOR = "val_auroc"
REDUCE_LR_MONITOR = "val_loss"

# The counters that make a callback's next decision; everything else is configuration.
_STATE_ATTRIBUTES = {
    keras.callbacks.EarlyStopping: ("wait", "best", "best_epoch"),
    keras.callbacks.ReduceLROnPlateau: ("wait", "best", "cooldown_counter"),
}


def make_callbacks(config: TrainConfig, model: keras.Model, model_dir: str, *,
                   chief: bool) -> keras.callbacks.CallbackList:
    """Returns the run's callbacks bound to `model` (which must be compiled with its optimizer).

    Validation-driven callbacks only run with `config.validation`; TensorBoard only on the chief.
    """
    callbacks = []
    if config.validation:
        callbacks.append(keras.callbacks.ReduceLROnPlateau(
            monitor=REDUCE_LR_MONITOR, mode="min", factor=config.reduce_lr_factor,
            patience=config.reduce_lr_patience, min_lr=config.min_learning_rate, verbose=int(chief)))
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor=EARLY_STOPPING_MONITOR, mode="max", patience=config.early_stopping_patience,
            restore_best_weights=True, verbose=int(chief)))
    if chief and tensorboard_available():
        callbacks.append(keras.callbacks.TensorBoard(
            log_dir=os.path.join(model_dir, run_folder.TENSORBOARD), write_graph=False, update_freq="epoch"))
    elif chief:
        logging.warning("the tensorboard package is not installed, so no TensorBoard events are "
                        "written (metrics.jsonl has the same numbers); `pip install tensorboard` "
                        "to get them")
    return keras.callbacks.CallbackList(callbacks, model=model, epochs=config.epochs,
                                        steps=config.steps_per_epoch, verbose=0)


def tensorboard_available() -> bool:
    """Whether the `tensorboard` package is importable (TensorFlow 2.21 no longer installs it).

    Keras' TensorBoard callback writes its scalars through it.
    """
    return importlib.util.find_spec("tensorboard") is not None


def _plain(value: Any) -> Any:
    return float(value) if isinstance(value, (np.floating, np.integer, float)) else value


def callback_state(callbacks: keras.callbacks.CallbackList) -> dict[str, dict[str, Any]]:
    """Returns the counters of the stateful callbacks, JSON-ready, keyed by class name."""
    state = {}
    for callback in callbacks.callbacks:
        for kind, attributes in _STATE_ATTRIBUTES.items():
            if isinstance(callback, kind):
                state[kind.__name__] = {a: _plain(getattr(callback, a)) for a in attributes}
    return state


def restore_callback_state(callbacks: keras.callbacks.CallbackList, state: dict[str, dict[str, Any]],
                           best_weights: list[np.ndarray] | None) -> None:
    """Puts saved counters back (call after `on_train_begin`, which resets them).

    Args:
      callbacks: from `make_callbacks`.
      state: from `callback_state`, as saved in the checkpoint.
      best_weights: the weights of the best epoch so far, for EarlyStopping to restore at the end;
        None leaves EarlyStopping to take the next epoch's weights as its first best.
    """
    for callback in callbacks.callbacks:
        for kind, attributes in _STATE_ATTRIBUTES.items():
            saved = state.get(kind.__name__)
            if isinstance(callback, kind) and saved:
                for attribute in attributes:
                    setattr(callback, attribute, saved[attribute])
        if isinstance(callback, keras.callbacks.EarlyStopping) and best_weights is not None:
            callback.best_weights = best_weights
