"""Loading a saved classifier: `model_dir/model.keras`, with safe_mode (no code from the file)."""

from __future__ import annotations

import os

from contracts.errors import UserInputError
from contracts.run_folder import MODEL


def load_classifier(model_dir: str):
    """Loads `model_dir/model.keras` with safe_mode=True (no arbitrary code from the file).

    Returns:
      The keras.Model, taking (B, S, S, 3) pixels in 0..255 and returning (B, 2) softmax.

    Raises:
      UserInputError: the file is missing, cannot be loaded, or does not output two probabilities.
    """
    import keras

    import models.preprocessing  # noqa: F401  (registers the project's layers so safe_mode can rebuild them)

    path = os.path.join(model_dir, MODEL)
    if not os.path.exists(path):
        raise UserInputError(f"{path} not found: train a model into --model_dir={model_dir} first")
    try:
        model = keras.models.load_model(path, safe_mode=True)
    except (ValueError, TypeError, OSError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserInputError(f"{path}: cannot be loaded ({first_line}); retrain or restore the file") from err
    if tuple(model.output_shape)[-1:] != (2,):
        raise UserInputError(
            f"{path}: outputs {model.output_shape}, not (batch, 2) softmax; not a classifier of this project"
        )
    return model


