"""What prediction checks before any model runs, without TensorFlow: `predict.py` calls it before
loading TensorFlow, so a wrong path or flag fails in a second, and `run_prediction` calls it too."""

from __future__ import annotations

import os
from typing import Any, Sequence

from contracts import manifest as manifest_lib
from contracts.errors import UserInputError, check_output_folder
from contracts.run_folder import load_run_config


def split_manifest(data_dir: str, split: str) -> tuple[dict[str, Any], int]:
    """Returns the shard folder's manifest and the record count of `split`, checking its shards.

    Raises:
      UserInputError: no manifest, no such split, a missing or out-of-folder shard.
    """
    try:
        manifest = manifest_lib.load_manifest(data_dir)
        info = manifest_lib.split_info(manifest, split, data_dir)
        manifest_lib.shard_paths(data_dir, split)
    except (FileNotFoundError, KeyError) as err:
        raise UserInputError(err.args[0] if err.args else str(err)) from err
    return manifest, int(info["records"])


def check_prediction_inputs(model_dirs: Sequence[str], data_dir: str, split: str, output: str,
                            report_dir: str | None) -> tuple[dict[str, Any], int, list[dict[str, Any]]]:
    """Checks everything a prediction run reads and where it writes, before the work starts.

    Returns:
      (manifest, records in `split`, each model folder's config.json).

    Raises:
      UserInputError: naming the flag or file and the fix.
    """
    if not model_dirs:
        raise UserInputError("no --model_dir given; pass the folder train.py wrote")
    check_output_folder(os.path.dirname(output), "output")
    if report_dir:
        check_output_folder(report_dir, "report_dir")
    manifest, expected = split_manifest(data_dir, split)
    return manifest, expected, [load_run_config(d) for d in model_dirs]
