"""explain.py's work: Grad-CAM maps of a split's images and their localization score against the boxes.

1. Every record of the split is predicted (`prediction.predict_split`; an ensemble blends its
   members with the ensemble file's weights), and the gallery is chosen: the `per_group` most
   confident true positives, false positives and false negatives at the threshold (the ensemble
   file's, else `settings.SINGLE_MODEL_THRESHOLD`), or the images asked for.
2. The gallery's records and every record with boxes are read again, and each gets its Grad-CAM
   map (`evaluation.gradcam`; an ensemble's is the weighted mean of its members'). Boxed images of
   uncropped shards are scored (`evaluation.localization`); cropped shards are not, and say so.
3. Only then is anything written (`contracts.explanation_folder`): per gallery image a heatmap
   `.npy` and an overlay `.png`, `localization.json`, and the index last.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterator, Sequence

import numpy as np
import tensorflow as tf

from contracts import ensemble_file, records
from contracts import explanation_folder as folder_lib
from contracts.atomic import atomic_path, write_bytes, write_json
from contracts.boxes import stored_box
from contracts.errors import UserInputError
from contracts.output_names import PROB
from contracts.prediction_files import few
from evaluation import blend as blend_lib
from evaluation import gradcam, localization, preflight, settings
from evaluation.overlay import render_overlay
from evaluation.prediction import check_one_row_per_record, predict_split
from models.saved import load_classifier
from pipeline import input_pipeline
from training import distribute

TARGET = "Grad-CAM of the pre-softmax margin z_abnormal - z_normal on the feature map the head pools"
NOT_SCORED_CROPPED = ("the shards were built with --crop=bbox: a boxed image is its own box, so a map "
                      "cannot miss it; rebuild them with --crop=none to score localization")


@dataclasses.dataclass(frozen=True)
class Member:
    """One explained model: its folder, name, blend weight, Grad-CAM and temperature."""

    model_dir: str
    name: str
    weight: float
    cam: gradcam.GradCam
    classifier: Any
    temperature: float = 1.0


@dataclasses.dataclass(frozen=True)
class ExplainResult:
    """What explain wrote: the index's image entries, the localization report, the threshold."""

    output_dir: str
    images: list[dict[str, Any]]
    localization: dict[str, Any]
    threshold: float


def load_members(model_dirs: Sequence[str], ensemble: str | None) -> tuple[list[Member], float]:
    """Loads the classifiers (an ensemble's in blend order, with its weights); returns them and the
    threshold (the ensemble file's, else `settings.SINGLE_MODEL_THRESHOLD`).

    Raises:
      UserInputError: an ensemble file that does not match the folders, several folders without
        one, or a model that cannot be loaded.
    """
    pairs = preflight.check_explained_models(model_dirs, ensemble)
    threshold = settings.SINGLE_MODEL_THRESHOLD if ensemble is None else ensemble_file.load_ensemble(ensemble).threshold
    members = []
    for model_dir, name, weight, temperature in pairs:
        classifier = load_classifier(model_dir)
        members.append(Member(model_dir, name, weight, gradcam.GradCam(classifier), classifier, temperature))
    return members, threshold


def split_probabilities(members: Sequence[Member], data_dir: str, split: str, image_size: int,
                        expected: int, batch_size: int, progress: bool = True):
    """Returns (ids, P(abnormal), labels) of every record of `split`, rows sorted by id, in the one
    order of predict.py and the export: each member's temperature, then the weighted blend."""
    strategy = distribute.resolve_strategy("default")
    outputs = [predict_split(m.classifier, strategy, data_dir, split, batch_size, image_size, total=expected,
                             progress=progress, desc=m.name) for m in members]
    check_one_row_per_record(outputs[0].ids, expected, data_dir, split)
    probs = np.stack([o.softmax[:, 1] for o in outputs], axis=1)
    p = blend_lib.blend(blend_lib.calibrate_members(probs, [m.temperature for m in members]),
                        np.array([m.weight for m in members]))
    return outputs[0].ids, p, outputs[0].labels


def choose_gallery(ids: np.ndarray, p: np.ndarray, labels: np.ndarray, threshold: float, per_group: int, *,
                   image_ids: Sequence[str] | None = None, every_image: bool = False,
                   where: str = "the split") -> list[tuple[str, str, int]]:
    """Returns the images to show as (image_id, group, rank).

    `image_ids` (group "asked", in the order given) or `every_image` (every id, "asked"); else per
    group the `per_group` most confident: true positives and false positives by P(abnormal)
    descending, false negatives ascending (ties by id).

    Raises:
      UserInputError: an asked id not in `ids`, or no known label to tell the groups apart.
    """
    ids = np.asarray(ids).astype(str)
    if image_ids:
        check_asked_ids(image_ids, ids, where)
        return [(image_id, "asked", rank) for rank, image_id in enumerate(dict.fromkeys(image_ids))]
    if every_image:
        return [(str(image_id), "asked", rank) for rank, image_id in enumerate(ids)]
    if not (labels >= 0).any():
        raise UserInputError(f"{where} has no labels, so no true or false positives; pass --image_ids")
    called = blend_lib.decide(p, threshold)
    groups = {"tp": ((labels == 1) & (called == 1), -p), "fp": ((labels == 0) & (called == 1), -p),
              "fn": ((labels == 1) & (called == 0), p)}
    chosen = []
    for group, (mask, key) in groups.items():
        rows = np.flatnonzero(mask)
        rows = rows[np.lexsort((ids[rows], key[rows]))][:per_group]
        chosen += [(str(ids[row]), group, rank) for rank, row in enumerate(rows)]
    return chosen


def check_asked_ids(image_ids: Sequence[str], ids: Sequence[str], where: str) -> None:
    """Raises UserInputError naming the `image_ids` that are not among `ids`."""
    known = set(ids)
    missing = [i for i in image_ids if i not in known]
    if missing:
        joined = ("; give --image_ids once per image (--image_ids=A --image_ids=B), not a comma-separated list"
                  if any("," in i for i in missing) else "")
        raise UserInputError(f"--image_ids: {few(missing)} not in {where} ({len(known)} images); pass ids "
                             f"from its image_id column (a prediction CSV lists them){joined}")


def split_ids(data_dir: str, split: str) -> list[str]:
    """The image ids of `split`, read from its records (no image is decoded)."""
    data = tf.data.TFRecordDataset(input_pipeline.list_shards(data_dir, split))
    data = data.map(lambda s: tf.io.parse_single_example(s, {records.IMAGE_ID: records.FEATURE_SPEC[records.IMAGE_ID]}))
    try:
        return [item[records.IMAGE_ID].decode() for item in data.as_numpy_iterator()]
    except tf.errors.DataLossError as err:
        raise input_pipeline.corrupt_data_error(data_dir, (split,), err) from None


def read_records(data_dir: str, split: str, image_size: int, wanted: Sequence[str],
                 with_boxes: bool) -> Iterator[dict[str, Any]]:
    """Yields the records of `split` whose id is `wanted` or (with `with_boxes`) that have boxes:
    {"image_id", "label", "gray" (S, S) uint8, "crop" (the crop box, or None), "boxes"}."""
    wanted_ids = tf.constant(sorted(wanted), tf.string, shape=[len(wanted)])

    def keep(parsed):
        asked = tf.reduce_any(tf.equal(parsed[records.IMAGE_ID], wanted_ids))
        return tf.logical_or(asked, with_boxes and tf.size(parsed[records.BOX_FINDINGS].values) > 0)

    def decode(parsed):
        return {"image_id": parsed[records.IMAGE_ID], "label": parsed[records.LABEL],
                "gray": records.decode_image(parsed[records.IMAGE], image_size)[..., 0],
                "crop_applied": parsed[records.CROP_APPLIED], "box": parsed[records.BOX],
                "xywh": parsed[records.BOXES].values, "findings": parsed[records.BOX_FINDINGS].values}

    data = tf.data.TFRecordDataset(input_pipeline.list_shards(data_dir, split))
    data = data.map(records.parse_example).filter(keep).map(decode)
    try:
        for item in data.as_numpy_iterator():
            yield {"image_id": item["image_id"].decode(), "label": int(item["label"]), "gray": item["gray"],
                   "crop": tuple(item["box"].tolist()) if item["crop_applied"] else None,
                   "boxes": records.finding_boxes(item["xywh"], item["findings"])}
    except tf.errors.DataLossError as err:
        raise input_pipeline.corrupt_data_error(data_dir, (split,), err) from None


def _pixel_boxes(record: dict[str, Any], image_size: int) -> list[tuple[str, tuple[float, ...]]]:
    return [(b.finding, stored_box(b.xywh, image_size, record["crop"])) for b in record["boxes"]]


def explain_records(members: Sequence[Member], stream: Iterator[dict[str, Any]], gallery: set[str],
                    tally: localization.LocalizationTally | None, batch_size: int) -> dict[str, dict[str, Any]]:
    """Computes the maps of the streamed records, batch by batch; scores the boxed, uncropped ones
    into `tally`; returns the gallery's records, each with its "map" added."""
    kept: dict[str, dict[str, Any]] = {}

    def run(batch):
        pixels = np.repeat(np.stack([r["gray"] for r in batch])[..., None], 3, axis=-1).astype(np.float32)
        maps = gradcam.ensemble_map([m.cam(pixels) for m in members], [m.weight for m in members])
        for record, heatmap in zip(batch, maps):
            boxes = _pixel_boxes(record, heatmap.shape[0])
            if tally is not None and boxes and record["crop"] is None:
                by_finding: dict[str, list] = {}
                for finding, box in boxes:
                    by_finding.setdefault(finding, []).append(box)
                tally.add(record["image_id"], heatmap, by_finding)
            if record["image_id"] in gallery:
                kept[record["image_id"]] = {**record, "map": heatmap, "pixel_boxes": boxes}

    batch: list[dict[str, Any]] = []
    for record in stream:
        batch.append(record)
        if len(batch) == batch_size:
            run(batch)
            batch = []
    if batch:
        run(batch)
    return kept


def write_explanations(output_dir: str, gallery: Sequence[tuple[str, str, int]], kept: dict[str, dict[str, Any]],
                       probability: dict[str, float], report: dict[str, Any], header: dict[str, Any]) -> list[dict]:
    """Writes each gallery image's .npy and .png, then localization.json, then the index (last)."""
    os.makedirs(output_dir, exist_ok=True)
    entries = []
    for image_id, group, rank in gallery:
        record, stem = kept[image_id], folder_lib.file_stem(group, rank, image_id)
        with atomic_path(os.path.join(output_dir, stem + ".npy")) as tmp:
            np.save(tmp, record["map"].astype(np.float32))
        write_bytes(os.path.join(output_dir, stem + ".png"),
                    render_overlay(record["gray"], record["map"], record["pixel_boxes"]))
        entries.append({"image_id": image_id, "group": group, "rank": rank,
                        PROB: float(probability[image_id]),
                        "label": record["label"] if record["label"] >= 0 else None,
                        "heatmap": stem + ".npy", "overlay": stem + ".png"})
    write_json(os.path.join(output_dir, folder_lib.LOCALIZATION), report)
    write_json(os.path.join(output_dir, folder_lib.INDEX), {**header, "images": entries})
    return entries


def run_explain(config: settings.ExplainConfig, split: str | None = None, data_dir: str | None = None,
                source: dict[str, Any] | None = None) -> ExplainResult:
    """Explains a split with `config.model_dir`'s models (blended by `config.ensemble`) into its output_dir.

    Args:
      split, data_dir: what to explain when not `config.split` of `config.data_dir` (a resolved
        split, or the temporary shard folder of `config.images`, whose every image is explained).
      source: the index's "source" instead of {data_dir, split} (the raw files behind that folder).

    Raises:
      UserInputError: bad folders or files, an asked id not in the split, an unlabeled split
        without image_ids, an ensemble file that does not match the folders. Nothing is written.
    """
    model_dirs, ensemble, output_dir = config.model_dir, config.ensemble, config.output_dir
    data_dir, split = data_dir or config.data_dir, split or config.split
    image_ids, every_image, per_group = config.image_ids, config.images is not None, config.per_group
    batch_size, progress = config.global_batch_size, config.progress
    manifest, expected, image_size = preflight.check_explain_inputs(model_dirs, ensemble, data_dir, split,
                                                                    output_dir)
    where = f"--images={source['images']}" if (source or {}).get("images") else f"split {split!r} of {data_dir}"
    if image_ids:  # before the models load: a typo costs a second
        check_asked_ids(image_ids, split_ids(data_dir, split), where)
    members, threshold = load_members(model_dirs, ensemble)
    ids, p, labels = split_probabilities(members, data_dir, split, image_size, expected, batch_size, progress)
    gallery = choose_gallery(ids, p, labels, threshold, per_group, image_ids=image_ids, every_image=every_image,
                             where=where)
    cropped = manifest.get("config", {}).get("crop") == "bbox"
    tally = None if cropped else localization.LocalizationTally(image_size)
    kept = explain_records(members, read_records(data_dir, split, image_size, [g[0] for g in gallery],
                                                 with_boxes=not cropped),
                           {g[0] for g in gallery}, tally, batch_size)
    report = localization.not_scored(NOT_SCORED_CROPPED) if tally is None else tally.summary()
    header = {"schema_version": folder_lib.SCHEMA_VERSION, "target": TARGET, "threshold": threshold,
              "ensemble": os.path.abspath(ensemble) if ensemble else None,
              "models": [{"name": m.name, "model_dir": os.path.abspath(m.model_dir), "weight": m.weight,
                          "feature_map": list(m.cam.feature_map_shape()),
                          "feature_grid": dataclasses.asdict(m.cam.grid)} for m in members],
              "image_size": image_size, "crop": manifest.get("config", {}).get("crop"),
              "source": source or {"data_dir": os.path.abspath(data_dir), "split": split},
              "localization_file": folder_lib.LOCALIZATION}
    entries = write_explanations(output_dir, gallery, kept, dict(zip(ids.tolist(), p.tolist())), report, header)
    return ExplainResult(output_dir, entries, report, threshold)


def summary(result: ExplainResult) -> str:
    """The console lines: what was written, then the localization table (or why there is none)."""
    counts = {group: sum(e["group"] == group for e in result.images) for group in folder_lib.GROUPS}
    shown = ", ".join(f"{group} {n}" for group, n in counts.items() if n)
    return (f"explain: {len(result.images)} images ({shown or 'none'}) at threshold {result.threshold:.4f} -> "
            f"{os.path.join(result.output_dir, folder_lib.INDEX)}\n{localization.format_table(result.localization)}")
