"""Offline builder: NIH metadata + images → cropped, resized TFRecord shards and `manifest.json`.

    python preprocess/build_tfrecords.py --data_entry_csv=Data_Entry_2017_v2020.csv \
        --bbox_csv=BBox_List_2017.csv --image_dir=NIH/ --output_dir=shards/

Each shard is one work unit for a process pool. Output depends only on the inputs and the
record-shaping flags (never on `--workers`), shards appear atomically, and a rerun after a kill
writes only the shards still missing. This module imports no TensorFlow at the top, so the
spawned workers start fast; only the parent loads the shard writer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import shutil
import sys
import threading
import time

if __package__ in (None, ""):  # run as `python preprocess/build_tfrecords.py` from the repo root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if sys.path[1] == os.path.dirname(os.path.abspath(__file__)):
        del sys.path[1]  # the script's own folder would shadow top-level names

from absl import app, logging  # noqa: E402
from tqdm import tqdm  # noqa: E402

import flags as project_flags  # noqa: E402
from pipeline import labels  # noqa: E402
from pipeline import manifest as manifest_lib  # noqa: E402
from preprocess import images, nih_metadata, sources as sources_lib, splits as splits_lib  # noqa: E402

STATE_DIR = ".build"  # bookkeeping for resumable builds, hidden inside --output_dir
TARGET_SHARD_BYTES = 128 * 1024 * 1024
MIN_SHARDS = 16  # enough files to interleave and to split between input pipelines
# Encoded bytes per stored pixel, measured on the NIH sample at 224 px (PNG level 1: 0.56).
BYTES_PER_PIXEL = {"png": 0.6, "jpeg": 0.3}
NOT_RECORD_SHAPING = ("workers", "max_skip_fraction", "overwrite")


@dataclasses.dataclass(frozen=True)
class BuildConfig:
    """Every flag of the builder (see flags.define_build_flags for their meaning)."""

    image_dir: str
    output_dir: str
    data_entry_csv: str | None = None
    bbox_csv: str | None = None
    split: str = "grouped"
    val_fraction: float = 0.2
    test_fraction: float = 0.0
    train_val_list: str | None = None
    test_list: str | None = None
    crop: str = "bbox"
    image_size: int = 224
    image_format: str = "png"
    jpeg_quality: int = 95
    num_shards: int | None = None
    workers: int | None = None
    seed: int = 0
    max_skip_fraction: float = 0.01
    max_image_pixels: int = images.MAX_IMAGE_PIXELS
    overwrite: bool = False

    def shaping(self) -> dict:
        """The flags that change the records written (a rerun must agree on all of them)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in NOT_RECORD_SHAPING}


@dataclasses.dataclass(frozen=True)
class WorkItem:
    name: str
    path: str
    box: tuple[float, float, float, float] | None  # the crop box (1024 frame), None: no crop


@dataclasses.dataclass(frozen=True)
class WorkUnit:
    """One shard's worth of images for one worker process."""

    shard: str
    items: tuple[WorkItem, ...]
    image_size: int
    image_format: str
    jpeg_quality: int
    max_pixels: int


@dataclasses.dataclass
class BuildResult:
    manifest: dict
    ok: bool
    summary: str


class BuildError(Exception):
    """The build cannot start; the message names the input and the fix."""


_progress = None  # set in each worker: reports processed image counts to the parent


def _init_worker(queue) -> None:
    global _progress
    _progress = queue.put


def process_unit(unit: WorkUnit) -> list[tuple]:
    """Processes a shard's images; returns (name, encoded | None, crop_applied, warning, error) each."""
    results, pending = [], 0
    for item in unit.items:
        try:
            with open(item.path, "rb") as f:
                data = f.read()
            out = images.process(data, box=item.box, image_size=unit.image_size,
                                 image_format=unit.image_format, jpeg_quality=unit.jpeg_quality,
                                 max_pixels=unit.max_pixels)
            results.append((item.name, out.encoded, out.crop_applied, out.warning, None))
        except (images.ImageError, OSError) as err:
            results.append((item.name, None, False, None, str(err)))
        pending += 1
        if _progress is not None and pending == 8:
            _progress(pending)
            pending = 0
    if _progress is not None and pending:
        _progress(pending)
    return results


def _gather(config: BuildConfig) -> sources_lib.Sources:
    if config.split == "unlabeled":
        return sources_lib.from_folder(config.image_dir)
    if not config.data_entry_csv:
        raise BuildError(f"--split={config.split} needs --data_entry_csv (only --split=unlabeled works without)")
    if not os.path.isfile(config.data_entry_csv):
        raise BuildError(f"--data_entry_csv={config.data_entry_csv} does not exist")
    try:
        return sources_lib.from_data_entry(config.data_entry_csv, config.image_dir)
    except ValueError as err:
        raise BuildError(str(err)) from None


def _boxes(config: BuildConfig, found: sources_lib.Sources) -> tuple[dict, list[dict]]:
    """image -> union box (1024 frame) for images with valid boxes, plus warnings."""
    if not config.bbox_csv:
        return {}, []
    if not os.path.isfile(config.bbox_csv):
        raise BuildError(f"--bbox_csv={config.bbox_csv} does not exist")
    raw, problems = nih_metadata.read_bbox_csv(config.bbox_csv)
    names = {s.entry.image for s in found.sources}
    warnings = [p.as_dict() for p in problems if p.image in names]
    unions = {}
    for name, boxes in raw.items():
        if name not in names:
            continue
        try:
            unions[name] = nih_metadata.union_box(boxes)
        except ValueError as err:
            warnings.append({"image": name, "reason": f"{err} in --bbox_csv; written uncropped"})
    return unions, warnings


def _assign(config: BuildConfig, found: sources_lib.Sources) -> tuple[dict[str, list], list]:
    """split -> sources, plus sources skipped by the split rules."""
    by_name = {s.entry.image: s for s in found.sources}
    skipped = []
    if config.split in ("all", "unlabeled"):
        name = "all" if config.split == "all" else "eval"
        return {name: list(found.sources)}, skipped
    if not 0 <= config.val_fraction < 1 or not 0 <= config.test_fraction < 1:
        raise BuildError("--val_fraction and --test_fraction must be in [0, 1)")
    if config.split == "grouped":
        fractions = {"train": 1 - config.val_fraction - config.test_fraction,
                     "val": config.val_fraction, "test": config.test_fraction}
        if fractions["train"] <= 0:
            raise BuildError("--val_fraction + --test_fraction must leave a share for train")
        items = [(n, s.entry.patient_id, s.entry.label) for n, s in by_name.items()]
        assignment = splits_lib.grouped_split(items, fractions, config.seed)
    else:
        assignment, skipped = _official_assignment(config, by_name)
    out: dict[str, list] = {s: [] for s in ("train", "val", "test")}
    for name, split in assignment.items():
        out[split].append(by_name[name])
    return {s: v for s, v in out.items() if v}, skipped


def _official_assignment(config: BuildConfig, by_name: dict) -> tuple[dict[str, str], list]:
    if not (config.train_val_list and config.test_list):
        raise BuildError("--split=official needs --train_val_list and --test_list (NIH's train_val_list.txt, test_list.txt)")
    for path in (config.train_val_list, config.test_list):
        if not os.path.isfile(path):
            raise BuildError(f"split list {path} does not exist")
    train_val = set(nih_metadata.read_name_list(config.train_val_list))
    test = set(nih_metadata.read_name_list(config.test_list))
    assignment, skipped, pool = {}, [], []
    for name, source in by_name.items():
        if name in train_val and name in test:
            skipped.append(nih_metadata.Skip(name, "listed in both --train_val_list and --test_list"))
        elif name in test:
            assignment[name] = "test"
        elif name in train_val:
            pool.append((name, source.entry.patient_id, source.entry.label))
        else:
            skipped.append(nih_metadata.Skip(name, "in neither --train_val_list nor --test_list"))
    fractions = {"train": 1 - config.val_fraction, "val": config.val_fraction}
    assignment.update(splits_lib.grouped_split(pool, fractions, config.seed))
    return assignment, skipped


def shard_counts(split_sizes: dict[str, int], config: BuildConfig) -> dict[str, int]:
    """Shards per split: the largest split gets `--num_shards` (or the ~128 MB default), others
    proportionally, each at least one and at most one per record."""
    largest = max(split_sizes.values())
    if config.num_shards:
        top = config.num_shards
    else:
        record_bytes = BYTES_PER_PIXEL[config.image_format] * config.image_size**2 + 200
        top = max(math.ceil(largest * record_bytes / TARGET_SHARD_BYTES), min(MIN_SHARDS, largest))
    return {split: max(1, min(n, round(top * n / largest))) for split, n in split_sizes.items()}


def plan_units(config: BuildConfig, assigned: dict[str, list], boxes: dict) -> tuple[list, dict]:
    """Returns (units, shard -> split) in a deterministic order that ignores `--workers`."""
    counts = shard_counts({s: len(v) for s, v in assigned.items()}, config)
    units, shard_split = [], {}
    for split in sorted(assigned):
        by_name = {s.entry.image: s for s in assigned[split]}
        order = splits_lib.ordered_by_seed(by_name, config.seed)
        n = counts[split]
        for index in range(n):
            chunk = order[index * len(order) // n:(index + 1) * len(order) // n]
            name = manifest_lib.shard_name(split, index, n)
            items = tuple(
                WorkItem(image, by_name[image].path, boxes.get(image) if config.crop == "bbox" else None)
                for image in chunk
            )
            units.append(WorkUnit(name, items, config.image_size, config.image_format,
                                  config.jpeg_quality, config.max_image_pixels))
            shard_split[name] = split
    return units, shard_split


def _plan_digest(units: list[WorkUnit], by_name: dict, boxes: dict) -> str:
    digest = hashlib.sha256()
    for unit in units:
        for item in unit.items:
            entry = by_name[item.name].entry
            row = [unit.shard, entry.image, entry.label, entry.findings, entry.patient_id,
                   entry.view_position, boxes.get(item.name)]
            digest.update(json.dumps(row).encode())
    return digest.hexdigest()


def _write_json(path: str, value) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def _is_ours(name: str) -> bool:
    return name.endswith(".tfrecord") or name in (manifest_lib.MANIFEST, "absent.txt", STATE_DIR)


def prepare_output(config: BuildConfig, digest: str) -> None:
    """Makes `--output_dir` ready, keeping a matching earlier build's finished shards.

    Raises:
      BuildError: the folder holds a build made with other record-shaping flags or inputs.
    """
    state_dir = os.path.join(config.output_dir, STATE_DIR)
    os.makedirs(config.output_dir, exist_ok=True)
    stamp = {"config": config.shaping(), "plan": digest}
    state_file = os.path.join(state_dir, "build.json")
    previous = None
    if os.path.exists(state_file):
        with open(state_file) as f:
            previous = json.load(f)
    ours = [n for n in os.listdir(config.output_dir) if _is_ours(n)]
    if previous != stamp and ours:
        if not config.overwrite:
            differing = sorted(k for k in stamp["config"]
                               if previous and previous["config"].get(k) != stamp["config"][k])
            why = (f"flags differ: {', '.join(differing)}" if differing
                   else "the inputs (CSV rows, labels, boxes or files) differ" if previous
                   else "it holds shards or a manifest from another build")
            raise BuildError(
                f"--output_dir={config.output_dir} is not empty and {why}; "
                "pass --overwrite to replace that build, or choose another folder"
            )
        for name in ours:
            path = os.path.join(config.output_dir, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    os.makedirs(os.path.join(state_dir, "shards"), exist_ok=True)
    _write_json(state_file, stamp)


def _shard_state_path(config: BuildConfig, shard: str) -> str:
    return os.path.join(config.output_dir, STATE_DIR, "shards", f"{shard}.json")


def _is_done(config: BuildConfig, shard: str) -> bool:
    # The state file is written before the shard's rename, so a final-named shard implies both.
    return os.path.exists(os.path.join(config.output_dir, shard)) and os.path.exists(
        _shard_state_path(config, shard))


def _finish_unit(config, unit, results, by_name, boxes) -> dict:
    """Writes one processed shard and its bookkeeping; returns the shard's state."""
    from preprocess import shard_writer  # TensorFlow is loaded by the parent only

    serialized, state = [], {"records": 0, "normal": 0, "abnormal": 0, "patients": [],
                             "skipped": [], "warnings": []}
    patients = set()
    for name, encoded, crop_applied, warning, error in results:
        if error is not None:
            state["skipped"].append({"image": name, "reason": f"{error}; skipped"})
            continue
        source = by_name[name]
        serialized.append(shard_writer.example_for(source, encoded, crop_applied, boxes.get(name), config))
        if warning:
            state["warnings"].append({"image": name, "reason": warning})
        state["records"] += 1
        state["normal"] += source.entry.label == labels.LABEL_NORMAL
        state["abnormal"] += source.entry.label == labels.LABEL_ABNORMAL
        if source.entry.patient_id:
            patients.add(source.entry.patient_id)
    state["patients"] = sorted(patients)
    _write_json(_shard_state_path(config, unit.shard), state)
    shard_writer.write_atomically(os.path.join(config.output_dir, unit.shard),
                                  os.path.join(config.output_dir, STATE_DIR, "tmp"), serialized)
    return state


def run_units(config: BuildConfig, pending: list[WorkUnit], finish) -> None:
    """Processes `pending` units (a process pool, or inline for one worker) and calls `finish`."""
    workers = config.workers or os.cpu_count() or 1
    total = sum(len(u.items) for u in pending)
    with tqdm(total=total, unit="img", desc="build", smoothing=0.1, file=sys.stderr) as bar:
        if workers == 1 or len(pending) <= 1:
            global _progress
            _progress = bar.update
            try:
                for unit in pending:
                    finish(unit, process_unit(unit))
            finally:
                _progress = None
            return
        # spawn, not fork: the parent holds TensorFlow's threads, which a fork would not copy.
        context = multiprocessing.get_context("spawn")
        queue = context.Queue()
        ticker = threading.Thread(target=_drain, args=(queue, bar), daemon=True)
        ticker.start()
        units = {u.shard: u for u in pending}
        try:
            with context.Pool(min(workers, len(pending)), _init_worker, (queue,)) as pool:
                for shard, results in pool.imap_unordered(_process_keyed, pending):
                    finish(units[shard], results)
        finally:
            queue.put(None)
            ticker.join()


def _process_keyed(unit: WorkUnit) -> tuple[str, list[tuple]]:
    return unit.shard, process_unit(unit)


def _drain(queue, bar) -> None:
    while (count := queue.get()) is not None:
        bar.update(count)


def build(config: BuildConfig) -> BuildResult:
    """Builds (or completes) the shard folder described by `config`.

    Returns:
      The manifest, whether the skip fraction is within `--max_skip_fraction`, and a summary line.

    Raises:
      BuildError: the inputs or the output folder do not allow a build (message says the fix).
    """
    if not config.image_dir or not os.path.isdir(config.image_dir):
        raise BuildError(f"--image_dir={config.image_dir} is not a folder")
    if not config.output_dir:
        raise BuildError("--output_dir is required")
    found = _gather(config)
    boxes, warnings = _boxes(config, found)
    assigned, split_skips = _assign(config, found)
    skipped = [s.as_dict() for s in found.skipped + split_skips]
    if not assigned:
        raise BuildError(
            f"no usable images: {len(found.absent)} CSV rows have no file under "
            f"--image_dir={config.image_dir}, {len(skipped)} skipped; check the folder and the CSV"
        )
    by_name = {s.entry.image: s for s in found.sources}
    units, shard_split = plan_units(config, assigned, boxes)
    prepare_output(config, _plan_digest(units, by_name, boxes))
    pending = [u for u in units if not _is_done(config, u.shard)]
    if len(pending) < len(units):
        logging.info("resuming: %d of %d shards already written", len(units) - len(pending), len(units))
    start = time.time()
    run_units(config, pending, lambda unit, results: _finish_unit(config, unit, results, by_name, boxes))
    elapsed = time.time() - start
    manifest = _manifest(config, units, shard_split, found, skipped, warnings, by_name)
    return _conclude(config, manifest, found, sum(len(u.items) for u in pending), elapsed)


def _manifest(config, units, shard_split, found, skipped, warnings, by_name) -> dict:
    split_info: dict[str, dict] = {}
    patients_by_split: dict[str, set] = {}
    for unit in units:
        with open(_shard_state_path(config, unit.shard)) as f:
            state = json.load(f)
        split = shard_split[unit.shard]
        info = split_info.setdefault(split, {"records": 0, "normal": 0, "abnormal": 0, "shards": []})
        for key in ("records", "normal", "abnormal"):
            info[key] += state[key]
        info["shards"].append(unit.shard)
        patients_by_split.setdefault(split, set()).update(state["patients"])
        skipped = skipped + state["skipped"]
        warnings = warnings + state["warnings"]
    for split, info in split_info.items():
        info["patients"] = len(patients_by_split[split])
    memberships: dict[str, int] = {}
    for members in patients_by_split.values():
        for patient in members:
            memberships[patient] = memberships.get(patient, 0) + 1
    return {
        "config": dataclasses.asdict(config),
        "splits": split_info,
        "patient_overlap": sum(count > 1 for count in memberships.values()),
        "skipped": sorted(skipped, key=lambda s: s["image"]),
        "warnings": sorted(warnings, key=lambda s: s["image"]),
        "absent": len(found.absent),
        "unlisted": found.unlisted,
        "present_rows": found.present_rows,
        "csv_rows": found.csv_rows,
        "identical_duplicates": found.identical_duplicates,
    }


def _conclude(config, manifest, found, processed, elapsed) -> BuildResult:
    _write_json(os.path.join(config.output_dir, manifest_lib.MANIFEST), manifest)
    with open(os.path.join(config.output_dir, "absent.txt"), "w") as f:
        f.writelines(f"{name}\n" for name in found.absent)
    splits = manifest["splits"]
    records = sum(s["records"] for s in splits.values())
    n_skipped = len(manifest["skipped"])
    fraction = n_skipped / found.present_rows if found.present_rows else math.inf
    ok = fraction <= config.max_skip_fraction and records > 0
    rate = processed / elapsed if elapsed > 0 and processed else 0.0
    parts = ", ".join(f"{s} {v['records']}" for s, v in sorted(splits.items()))
    summary = (
        f"{'built' if ok else 'FAILED'}: {records} records ({parts}) in "
        f"{sum(len(v['shards']) for v in splits.values())} shards at {rate:.0f} img/s; "
        f"skipped {n_skipped} of {found.present_rows} present rows ({100 * fraction:.2f}%"
        f"{'' if ok else f' > --max_skip_fraction={config.max_skip_fraction}'}; reasons in manifest.json 'skipped'); "
        f"{manifest['absent']} listed but absent (absent.txt); {manifest['unlisted']} unlisted files; "
        f"{len(manifest['warnings'])} warnings; patient overlap {manifest['patient_overlap']}"
    )
    return BuildResult(manifest, ok, summary)


def config_from_flags(values) -> BuildConfig:
    """Builds the frozen config from parsed absl flag values."""
    names = [f.name for f in dataclasses.fields(BuildConfig)]
    return BuildConfig(**{name: values[name].value for name in names})


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = config_from_flags(project_flags.flags.FLAGS)
    logging.info("build config: %s", json.dumps(dataclasses.asdict(config)))
    try:
        result = build(config)
    except (BuildError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(result.summary)
    return 0 if result.ok else 1


if __name__ == "__main__":
    project_flags.define_build_flags()
    app.run(main)
