"""What prediction checks before any model runs, without TensorFlow: `predict.py` calls it before
loading TensorFlow, so a wrong path or flag fails in a second, and `run_prediction` calls it too."""

from __future__ import annotations

import os
from typing import Any, Sequence

from contracts import manifest as manifest_lib
from contracts.errors import UserInputError, check_output_folder
from contracts.run_folder import load_run_config, run_temperature


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


def check_explained_models(model_dirs: Sequence[str],
                           ensemble: str | None) -> list[tuple[str, str, float, float]]:
    """Returns the explained models as (model_dir, name, weight, temperature): the ensemble file's
    members in blend order, or the one --model_dir (named by its backbone, weight 1, its run's own
    temperature or 1).

    Raises:
      UserInputError: no model, several without an ensemble file, or a file that does not match them.
    """
    from contracts import ensemble_file

    if not model_dirs:
        raise UserInputError("no --model_dir given; pass the folder train.py wrote")
    if ensemble is not None:
        pairs = ensemble_file.match_members(ensemble_file.load_ensemble(ensemble), model_dirs)
        return [(model_dir, member.name, member.weight, member.temperature) for member, model_dir in pairs]
    if len(model_dirs) > 1:
        raise UserInputError(f"{len(model_dirs)} --model_dir given without --ensemble; pass the "
                             ".probabilities.json ensemble.py wrote (its weights blend the maps), or one model")
    backbone = load_run_config(model_dirs[0])["backbone"]
    return [(model_dirs[0], backbone, 1.0, run_temperature(model_dirs[0]) or 1.0)]


def check_explain_inputs(model_dirs: Sequence[str], ensemble: str | None, data_dir: str, split: str,
                         output_dir: str) -> tuple[dict[str, Any], int, int]:
    """Checks what explain.py reads and where it writes, before any model loads.

    Returns:
      (manifest, records in `split`, the models' image size).

    Raises:
      UserInputError: no model, several without an ensemble file, an ensemble file that does not
        match the folders, models of different image sizes or of another size than the shards, an
        unusable output folder, or a bad shard folder or split.
    """
    check_explained_models(model_dirs, ensemble)
    check_output_folder(output_dir, "output_dir")
    sizes = sorted({int(load_run_config(d)["image_size"]) for d in model_dirs})
    if len(sizes) > 1:
        raise UserInputError(f"the --model_dir models were trained at {sizes} px; an ensemble's maps are "
                             "averaged pixel by pixel, so explain models of one image size together")
    manifest, expected = split_manifest(data_dir, split)
    try:
        manifest_lib.check_image_size(manifest, sizes[0], data_dir,
                                      "the models were trained at {asked} px: rebuild the shards at that size")
    except ValueError as err:
        raise UserInputError(str(err)) from err
    return manifest, expected, sizes[0]
