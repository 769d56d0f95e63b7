"""Reading `manifest.json`, the builder's account of what a shard folder holds."""

from __future__ import annotations

import json
import os
from typing import Any

MANIFEST = "manifest.json"


def shard_name(split: str, index: int, count: int) -> str:
    """Returns the shard file name `{split}-{index:05d}-of-{count:05d}.tfrecord`."""
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def load_manifest(data_dir: str) -> dict[str, Any]:
    """Reads `data_dir/manifest.json`.

    Raises:
      FileNotFoundError: no manifest, with the command that makes one.
    """
    path = os.path.join(data_dir, MANIFEST)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} not found: {data_dir} is not a shard folder; build one with "
            "`python preprocess/build_tfrecords.py --output_dir=...`"
        )
    with open(path) as f:
        return json.load(f)


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


def shard_paths(data_dir: str, split: str) -> list[str]:
    """Returns the full paths of `split`'s shards, in manifest order, checking each exists.

    Raises:
      FileNotFoundError: a shard the manifest lists is missing (an interrupted or partial copy).
    """
    info = split_info(load_manifest(data_dir), split, data_dir)
    paths = [os.path.join(data_dir, name) for name in info["shards"]]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} shard(s) of split {split!r} listed in the manifest are missing, "
            f"e.g. {missing[0]}; rerun the build command to complete the folder"
        )
    return paths


def split_records(data_dir: str, split: str) -> int:
    """Returns how many records the manifest says `split` holds."""
    return int(split_info(load_manifest(data_dir), split, data_dir)["records"])
