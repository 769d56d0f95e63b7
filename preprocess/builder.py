"""The builder: work units through a process pool → shards written atomically → `manifest.json`.

Each shard is one work unit. Output depends only on the inputs and the record-shaping flags (never
on `--workers` or `--runner`), shards appear atomically, and a rerun after a kill writes only the
shards still missing. This module imports no TensorFlow at the top, so the spawned workers start
fast; only the parent loads the shard writer.

`--runner=beam` swaps only the engine that runs the units (`preprocess/beam_runner.py`): the plan,
`process_item`, `finish_unit`, the resume state and the manifest are these same functions. Paths go
through `contracts.storage`, so `--image_dir` and `--output_dir` may be bucket URLs (`gs://...`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import os
import sys
import threading
import time
from typing import Collection

from absl import logging
from tqdm import tqdm

from contracts import labels, storage
from contracts import manifest as manifest_lib
from contracts.atomic import TEMP_PREFIX, write_json, write_text
from contracts.errors import UserInputError
from preprocess import images
from preprocess.config import BBOX_SHORTCUT, RENAMED_FIELDS, RUNNERS, BuildConfig
from preprocess.plan import WorkItem, WorkUnit, gather_and_assign, plan_digest, plan_units

STATE_DIR = ".build"  # bookkeeping for resumable builds, hidden inside --output_dir
ABSENT = "absent.txt"
STATE_BYTES = "bytes"  # in a shard's state file: its size as written (manifest_lib.SHARD_BYTES collects them)


@dataclasses.dataclass
class BuildResult:
    manifest: dict
    ok: bool
    summary: str


_progress = None  # set in each worker: reports processed image counts to the parent


def _init_worker(queue) -> None:
    global _progress
    _progress = queue.put


def process_item(item: WorkItem, unit: WorkUnit) -> tuple:
    """Reads and processes one image with `unit`'s settings (its items are not used).

    Returns:
      (name, encoded | None, crop_applied, warning, error): `error` says why the image is skipped.
    """
    try:
        out = images.process(storage.read_bytes(item.path), box=item.box, image_size=unit.image_size,
                             image_format=unit.image_format, jpeg_quality=unit.jpeg_quality,
                             max_pixels=unit.max_pixels)
        return item.name, out.encoded, out.crop_applied, out.warning, None
    except (images.ImageError, OSError) as err:
        return item.name, None, False, None, str(err)


def process_unit(unit: WorkUnit) -> list[tuple]:
    """Processes a shard's images; returns `process_item`'s tuple for each, in the unit's order."""
    results, pending = [], 0
    for item in unit.items:
        results.append(process_item(item, unit))
        pending += 1
        if _progress is not None and pending == 8:
            _progress(pending)
            pending = 0
    if _progress is not None and pending:
        _progress(pending)
    return results


def _is_ours(name: str) -> bool:
    return (name.endswith(manifest_lib.SHARD_SUFFIX) or name.startswith(TEMP_PREFIX)
            or name in (manifest_lib.MANIFEST, ABSENT, STATE_DIR))


def prepare_output(config: BuildConfig, digest: str) -> None:
    """Makes `--output_dir` ready, keeping a matching earlier build's finished shards.

    Raises:
      UserInputError: the folder holds a build made with other record-shaping flags or inputs.
    """
    state_dir = storage.join(config.output_dir, STATE_DIR)
    storage.makedirs(config.output_dir)
    stamp = {"config": config.shaping(), "plan": digest, "schema_version": manifest_lib.SCHEMA_VERSION}
    state_file = storage.join(state_dir, "build.json")
    previous = None
    if storage.exists(state_file):
        previous = json.loads(storage.read_bytes(state_file))
        # Flags that no longer shape records (output_dir, once) are not compared with older stamps.
        recorded = {RENAMED_FIELDS.get(k, k): v for k, v in previous.get("config", {}).items()}
        previous["config"] = {k: v for k, v in recorded.items() if k in stamp["config"]}
    ours = [n for n in storage.listdir(config.output_dir) if _is_ours(n)]
    # The same flags, records of an older format: the command is the same, its shards are rebuilt.
    outdated = bool(previous) and previous.get("schema_version") != manifest_lib.SCHEMA_VERSION \
        and previous.get("config") == stamp["config"]
    if previous != stamp and ours:
        if outdated:
            logging.warning("%s holds records of an older format (schema %s); rebuilding them as schema %d",
                            config.output_dir, previous.get("schema_version", "unrecorded"), manifest_lib.SCHEMA_VERSION)
        elif not config.overwrite:
            differing = sorted(k for k in stamp["config"]
                               if previous and previous["config"].get(k) != stamp["config"][k])
            keep = " ".join(_as_flag(k, previous["config"].get(k)) for k in differing)
            why = (f"flags differ: {', '.join(differing)}; pass {keep} to complete that build," if differing
                   else "the inputs (CSV rows, labels, boxes or files) differ; pass" if previous
                   else "it holds shards or a manifest from another build; pass")
            raise UserInputError(
                f"--output_dir={config.output_dir} is not empty and {why} "
                "--overwrite to replace it, or choose another folder"
            )
        for name in ours:
            path = storage.join(config.output_dir, name)
            storage.rmtree(path) if storage.isdir(path) else storage.remove(path)
    for name in storage.listdir(config.output_dir):
        if name.startswith(TEMP_PREFIX):  # left by a killed build; never a finished file
            storage.remove(storage.join(config.output_dir, name))
    storage.makedirs(storage.join(state_dir, "shards"))
    write_json(state_file, stamp)


def _as_flag(name: str, value) -> str:
    """The command-line form that gives flag `name` the value `value` (None: leave the flag out)."""
    if value is None:
        return f"no --{name}"
    if isinstance(value, bool):
        return f"--{'' if value else 'no'}{name}"
    return f"--{name}={value}"


def recorded_shaping(output_dir: str) -> dict | None:
    """The record-shaping flags of the build recorded in `output_dir`; None when it holds none."""
    state_file = storage.join(output_dir, STATE_DIR, "build.json")
    if not storage.exists(state_file):
        return None
    recorded = json.loads(storage.read_bytes(state_file)).get("config", {})
    return {RENAMED_FIELDS.get(k, k): v for k, v in recorded.items()}  # older builds said `split`


def keep_recorded(config: BuildConfig, given: Collection[str]) -> BuildConfig:
    """Returns `config` with every record-shaping flag not in `given` taken from the build already
    in `--output_dir`: a rerun of the same command resumes that build, even one made under other
    defaults (before --crop=none and a grouped test split were). With --overwrite the command line,
    defaults included, replaces the folder's build, so nothing is taken.

    Args:
      given: names of the flags the user gave (the command-line layer knows; absl's `.present`).
    """
    if config.overwrite or not config.output_dir:
        return config
    shaping = config.shaping()
    recorded = recorded_shaping(config.output_dir) or {}
    taken = {k: v for k, v in recorded.items() if k in shaping and k not in given and v != shaping[k]}
    if not taken:
        return config
    logging.info("flags not given, kept from the build in %s: %s", config.output_dir,
                 " ".join(_as_flag(k, v) for k, v in sorted(taken.items())))
    return dataclasses.replace(config, **taken)


def _shard_state_path(config: BuildConfig, shard: str) -> str:
    return storage.join(config.output_dir, STATE_DIR, "shards", f"{shard}.json")


def _is_done(config: BuildConfig, shard: str) -> bool:
    # The state file is written before the shard's rename, so a final-named shard implies both.
    # A shard cut since (a full disk while copying it back) no longer has the size it was written
    # with: it is made again.
    path, state_path = storage.join(config.output_dir, shard), _shard_state_path(config, shard)
    if not (storage.exists(path) and storage.exists(state_path)):
        return False
    written = json.loads(storage.read_bytes(state_path)).get(STATE_BYTES)
    return written is None or storage.size(path) == written


def finish_unit(config: BuildConfig, unit: WorkUnit, results: list[tuple], by_name: dict, boxes: dict) -> dict:
    """Writes one processed shard and its bookkeeping; returns the shard's state.

    Args:
      results: `process_item`'s tuples in the unit's order.
      by_name: image name -> `Source` (at least the unit's images).
      boxes: image name -> `plan.ImageBoxes` recorded in the record, whatever the crop mode.
    """
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
    state[STATE_BYTES] = shard_writer.file_bytes(serialized)
    write_json(_shard_state_path(config, unit.shard), state)
    shard_writer.write_atomically(storage.join(config.output_dir, unit.shard), serialized)
    return state


def run_units(config: BuildConfig, pending: list[WorkUnit], by_name: dict, boxes: dict) -> None:
    """Processes `pending` units (a process pool, or inline for one worker) and writes each shard."""

    def finish(unit: WorkUnit, results: list[tuple]) -> None:
        finish_unit(config, unit, results, by_name, boxes)

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


def _runner(config: BuildConfig):
    """The engine that runs the work units: this module's process pool, or Apache Beam.

    Raises:
      UserInputError: a flag of the other runner, or Beam asked for but not installed.
    """
    if config.runner not in RUNNERS:
        raise UserInputError(f"--runner={config.runner!r} is not valid; choose one of {', '.join(RUNNERS)}")
    if config.runner == "local":
        if config.beam_pipeline_args:
            raise UserInputError("--beam_pipeline_args configures --runner=beam; drop it or add --runner=beam")
        return run_units
    if config.workers is not None:
        raise UserInputError("--workers sizes the local process pool; with --runner=beam the Beam runner "
                         "sizes itself (e.g. --beam_pipeline_args='--direct_num_workers=4' or Dataflow's "
                         "--max_num_workers): drop --workers")
    try:
        from preprocess import beam_runner
    except ImportError as err:
        raise UserInputError(f"--runner=beam needs Apache Beam ({err}); install it with `make install DEV=1` "
                         "(or pip install -e '.[beam]' -c constraints.txt)") from None
    beam_runner.pipeline_options(config.beam_pipeline_args)  # bad options fail before any work
    return beam_runner.run_units


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
      UserInputError: the inputs or the output folder do not allow a build (message says the fix).
    """
    execute = _runner(config)
    found, boxes, warnings, assigned, skipped = gather_and_assign(config)
    if config.crop == "bbox" and boxes:
        logging.warning("%s", BBOX_SHORTCUT)
    by_name = {s.entry.image: s for s in found.sources}
    units, shard_split = plan_units(config, assigned, boxes)
    prepare_output(config, plan_digest(units, by_name, boxes))
    logging.info("build config: %s", json.dumps(dataclasses.asdict(config)))  # once the inputs passed
    pending = [u for u in units if not _is_done(config, u.shard)]
    if len(pending) < len(units):
        logging.info("resuming: %d of %d shards already written", len(units) - len(pending), len(units))
    start = time.time()
    execute(config, pending, by_name, boxes)
    elapsed = time.time() - start
    manifest = _manifest(config, units, shard_split, found, skipped, warnings, by_name)
    return _conclude(config, manifest, found, sum(len(u.items) for u in pending), elapsed)


def _manifest(config, units, shard_split, found, skipped, warnings, by_name) -> dict:
    split_info: dict[str, dict] = {}
    patients_by_split: dict[str, set] = {}
    for unit in units:
        state = json.loads(storage.read_bytes(_shard_state_path(config, unit.shard)))
        split = shard_split[unit.shard]
        info = split_info.setdefault(split, {"records": 0, "normal": 0, "abnormal": 0, "shards": [],
                                             manifest_lib.SHARD_BYTES: {}})
        for key in ("records", "normal", "abnormal"):
            info[key] += state[key]
        info["shards"].append(unit.shard)
        if STATE_BYTES in state:  # absent from the state of a shard finished before sizes were kept
            info[manifest_lib.SHARD_BYTES][unit.shard] = state[STATE_BYTES]
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
    splits = manifest["splits"]
    records = sum(s["records"] for s in splits.values())
    if not records:  # nothing usable: the manifest keeps the skip reasons, and no empty shard stays
        for info in splits.values():
            for shard in info["shards"]:
                storage.remove(storage.join(config.output_dir, shard))
            info["shards"], info[manifest_lib.SHARD_BYTES] = [], {}
    manifest_lib.write_manifest(config.output_dir, manifest)
    write_text(storage.join(config.output_dir, ABSENT), "".join(f"{name}\n" for name in found.absent))
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


