"""`manifest.json`, the builder's account of what a shard folder holds: its one writer and its readers.

Keys: `schema_version`, `config` (the build's flags: image_size, crop, image_format, ...),
`splits` (per split: records, normal, abnormal, patients, shards, and `shard_bytes`: each
shard's size as written), `patient_overlap`, `skipped` (every refused image with its reason),
`warnings`, `absent`, `unlisted`. Manifests written before `schema_version` existed read as
version 1; `shard_bytes` is optional (absent before it was kept), so it did not change the version.
"""

from __future__ import annotations

import json
import os
from typing import Any

from contracts.atomic import write_json
from contracts.errors import UserInputError

MANIFEST = "manifest.json"
# 1: before the manifest recorded its version; 2: before records carried patient sex and age
# (older records read them as unknown); 3: before records carried every box with its finding
# (older records read as having none).
SCHEMA_VERSION = 4
SHARD_SUFFIX = ".tfrecord"
SHARD_BYTES = "shard_bytes"  # per split: shard name -> its size in bytes as the builder wrote it


def shard_name(split: str, index: int, count: int) -> str:
    """Returns the shard file name `{split}-{index:05d}-of-{count:05d}.tfrecord`."""
    return f"{split}-{index:05d}-of-{count:05d}{SHARD_SUFFIX}"


def load_manifest(data_dir: str) -> dict[str, Any]:
    """Reads `data_dir/manifest.json`.

    Returns:
      The manifest, with `schema_version` filled in (1) for manifests written before it existed.

    Raises:
      FileNotFoundError: no manifest, with the command that makes one.
      UserInputError: the file is not a JSON object (a partial copy or a hand edit).
    """
    path = os.path.join(data_dir, MANIFEST)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} not found: {data_dir} is not a shard folder; build one with "
            "`python preprocess/build_tfrecords.py --output_dir=...`"
        )
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserInputError(f"{path} is not valid JSON ({err}); rebuild the shard folder or restore the file") from err
    if not isinstance(manifest, dict):
        raise UserInputError(f"{path} is not a JSON object; rebuild the shard folder or restore the file")
    manifest.setdefault("schema_version", 1)
    return manifest


def write_manifest(data_dir: str, manifest: dict[str, Any]) -> str:
    """Writes `data_dir/manifest.json` atomically with the current `schema_version`; returns its path."""
    path = os.path.join(data_dir, MANIFEST)
    write_json(path, {**manifest, "schema_version": SCHEMA_VERSION})
    return path


def check_image_size(manifest: dict[str, Any], image_size: int | None, data_dir: str, fix: str) -> int:
    """Returns the shards' image size after checking that `image_size` (None: any) matches it.

    Args:
      fix: the end of the error message; `{stored}` and `{asked}` are filled in.

    Raises:
      ValueError: the shards were built at another size.
    """
    stored = int(manifest["config"]["image_size"])
    if image_size is not None and int(image_size) != stored:
        raise ValueError(f"the shards in {data_dir} were built at {stored} px, not {image_size}; "
                         + fix.format(stored=stored, asked=image_size))
    return stored


def split_info(manifest: dict[str, Any], split: str, data_dir: str = "") -> dict[str, Any]:
    """Returns the manifest's entry for `split`.

    Raises:
      KeyError: the split is not in the manifest, listing the ones that are.
    """
    splits = manifest.get("splits", {})
    if split not in splits:
        raise KeyError(
            f"split {split!r} not in {os.path.join(data_dir, MANIFEST)}; "
            f"it has: {', '.join(sorted(splits)) or 'none'}"
        )
    return splits[split]


def default_split(manifest: dict[str, Any], data_dir: str, flag: str = "--split") -> str:
    """The split a tool reads when `flag` is not given: `test` when the manifest has it, else the
    only split other than `train` (a grouped build without test: `val`; `all`; unlabeled: `eval`).

    Raises:
      UserInputError: no such split is unambiguous; the message lists the manifest's splits.
    """
    splits = sorted(manifest.get("splits", {}))
    if "test" in splits:
        return "test"
    others = [s for s in splits if s != "train"]
    if len(others) == 1:
        return others[0]
    raise UserInputError(f"{os.path.join(data_dir, MANIFEST)} has splits {', '.join(splits) or 'none'}; "
                         f"pass {flag} to name the one to read")


def shard_paths(data_dir: str, split: str) -> list[str]:
    """Returns the full paths of `split`'s shards, in manifest order, checking each exists.

    Raises:
      FileNotFoundError: a shard the manifest lists is missing (an interrupted or partial copy).
      UserInputError: a listed shard is not a plain file name inside `data_dir` (for example
        `../other/val-00000-of-00001.tfrecord`, which would read another folder's records).
    """
    info = split_info(load_manifest(data_dir), split, data_dir)
    for name in info["shards"]:
        if not isinstance(name, str) or os.path.basename(name) != name or name in ("", ".", ".."):
            raise UserInputError(
                f"{os.path.join(data_dir, MANIFEST)} lists shard {name!r} for split {split!r}; shards "
                f"must be file names inside {data_dir} (no folders, no ..): rebuild the folder")
    paths = [os.path.join(data_dir, name) for name in info["shards"]]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} shard(s) of split {split!r} listed in the manifest are missing, "
            f"e.g. {missing[0]}; rerun the build command to complete the folder"
        )
    if SHARD_BYTES in info:  # absent from manifests written before sizes were kept
        _check_sizes(paths, info[SHARD_BYTES], os.path.join(data_dir, MANIFEST), split)
    return paths


def _check_sizes(paths: list[str], written: Any, manifest_path: str, split: str) -> None:
    """Refuses a shard whose size differs from the builder's: a cut copy can end between two
    records, or inside a record's header, which TensorFlow reads as a clean end of file."""
    valid = isinstance(written, dict) and all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in written.values())
    if not valid:
        raise UserInputError(f"{manifest_path}: {SHARD_BYTES} of split {split!r} is not a map of shard "
                             "name to byte count; restore the file or rebuild the folder")
    for path in paths:
        expected = written.get(os.path.basename(path))
        size = os.path.getsize(path)
        if expected is not None and size != expected:
            how = "cut short" if size < expected else "longer than written"
            raise UserInputError(
                f"{path} is {size:,} bytes but the builder wrote {expected:,} ({how}): a damaged or partial "
                "copy; copy it again from the folder the build wrote, or rerun the build into this folder")


def split_records(data_dir: str, split: str) -> int:
    """Returns how many records the manifest says `split` holds."""
    return int(split_info(load_manifest(data_dir), split, data_dir)["records"])
