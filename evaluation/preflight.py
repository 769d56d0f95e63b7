"""What prediction checks before any model runs, without TensorFlow: `predict.py` calls it before
loading TensorFlow, so a wrong path or flag fails in a second, and `run_prediction` calls it too."""

from __future__ import annotations

import os
from typing import Any, Sequence

from absl import logging

from contracts import manifest as manifest_lib
from contracts import run_folder
from contracts.errors import UserInputError, check_no_overwrite, check_output_file, check_output_folder
from contracts.prediction_files import sidecar_path
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


def resolve_split(data_dir: str, split: str | None) -> str:
    """Returns `split`, or when it is None the split the manifest makes unambiguous
    (`contracts.manifest.default_split`: test, else the only one besides train), saying which.

    Raises:
      UserInputError: no manifest, or several splits to choose from (the message lists them).
    """
    if split is not None:
        return split
    try:
        manifest = manifest_lib.load_manifest(data_dir)
    except FileNotFoundError as err:
        raise UserInputError(err.args[0]) from err
    chosen = manifest_lib.default_split(manifest, data_dir)
    logging.info("--split not given: reading split %r of %s (its splits: %s)", chosen, data_dir,
                 ", ".join(sorted(manifest["splits"])))
    return chosen


def output_paths(output: str, names: Sequence[str], *, per_model: bool = False) -> dict[str, str]:
    """Returns each model's CSV path: `output` itself for one model, else `<output stem>.<name>.csv`
    (always the latter with `per_model`, when `output` holds something else, e.g. a blend).

    Raises:
      UserInputError: `output` does not end in .csv.
    """
    if not output.endswith(".csv"):
        raise UserInputError(f"--output={output} must name a .csv file, e.g. predictions.csv")
    if len(names) == 1 and not per_model:
        return {names[0]: output}
    stem = os.path.splitext(output)[0]
    return {name: f"{stem}.{name}.csv" for name in names}


def model_names(model_dirs: Sequence[str], configs: Sequence[dict[str, Any]]) -> list[str]:
    """Returns each model's name in file names and reports: its backbone, with the folder's name
    when two models share a backbone.

    Raises:
      UserInputError: two models that would still share a name.
    """
    backbones = [c["backbone"] for c in configs]
    names = [b if backbones.count(b) == 1 else f"{b}.{os.path.basename(os.path.normpath(d))}"
             for b, d in zip(backbones, model_dirs)]
    if len(set(names)) != len(names):
        raise UserInputError(
            f"--model_dir values {list(model_dirs)} give clashing output names {names}; "
            "predict them in separate calls with different --output"
        )
    return names


def check_prediction_outputs(model_dirs: Sequence[str], configs: Sequence[dict[str, Any]], output: str, *,
                             per_model: bool = False, data_dir: str | None = None, labels_csv: str | None = None,
                             other_labels_csv: str | None = None, ensemble: str | None = None) -> None:
    """Refuses an --output whose files (each model's CSV, sidecar and .npy; with `per_model`, the
    blend and its sidecar at `output`) would replace a file the run reads: a model folder's own
    files, the shard manifest, a labels CSV or the ensemble file.

    Raises:
      UserInputError: naming --output, the file and the fix (see `check_no_overwrite`).
    """
    csvs = list(output_paths(output, model_names(model_dirs, configs), per_model=per_model).values())
    writes = [p for csv in csvs for p in (csv, sidecar_path(csv), os.path.splitext(csv)[0] + ".npy")]
    writes += [output, sidecar_path(output)] if per_model else []
    reads = [(f"--model_dir={d} holds (train.py's {name})", os.path.join(d, name))
             for d in model_dirs for name in run_folder.RUN_FILES]
    if data_dir is not None:
        reads.append((f"--data_dir={data_dir} holds (its manifest)", os.path.join(data_dir, manifest_lib.MANIFEST)))
    reads += [("--labels_csv reads", labels_csv)] if labels_csv else []
    reads += [("--other_labels_csv reads", other_labels_csv)] if other_labels_csv else []
    reads += [("--ensemble reads", ensemble)] if ensemble else []
    check_no_overwrite([("output", output, path) for path in writes], reads)


def check_prediction_inputs(model_dirs: Sequence[str], data_dir: str, split: str, output: str,
                            report_dir: str | None, *, per_model: bool = False, other_labels_csv: str | None = None,
                            ensemble: str | None = None) -> tuple[dict[str, Any], int, list[dict[str, Any]]]:
    """Checks everything a prediction run reads and where it writes, before the work starts.

    Returns:
      (manifest, records in `split`, each model folder's config.json).

    Raises:
      UserInputError: naming the flag or file and the fix; among them an output that would
        replace an input (`check_prediction_outputs`).
    """
    if not model_dirs:
        raise UserInputError("no --model_dir given; pass the folder train.py wrote")
    check_output_file(output, "output")
    if report_dir:
        check_output_folder(report_dir, "report_dir")
    manifest, expected = split_manifest(data_dir, split)
    configs = [load_run_config(d) for d in model_dirs]
    check_prediction_outputs(model_dirs, configs, output, per_model=per_model, data_dir=data_dir,
                             other_labels_csv=other_labels_csv, ensemble=ensemble)
    return manifest, expected, configs


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
