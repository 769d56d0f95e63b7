"""What prediction and explanation read and write, checked once before any model runs."""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

from absl import logging

from contracts import run_folder, storage
from contracts.ensemble_file import Blended, blended_models
from contracts.errors import UserInputError, check_no_overwrite, check_output_file, check_output_folder
from contracts.manifest import MANIFEST, ShardFolder, Split
from contracts.prediction_files import sidecar_path
from contracts.run_folder import RunFolder
from evaluation import studies


@dataclasses.dataclass(frozen=True)
class Inputs:
    """A checked prediction or explanation: the shards, the split, the runs (an ensemble's members)."""

    shards: ShardFolder
    split: Split
    runs: tuple[RunFolder, ...]
    members: tuple[Blended, ...] = ()
    threshold: float | None = None  # explanation: the ensemble file's, else None


def open_split(data_dir: str, split: str | None) -> tuple[ShardFolder, Split]:
    """The shard folder and its split `split`, or when None the one the manifest makes unambiguous."""
    shards = ShardFolder.open(data_dir)
    if split is None:
        split, names = shards.default_split(), ", ".join(shards.split_names) or "none"
        if split is None:
            raise UserInputError(f"{shards.manifest_path} has splits {names}; pass --split to name the one "
                                 "to read")
        logging.info("--split not given: reading split %r of %s (its splits: %s)", split, data_dir, names)
    return shards, shards.split(split)


def _check_image_size(shards: ShardFolder, runs: Sequence[RunFolder]) -> None:
    for run in runs:
        escaped = run.path.replace("{", "{{").replace("}", "}}")
        shards.check_image_size(run.image_size, escaped + " was trained at {asked} px: rebuild the shards "
                                "with --image_size={asked}")


def output_paths(output: str, names: Sequence[str], *, per_model: bool = False) -> dict[str, str]:
    """Each model's CSV: `output` itself for one model, else (or with `per_model`) `<stem>.<name>.csv`."""
    if not output.endswith(".csv"):
        raise UserInputError(f"--output={output} must name a .csv file, e.g. predictions.csv")
    if len(names) == 1 and not per_model:
        return {names[0]: output}
    stem = os.path.splitext(output)[0]
    return {name: f"{stem}.{name}.csv" for name in names}


def model_names(runs: Sequence[RunFolder]) -> list[str]:
    """Each model's name in files and reports: its backbone, with its folder's name when two share one."""
    backbones = [run.backbone for run in runs]
    names = [b if backbones.count(b) == 1 else f"{b}.{os.path.basename(os.path.normpath(run.path))}"
             for b, run in zip(backbones, runs)]
    if len(set(names)) != len(names):
        raise UserInputError(f"--model_dir values {[run.path for run in runs]} give clashing output names "
                             f"{names}; predict them in separate calls with different --output")
    return names


def check_prediction_outputs(runs: Sequence[RunFolder], output: str, *, per_model: bool = False,
                             data_dir: str | None = None, labels_csv: str | None = None,
                             other_labels_csv: str | None = None, ensemble: str | None = None) -> None:
    """Refuses an --output whose files (CSVs, sidecars, .npy, a blend) would replace a file the run reads."""
    csvs = list(output_paths(output, model_names(runs), per_model=per_model).values())
    writes = [p for csv in csvs for p in (csv, sidecar_path(csv), os.path.splitext(csv)[0] + ".npy",
                                           studies.studies_path(csv))]
    writes += [output, sidecar_path(output), studies.studies_path(output)] if per_model else []
    reads = [(f"--model_dir={run.path} holds (train.py's {name})", os.path.join(run.path, name))
             for run in runs for name in run_folder.RUN_FILES]
    if data_dir is not None:
        reads.append((f"--data_dir={data_dir} holds (its manifest)", storage.join(data_dir, MANIFEST)))
    reads += [(f"--{flag} reads", path) for flag, path in (("labels_csv", labels_csv),
                                                           ("other_labels_csv", other_labels_csv),
                                                           ("ensemble", ensemble)) if path]
    check_no_overwrite([("output", output, path) for path in writes], reads)


def _runs(model_dirs: Sequence[str]) -> tuple[RunFolder, ...]:
    if not model_dirs:
        raise UserInputError("no --model_dir given; pass the folder train.py wrote")
    return tuple(RunFolder.open(d) for d in model_dirs)


def open_prediction_inputs(model_dirs: Sequence[str], data_dir: str, split: str | None, output: str,
                           report_dir: str | None, *, per_model: bool = False,
                           other_labels_csv: str | None = None, ensemble: str | None = None) -> Inputs:
    """Opens and checks everything a prediction run reads, and where it writes, before the work."""
    runs = _runs(model_dirs)
    check_output_file(output, "output")
    if report_dir:
        check_output_folder(report_dir, "report_dir")
    shards, chosen = open_split(data_dir, split)
    check_prediction_outputs(runs, output, per_model=per_model, data_dir=data_dir,
                             other_labels_csv=other_labels_csv, ensemble=ensemble)
    _check_image_size(shards, runs)
    return Inputs(shards, chosen, runs)


def explained_models(model_dirs: Sequence[str], ensemble: str | None) -> tuple[list[Blended], float | None]:
    """The explained models in blend order and the ensemble file's threshold (None without one)."""
    members, loaded = blended_models(model_dirs, ensemble)
    return members, None if loaded is None else loaded.threshold


def open_explain_inputs(model_dirs: Sequence[str], ensemble: str | None, data_dir: str, split: str | None,
                        output_dir: str) -> Inputs:
    """Opens and checks what explain.py reads, and where it writes, before any model loads."""
    members, threshold = explained_models(model_dirs, ensemble)
    check_output_folder(output_dir, "output_dir")
    sizes = sorted({m.run.image_size for m in members})
    if len(sizes) > 1:
        raise UserInputError(f"the --model_dir models were trained at {sizes} px; an ensemble's maps are "
                             "averaged pixel by pixel, so explain models of one image size together")
    shards, chosen = open_split(data_dir, split)
    runs = tuple(m.run for m in members)
    _check_image_size(shards, runs)
    return Inputs(shards, chosen, runs, tuple(members), threshold)
