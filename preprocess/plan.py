"""Planning a build: metadata and files → records assigned to splits → one work unit per shard."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math

from contracts import labels_csv as labels_csv_lib
from contracts import manifest as manifest_lib
from contracts import storage
from contracts.boxes import FindingBox
from contracts.errors import UserInputError, check_output_folder
from contracts.labels import LABEL_UNKNOWN
from contracts.manifest import CALIBRATION_SPLIT
from preprocess import chest_gate, nih_metadata
from preprocess import sources as sources_lib
from preprocess import splits as splits_lib
from preprocess.config import BuildConfig, NothingToBuild

TARGET_SHARD_BYTES = 128 * 1024 * 1024
MIN_SHARDS = 16  # enough files to interleave and to split between input pipelines
BYTES_PER_PIXEL = {"png": 0.6, "jpeg": 0.3}  # encoded, NIH sample at 224 px (bench/RESULTS.md)


@dataclasses.dataclass(frozen=True)
class WorkItem:
    name: str
    path: str
    box: tuple[float, float, float, float] | None  # the crop box (1024 frame), None: no crop


@dataclasses.dataclass(frozen=True)
class ImageBoxes:
    """An image's boxes from --bbox_csv and their union (the crop box)."""
    union: tuple[float, float, float, float]  # x, y, w, h in the 1024 frame
    boxes: tuple[FindingBox, ...]


@dataclasses.dataclass(frozen=True)
class WorkUnit:
    """One shard's images and the settings that shape them."""
    shard: str
    items: tuple[WorkItem, ...]
    image_size: int
    image_format: str
    jpeg_quality: int
    max_pixels: int
    min_side: int = 0  # an image whose shorter side is below it is skipped (BuildConfig.min_image_side)
    min_std: float = 0.0  # ... or whose gray pixels' standard deviation is (BuildConfig.min_image_std)


def _input_file(flag: str, path: str | None) -> str | None:
    if path and not storage.isfile(path):
        raise UserInputError(f"--{flag}={path} does not exist")
    return path


def _read(reader, *args):
    try:
        return reader(*args)
    except ValueError as err:  # a malformed file
        raise UserInputError(str(err)) from None


def gather_and_assign(config: BuildConfig):
    """Returns (found sources, `ImageBoxes` by image, box warnings, split -> sources, skipped rows);
    UserInputError for missing inputs or no usable image at all."""
    if not config.image_dir:
        raise UserInputError("--image_dir is required: the folder holding the images (searched recursively)")
    is_glob = config.split_by == "unlabeled" and sources_lib.is_pattern(config.image_dir)
    if not is_glob and not storage.isdir(config.image_dir):
        raise UserInputError(f"--image_dir={config.image_dir} is not a folder; pass the folder holding the "
                             "images (or, with --split_by=unlabeled, a glob pattern of files)")
    if not config.output_dir:
        raise UserInputError("--output_dir is required: the folder the shards and manifest.json go to")
    _check_fractions(config)
    if not storage.is_url(config.output_dir):  # a bucket's permissions show at the first write
        check_output_folder(config.output_dir, "output_dir")
    found = _gather(config)
    boxes, warnings = _boxes(config, found)
    assigned, split_skips = _assign(config, found)
    skipped = [dataclasses.asdict(s) for s in found.skipped + split_skips]
    if not any(assigned.values()):
        raise NothingToBuild(_nothing_usable(config, found, skipped), skipped)
    return found, boxes, warnings, assigned, skipped


def _check_fractions(config: BuildConfig) -> None:
    if not 0 <= config.max_skip_fraction <= 1:
        raise UserInputError(f"--max_skip_fraction={config.max_skip_fraction} must be in [0, 1]")
    if not 0 <= config.val_fraction < 1 or not 0 <= config.test_fraction < 1:
        raise UserInputError("--val_fraction and --test_fraction must be in [0, 1)")
    calibration = config.calibration_fraction
    if calibration and config.split_by not in ("grouped", "official"):
        raise UserInputError(f"--calibration_fraction={calibration} splits labelled images by patient: use "
                             f"it with --split_by=grouped or official, not {config.split_by}, or drop it")
    if not 0 <= calibration < 1:
        raise UserInputError(f"--calibration_fraction={calibration} must be in [0, 1)")
    # The shares carved before train: grouped from all records, official from train_val.
    shares = {"val": config.val_fraction, "test": config.test_fraction if config.split_by == "grouped" else 0,
              "calibration": calibration}
    if sum(shares.values()) >= 1 and (config.split_by == "grouped" or calibration):
        named = " + ".join(f"--{k}_fraction={v}" for k, v in shares.items() if v or k == "val")
        raise UserInputError(f"{named} must leave a share for train; lower one of them")


def _nothing_usable(config: BuildConfig, found: sources_lib.Sources, skipped: list[dict]) -> str:
    first = f" (first: {skipped[0]['image']}: {skipped[0]['reason']})" if skipped else ""
    if config.split_by == "unlabeled" and not skipped:
        return (f"no PNG, JPEG or DICOM file under --image_dir={config.image_dir}; point it at the "
                "folder holding the images")
    if config.split_by == "unlabeled":
        return (f"no usable images under --image_dir={config.image_dir}: all {len(skipped)} image "
                f"file(s) found were skipped{first}")
    if not found.csv_rows:
        return f"--data_entry_csv={config.data_entry_csv} has a header but no rows; use the full CSV"
    return (f"no usable images: {len(found.absent)} of {found.csv_rows} CSV rows have no file under "
            f"--image_dir={config.image_dir}, {len(skipped)} skipped{first}; check the folder and the CSV")


def _gather(config: BuildConfig) -> sources_lib.Sources:
    if config.split_by != "unlabeled":
        if config.labels_csv:
            raise UserInputError("--labels_csv labels an unlabeled folder (--split_by=unlabeled); with "
                                 f"--split_by={config.split_by} the labels come from --data_entry_csv")
        if not config.data_entry_csv:
            raise UserInputError(f"--split_by={config.split_by} needs --data_entry_csv (only "
                                 "--split_by=unlabeled works without)")
        csv_path = _input_file("data_entry_csv", config.data_entry_csv)
        return _read(sources_lib.from_data_entry, csv_path, config.image_dir, chest_gate.Gate.of(config))
    known = labels_csv_lib.load_labels(config.labels_csv, "labels_csv") if config.labels_csv else None
    found = sources_lib.from_folder(config.image_dir, known, chest_gate.Gate.of(config))
    if known and found.sources and all(s.entry.label == LABEL_UNKNOWN for s in found.sources):
        raise UserInputError(
            f"--labels_csv={config.labels_csv} names none of the {len(found.sources)} image files found "
            f"(its ids look like {sorted(known)[0]!r}, the images' like {found.sources[0].entry.image!r}); "
            "key it by image id (a PNG or JPEG's file name, or its path under the image folder when two "
            "files share the name; a DICOM file's path under the image folder) or SOPInstanceUID")
    return found


def _boxes(config: BuildConfig, found: sources_lib.Sources) -> tuple[dict, list[dict]]:
    """image -> `ImageBoxes` of images whose boxes are all valid, and warnings."""
    if not _input_file("bbox_csv", config.bbox_csv):
        return {}, []
    raw, problems = _read(nih_metadata.read_bbox_csv, config.bbox_csv)
    names = {s.entry.image for s in found.sources}
    warnings = [dataclasses.asdict(p) for p in problems if p.image in names]
    found_boxes = {}
    for name, image_boxes in raw.items():
        try:
            if name in names:
                union = nih_metadata.union_box([b.xywh for b in image_boxes])
                found_boxes[name] = ImageBoxes(union, tuple(image_boxes))
        except ValueError as err:
            reason = f"{err} in --bbox_csv; written uncropped, without boxes"
            warnings.append({"image": name, "reason": reason})
    return found_boxes, warnings


def _assign(config: BuildConfig, found: sources_lib.Sources) -> tuple[dict[str, list], list]:
    by_name = {s.entry.image: s for s in found.sources}
    skipped = []
    if config.split_by in ("all", "unlabeled"):
        return {"all" if config.split_by == "all" else "eval": list(found.sources)}, skipped
    if config.split_by == "grouped":
        fractions = {"train": 1 - config.val_fraction - config.test_fraction - config.calibration_fraction,
                     "val": config.val_fraction, "test": config.test_fraction,
                     CALIBRATION_SPLIT: config.calibration_fraction}
        items = [(n, s.entry.patient_id, s.entry.label) for n, s in by_name.items()]
        assignment = splits_lib.grouped_split(items, fractions, config.seed)
    else:
        assignment, skipped = _official_assignment(config, by_name)
    out: dict[str, list] = {s: [] for s in ("train", "val", "test", CALIBRATION_SPLIT)}
    for name, split in assignment.items():
        out[split].append(by_name[name])
    return {s: v for s, v in out.items() if v}, skipped


def _official_assignment(config: BuildConfig, by_name: dict) -> tuple[dict[str, str], list]:
    if not (config.train_val_list and config.test_list):
        raise UserInputError("--split_by=official needs --train_val_list and --test_list (NIH's "
                             "train_val_list.txt, test_list.txt)")
    train_val = set(nih_metadata.read_name_list(_input_file("train_val_list", config.train_val_list)))
    test = set(nih_metadata.read_name_list(_input_file("test_list", config.test_list)))
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
    fractions = {"train": 1 - config.val_fraction - config.calibration_fraction, "val": config.val_fraction,
                 CALIBRATION_SPLIT: config.calibration_fraction}
    assignment.update(splits_lib.grouped_split(pool, fractions, config.seed))
    return assignment, skipped


def shard_counts(split_sizes: dict[str, int], config: BuildConfig) -> dict[str, int]:
    """Shards per split: the largest gets --num_shards (or ~128 MB each), the others in proportion,
    each at least one and at most one per record."""
    largest = max(split_sizes.values())
    if config.num_shards:
        top = config.num_shards
    else:
        record_bytes = BYTES_PER_PIXEL[config.image_format] * config.image_size**2 + 200
        top = max(math.ceil(largest * record_bytes / TARGET_SHARD_BYTES), min(MIN_SHARDS, largest))
    return {split: max(1, min(n, round(top * n / largest))) for split, n in split_sizes.items()}


def plan_units(config: BuildConfig, assigned: dict[str, list], boxes: dict) -> tuple[list, dict]:
    """Returns (units, shard -> split) in a deterministic order that ignores --workers."""
    counts = shard_counts({s: len(v) for s, v in assigned.items()}, config)
    units, shard_split = [], {}
    for split in sorted(assigned):
        by_name = {s.entry.image: s for s in assigned[split]}
        order = splits_lib.ordered_by_seed(by_name, config.seed)
        n = counts[split]
        for index in range(n):
            chunk = order[index * len(order) // n:(index + 1) * len(order) // n]
            name = manifest_lib.shard_name(split, index, n)
            items = tuple(WorkItem(image, by_name[image].path,
                                   boxes[image].union if config.crop == "bbox" and image in boxes else None)
                          for image in chunk)
            units.append(WorkUnit(name, items, config.image_size, config.image_format, config.jpeg_quality,
                                  config.max_image_pixels, config.min_image_side, config.min_image_std))
            shard_split[name] = split
    return units, shard_split


def plan_digest(units: list[WorkUnit], by_name: dict, boxes: dict) -> str:
    digest = hashlib.sha256()
    for unit in units:
        for item in unit.items:
            entry = by_name[item.name].entry
            found = boxes.get(item.name)
            row = [unit.shard, entry.image, entry.label, entry.findings, entry.findings_known,
                   entry.patient_id, entry.view_position, found.union if found else None,
                   found.boxes if found else None]
            digest.update(json.dumps(row).encode())
    return digest.hexdigest()
