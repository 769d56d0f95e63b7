"""The builder: work units through a process pool (or Beam) → shards written atomically → manifest.
Output depends only on the inputs and the record-shaping flags; a rerun writes only missing shards."""

from __future__ import annotations

import collections
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

from contracts import manifest as manifest_lib
from contracts import storage
from contracts.atomic import TEMP_PREFIX, write_json, write_text
from contracts.errors import UserInputError
from preprocess import units as units_lib
from preprocess.config import ADDED_FIELDS, BBOX_SHORTCUT, RENAMED_FIELDS, RUNNERS, BuildConfig
from preprocess.plan import WorkUnit, gather_and_assign, plan_digest, plan_units
from preprocess.units import STATE_BYTES, STATE_DIR

ABSENT = "absent.txt"


@dataclasses.dataclass
class BuildResult:
    manifest: dict
    ok: bool
    summary: str


def _is_ours(name: str) -> bool:
    return (name.endswith(manifest_lib.SHARD_SUFFIX) or name.startswith(TEMP_PREFIX)
            or name in (manifest_lib.MANIFEST, ABSENT, STATE_DIR))


def _recorded(state_file: str) -> dict | None:
    if not storage.exists(state_file):
        return None
    stamp = json.loads(storage.read_bytes(state_file))
    # Older builds recorded some flags under other names (`split`), and none added since (their defaults).
    renamed = {RENAMED_FIELDS.get(k, k): v for k, v in stamp.get("config", {}).items()}
    stamp["config"] = {**ADDED_FIELDS, **renamed}
    return stamp


def prepare_output(config: BuildConfig, digest: str) -> None:
    """Makes --output_dir ready, keeping a matching earlier build's finished shards; UserInputError
    when it holds a build made with other record-shaping flags or inputs."""
    state_file = storage.join(config.output_dir, STATE_DIR, "build.json")
    storage.makedirs(config.output_dir)
    stamp = {"config": config.shaping(), "plan": digest, "schema_version": manifest_lib.SCHEMA_VERSION}
    previous = _recorded(state_file)
    if previous:  # flags that no longer shape records (output_dir, once) are not compared
        previous["config"] = {k: v for k, v in previous["config"].items() if k in stamp["config"]}
    ours = [n for n in storage.listdir(config.output_dir) if _is_ours(n)]
    if previous != stamp and ours:
        # The same flags, records of an older format: the same command rebuilds them.
        if previous and previous["config"] == stamp["config"] \
                and previous.get("schema_version") != manifest_lib.SCHEMA_VERSION:
            logging.warning("%s holds records of an older format (schema %s); rebuilding them as schema %d",
                            config.output_dir, previous.get("schema_version", "unrecorded"),
                            manifest_lib.SCHEMA_VERSION)
        elif not config.overwrite:
            raise UserInputError(f"--output_dir={config.output_dir} is not empty and {_why(previous, stamp)} "
                                 "--overwrite to replace it, or choose another folder")
        for name in ours:
            path = storage.join(config.output_dir, name)
            storage.rmtree(path) if storage.isdir(path) else storage.remove(path)
    for name in storage.listdir(config.output_dir):
        if name.startswith(TEMP_PREFIX):  # left by a killed build; never a finished file
            storage.remove(storage.join(config.output_dir, name))
    storage.makedirs(storage.join(config.output_dir, STATE_DIR, "shards"))
    write_json(state_file, stamp)


def _why(previous: dict | None, stamp: dict) -> str:
    if not previous:
        return "it holds shards or a manifest from another build; pass"
    differing = sorted(k for k in stamp["config"] if previous["config"].get(k) != stamp["config"][k])
    if not differing:
        return "the inputs (CSV rows, labels, boxes or files) differ; pass"
    keep = " ".join(_as_flag(k, previous["config"].get(k)) for k in differing)
    return f"flags differ: {', '.join(differing)}; pass {keep} to complete that build,"


def _as_flag(name: str, value) -> str:
    """The command-line form that gives flag `name` the value `value` (None: leave the flag out)."""
    if value is None:
        return f"no --{name}"
    if isinstance(value, bool):
        return f"--{'' if value else 'no'}{name}"
    return f"--{name}={value}"


def keep_recorded(config: BuildConfig, given: Collection[str]) -> BuildConfig:
    """`config` with each record-shaping flag not in `given` (the flags the user gave) taken from the
    build in --output_dir, so a rerun resumes it; with --overwrite the command line replaces it."""
    if config.overwrite or not config.output_dir:
        return config
    shaping = config.shaping()
    recorded = (_recorded(storage.join(config.output_dir, STATE_DIR, "build.json")) or {}).get("config", {})
    taken = {k: v for k, v in recorded.items() if k in shaping and k not in given and v != shaping[k]}
    if not taken:
        return config
    logging.info("flags not given, kept from the build in %s: %s", config.output_dir,
                 " ".join(_as_flag(k, v) for k, v in sorted(taken.items())))
    return dataclasses.replace(config, **taken)


def _is_done(config: BuildConfig, shard: str) -> bool:
    # A shard cut since it was written (a full disk while copying it back) is made again.
    path, state_path = storage.join(config.output_dir, shard), units_lib.state_path(config.output_dir, shard)
    if not (storage.exists(path) and storage.exists(state_path)):
        return False
    written = units_lib.read_state(config.output_dir, shard).get(STATE_BYTES)
    return written is None or storage.size(path) == written


def run_units(config: BuildConfig, pending: list[WorkUnit], by_name: dict, boxes: dict) -> None:
    """Processes `pending` units (a process pool, or inline for one worker) and writes each shard."""
    workers = config.workers or os.cpu_count() or 1
    with tqdm(total=sum(len(u.items) for u in pending), unit="img", desc="build", smoothing=0.1,
              file=sys.stderr) as bar:
        if workers == 1 or len(pending) <= 1:
            units_lib.report_progress_to(bar.update)
            try:
                for unit in pending:
                    units_lib.finish_unit(config, unit, units_lib.process_unit(unit), by_name, boxes)
            finally:
                units_lib.report_progress_to(None)
            return
        # spawn, not fork: the parent holds TensorFlow's threads, which a fork would not copy.
        context = multiprocessing.get_context("spawn")
        queue = context.Queue()
        ticker = threading.Thread(target=_drain, args=(queue, bar), daemon=True)
        ticker.start()
        by_shard = {u.shard: u for u in pending}
        try:
            with context.Pool(min(workers, len(pending)), units_lib.report_progress_to, (queue.put,)) as pool:
                for shard, results in pool.imap_unordered(_process_keyed, pending):
                    units_lib.finish_unit(config, by_shard[shard], results, by_name, boxes)
        finally:
            queue.put(None)
            ticker.join()


def _process_keyed(unit: WorkUnit) -> tuple[str, list[tuple]]:
    return unit.shard, units_lib.process_unit(unit)


def _drain(queue, bar) -> None:
    while (count := queue.get()) is not None:
        bar.update(count)


def _runner(config: BuildConfig):
    """The engine that runs the work units: the process pool, or Apache Beam (UserInputError when the
    other runner's flag is given, or Beam is not installed)."""
    if config.runner not in RUNNERS:
        raise UserInputError(f"--runner={config.runner!r} is not valid; choose one of {', '.join(RUNNERS)}")
    if config.runner == "local":
        if config.beam_pipeline_args:
            raise UserInputError("--beam_pipeline_args configures --runner=beam; drop it or add "
                                 "--runner=beam")
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


def build(config: BuildConfig) -> BuildResult:
    """Builds (or completes) the shard folder described by `config`.

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
    manifest = _manifest(config, units, shard_split, found, skipped, warnings)
    return _conclude(config, manifest, found, sum(len(u.items) for u in pending), elapsed)


def _manifest(config, units, shard_split, found, skipped, warnings) -> dict:
    split_info: dict[str, dict] = {}
    patients_by_split: dict[str, set] = {}
    states_by_split: dict[str, list] = {}
    for unit in units:
        state = units_lib.read_state(config.output_dir, unit.shard)
        split = shard_split[unit.shard]
        info = split_info.setdefault(split, {"records": 0, "normal": 0, "abnormal": 0, "shards": [],
                                             manifest_lib.SHARD_BYTES: {}})
        for key in ("records", "normal", "abnormal"):
            info[key] += state[key]
        info["shards"].append(unit.shard)
        states_by_split.setdefault(split, []).append(state)
        if STATE_BYTES in state:  # absent from the state of a shard finished before sizes were kept
            info[manifest_lib.SHARD_BYTES][unit.shard] = state[STATE_BYTES]
        patients_by_split.setdefault(split, set()).update(state["patients"])
        skipped = skipped + state["skipped"]
        warnings = warnings + state["warnings"]
    for split, members in patients_by_split.items():
        split_info[split]["patients"] = len(members)
    for split, states in states_by_split.items():  # a shard finished by an older builder has no counts
        known, positives = manifest_lib.FINDINGS_KNOWN, manifest_lib.FINDING_POSITIVES
        if all(positives in s for s in states):
            split_info[split][known] = sum(s[known] for s in states)
            split_info[split][positives] = [sum(column) for column in zip(*(s[positives] for s in states))]
    memberships = collections.Counter(p for members in patients_by_split.values() for p in members)
    refused = {s["image"] for s in skipped}
    return {
        "config": dataclasses.asdict(config),
        "splits": split_info,
        "patient_overlap": sum(count > 1 for count in memberships.values()),
        "skipped": sorted(skipped, key=lambda s: s["image"]),
        "warnings": sorted(warnings, key=lambda s: s["image"]),
        # Records the frontal-chest gate could not check, with the tags they lack.
        "unchecked": sorted((u for u in found.unchecked if u["image"] not in refused),
                            key=lambda u: u["image"]),
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
    over = "" if ok else f" > --max_skip_fraction={config.max_skip_fraction}"
    summary = (
        f"{'built' if ok else 'FAILED'}: {records} records ({parts}) in "
        f"{sum(len(v['shards']) for v in splits.values())} shards at {rate:.0f} img/s; "
        f"skipped {n_skipped} of {found.present_rows} present rows ({100 * fraction:.2f}%{over}; "
        f"reasons in manifest.json 'skipped'); {manifest['absent']} listed but absent (absent.txt); "
        f"{manifest['unlisted']} unlisted files; {len(manifest['warnings'])} warnings; "
        f"patient overlap {manifest['patient_overlap']}"
    )
    return BuildResult(manifest, ok, summary)
