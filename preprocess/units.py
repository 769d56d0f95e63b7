"""One work unit (a shard) on either engine (`builder`'s pool, `beam_runner`): its images processed
in a worker, then the shard and its state file written. No TensorFlow at import."""

from __future__ import annotations

import json

from contracts import labels, storage
from contracts import manifest as manifest_lib
from contracts.atomic import write_json
from preprocess import chest_gate, images
from preprocess.plan import WorkItem, WorkUnit

STATE_DIR = ".build"  # bookkeeping for resumable builds, hidden inside --output_dir
STATE_BYTES = "bytes"  # in a shard's state file: its size as written

_progress = None  # where a worker reports how many images it processed (see `report_progress_to`)


def report_progress_to(callback) -> None:
    """Makes `process_unit` call `callback(count)` as it goes (None: stop reporting)."""
    global _progress
    _progress = callback


def process_item(item: WorkItem, unit: WorkUnit) -> tuple:
    """(name, encoded | None, crop_applied, warning, error) of one image, with `unit`'s settings; an
    image too small or flat to be a film is an error."""
    try:
        out = images.process(storage.read_bytes(item.path), box=item.box, image_size=unit.image_size,
                             image_format=unit.image_format, jpeg_quality=unit.jpeg_quality,
                             max_pixels=unit.max_pixels)
        implausible = chest_gate.implausible(out.source_size, out.std, unit.min_side, unit.min_std)
        if implausible:
            return item.name, None, False, None, implausible
        return item.name, out.encoded, out.crop_applied, out.warning, None
    except (images.ImageError, OSError) as err:
        return item.name, None, False, None, str(err)


def process_unit(unit: WorkUnit) -> list[tuple]:
    """`process_item`'s tuple for each of the unit's images, in order."""
    results = []
    for index, item in enumerate(unit.items, start=1):
        results.append(process_item(item, unit))
        if _progress is not None and (index % 8 == 0 or index == len(unit.items)):
            _progress(8 if index % 8 == 0 else index % 8)
    return results


def state_path(output_dir: str, shard: str) -> str:
    return storage.join(output_dir, STATE_DIR, "shards", f"{shard}.json")


def read_state(output_dir: str, shard: str) -> dict:
    return json.loads(storage.read_bytes(state_path(output_dir, shard)))


def finish_unit(config, unit: WorkUnit, results: list[tuple], by_name: dict, boxes: dict) -> dict:
    """Writes one processed shard (`results` in the unit's order) and its state; returns the state.
    `by_name` maps names to `Source`s, `boxes` to the `plan.ImageBoxes` each record carries."""
    from preprocess import shard_writer  # TensorFlow: loaded where shards are written only

    serialized, patients = [], set()
    state = {"records": 0, "normal": 0, "abnormal": 0, "skipped": [], "warnings": [],
             manifest_lib.FINDINGS_KNOWN: 0, manifest_lib.FINDING_POSITIVES: [0] * len(labels.FINDINGS)}
    for name, encoded, crop_applied, warning, error in results:
        if error is not None:
            state["skipped"].append({"image": name, "reason": f"{error}; skipped"})
            continue
        entry = by_name[name].entry
        serialized.append(shard_writer.example_for(entry, encoded, crop_applied, boxes.get(name), config))
        if warning:
            state["warnings"].append({"image": name, "reason": warning})
        state["records"] += 1
        state["normal"] += entry.label == labels.LABEL_NORMAL
        state["abnormal"] += entry.label == labels.LABEL_ABNORMAL
        if entry.findings_known:
            state[manifest_lib.FINDINGS_KNOWN] += 1
            positives = state[manifest_lib.FINDING_POSITIVES]
            state[manifest_lib.FINDING_POSITIVES] = [a + b for a, b in zip(positives, entry.findings)]
        if entry.patient_id:
            patients.add(entry.patient_id)
    state["patients"] = sorted(patients)
    state[STATE_BYTES] = shard_writer.file_bytes(serialized)
    # The state goes first: a shard under its final name then always has one.
    write_json(state_path(config.output_dir, unit.shard), state)
    shard_writer.write_atomically(storage.join(config.output_dir, unit.shard), serialized)
    return state
