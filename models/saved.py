"""Loading a saved classifier: `model_dir/model.keras`, with safe_mode (no code from the file)."""

from __future__ import annotations

import os
import zipfile

from contracts.errors import UserInputError
from contracts.run_folder import CONFIG, RunFolder
from models.heads import output_width

RESTORE = "retrain into this model_dir or restore the run folder from a copy"


def _check_archive(path: str) -> None:
    # Keras calls a truncated file "File not found" and a damaged one a bare BadZipFile: checking
    # every member's CRC first (the load reads them all anyway) names the damage.
    size = os.path.getsize(path)
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
        raise UserInputError(f"{path}: not a whole .keras archive ({size:,} bytes; {err}): truncated or "
                             f"damaged; {RESTORE}") from None
    if damaged is not None:
        raise UserInputError(f"{path}: damaged (its member {damaged!r} fails its CRC-32 check); {RESTORE}")


def load_classifier(run: RunFolder | str):
    """Loads the run's model.keras with safe_mode, refusing one missing, damaged or not the run's."""
    import keras

    import models.preprocessing  # noqa: F401  (registers the project's layers for safe_mode)

    run = run if isinstance(run, RunFolder) else RunFolder.open(run)
    model_dir, config, path = run.path, run.config, run.model_path
    if not os.path.exists(path):
        raise UserInputError(f"{path} not found: train a model into model_dir={model_dir} first")
    _check_archive(path)
    try:
        model = keras.models.load_model(path, safe_mode=True)
    except (ValueError, TypeError, OSError, zipfile.BadZipFile) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserInputError(f"{path}: cannot be loaded ({first_line}); {RESTORE}") from err
    if tuple(model.output_shape)[-1:] not in ((output_width(False),), (output_width(True),)):
        raise UserInputError(
            f"{path}: outputs {model.output_shape}, not (batch, {output_width(False)}) softmax (or "
            f"(batch, {output_width(True)}) with the findings); not a classifier of this project")
    trained, recorded = tuple(model.input_shape[1:3]), config.get("image_size")
    if recorded is not None and trained != (recorded, recorded):
        raise UserInputError(
            f"{path} takes {trained[0]}x{trained[1]} px images but {os.path.join(model_dir, CONFIG)} says "
            f"image_size {recorded}: the two files come from different runs; {RESTORE}"
        )
    return model
