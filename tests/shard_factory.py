"""Writes small shard folders in the real record format, for tests that do not exercise the builder.

Images are smooth gray noise; abnormal ones carry a bright disc, so a working model learns them.
Records go through `contracts.records.make_example`, and a `manifest.json` in the builder's
contract is written beside the shards, so readers cannot tell these folders from built ones.
"""

from __future__ import annotations

import io
import os

import numpy as np
import tensorflow as tf
from PIL import Image

from contracts import manifest as manifest_lib
from contracts import records

# Patient columns cycle through every subgroup the report shows (and an unknown age).
VIEWS = ("PA", "AP")
SEXES = ("M", "F")
AGES = (12, 25, 47, 68, None)


def synthetic_pixels(rng: np.random.Generator, image_size: int, abnormal: bool) -> np.ndarray:
    """Returns a `(image_size, image_size)` uint8 radiograph-like image; abnormal ones have a disc."""
    base = rng.normal(90.0, 12.0, size=(image_size, image_size))
    yy, xx = np.mgrid[0:image_size, 0:image_size]
    if abnormal:
        cy, cx = rng.uniform(0.3, 0.7, size=2) * image_size
        radius = image_size * rng.uniform(0.12, 0.2)
        base[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] += 110.0
    return np.clip(base, 0, 255).astype(np.uint8)


def encode_png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def write_shards(
    out_dir: str,
    splits: dict[str, int],
    *,
    image_size: int = 32,
    shards_per_split: int = 2,
    seed: int = 0,
    labeled: bool = True,
    copies: int = 1,
    findings_known: bool = False,
) -> dict[str, list[dict]]:
    """Writes `splits` (name -> record count) as shards plus a manifest into `out_dir`.

    Args:
      out_dir: created if missing.
      splits: e.g. {"train": 40, "val": 13}.
      image_size: side of the stored images.
      shards_per_split: shards per split (fewer when a split has fewer records).
      seed: makes pixels and labels reproducible.
      labeled: False writes label -1 everywhere (an unlabeled eval folder).
      copies: each record is written this many times (ids `<split>_<i>_<copy>.png`), same pixels and
        patient: a patient's duplicated images, as the bootstrap tests need.
      findings_known: labeled records are marked as naming their findings (abnormal ones: Mass).

    Returns:
      split -> list of {"image_id", "label", "pixels"} in write order (shard by shard).
    """
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    written: dict[str, list[dict]] = {}
    manifest_splits = {}
    for split, count in splits.items():
        n_shards = max(1, min(shards_per_split, count))
        rows = []
        names = []
        for shard in range(n_shards):
            name = manifest_lib.shard_name(split, shard, n_shards)
            names.append(name)
            with tf.io.TFRecordWriter(os.path.join(out_dir, name)) as writer:
                for i in range(shard, count, n_shards):
                    abnormal = bool(rng.random() < 0.5)
                    pixels = synthetic_pixels(rng, image_size, abnormal)
                    image_id = f"{split}_{i:05d}.png"
                    label = int(abnormal) if labeled else records.LABEL_UNKNOWN
                    findings = [0] * len(records.FINDINGS)
                    if abnormal and labeled:
                        findings[records.FINDINGS.index("Mass")] = 1
                    for copy in range(copies):
                        copy_id = image_id if copies == 1 else image_id.replace(".png", f"_{copy}.png")
                        example = records.make_example(records.Record(
                            image=encode_png(pixels), image_format="png", image_size=image_size,
                            image_id=copy_id, label=label, findings=findings,
                            findings_known=findings_known and labeled,
                            patient_id=str(i // 3), view_position=VIEWS[i % 2], sex=SEXES[(i // 3) % 2],
                            age=AGES[(i // 3) % len(AGES)],
                        ))
                        writer.write(example.SerializeToString())
                        rows.append({"image_id": copy_id, "label": label, "pixels": pixels, "view": VIEWS[i % 2],
                                     "sex": SEXES[(i // 3) % 2], "age": AGES[(i // 3) % len(AGES)]})
        abnormal_count = sum(r["label"] == 1 for r in rows)
        manifest_splits[split] = {
            "records": len(rows),
            "normal": sum(r["label"] == 0 for r in rows),
            "abnormal": abnormal_count,
            "patients": len({int(r["image_id"].split("_")[1][:5]) // 3 for r in rows}),
            "shards": names,
        }
        written[split] = rows
    manifest = {
        "config": {"image_size": image_size, "image_format": "png", "crop": "none", "seed": seed,
                   "split_by": "synthetic"},
        "splits": manifest_splits,
        "patient_overlap": 0,
        "skipped": [],
        "warnings": [],
        "absent": 0,
        "unlisted": 0,
    }
    manifest_lib.write_manifest(out_dir, manifest)
    return written
