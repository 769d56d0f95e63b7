"""explain.py's work: choose the gallery, then Grad-CAM it and every boxed record."""

from __future__ import annotations

import dataclasses
import itertools
import os
from typing import Any, Iterator, Sequence

import numpy as np
import tensorflow as tf

from contracts import explanation_folder as folder_lib
from contracts import records, storage
from contracts.atomic import atomic_path, write_bytes, write_json
from contracts.boxes import stored_box
from contracts.ensemble_file import Blended
from contracts.errors import UserInputError, repeat_hint
from contracts.manifest import ShardFolder
from contracts.output_names import PROB
from contracts.prediction_files import few
from evaluation import blend as blend_lib
from evaluation import gradcam, localization, preflight, settings
from evaluation.overlay import render_overlay
from evaluation.prediction import predict_split
from models import distribute
from models.saved import load_classifier
from pipeline import input_pipeline

TARGET = "Grad-CAM of the pre-softmax margin z_abnormal - z_normal on the feature map the head pools"
NOT_SCORED_CROPPED = ("the shards were built with --crop=bbox: a boxed image is its own box, so a map "
                      "cannot miss it; rebuild them with --crop=none to score localization")


@dataclasses.dataclass(frozen=True)
class Member(Blended):

    classifier: Any = None
    cam: gradcam.GradCam | None = None

    @classmethod
    def load(cls, model: Blended) -> Member:
        classifier = load_classifier(model.run)
        return cls(**{f.name: getattr(model, f.name) for f in dataclasses.fields(model)},
                   classifier=classifier, cam=gradcam.GradCam(classifier))


@dataclasses.dataclass(frozen=True)
class ExplainResult:

    output_dir: str
    images: list[dict[str, Any]]
    localization: dict[str, Any]
    threshold: float


def split_probabilities(members: Sequence[Member], shards: ShardFolder, split: str, batch_size: int,
                        progress: bool = True):
    """(ids, blended P(abnormal), labels) of every record of `split`, rows sorted by id."""
    strategy = distribute.resolve_strategy("default")
    outputs = [predict_split(m.classifier, strategy, shards, split, batch_size, progress=progress,
                             desc=m.name) for m in members]
    probs = np.stack([o.softmax[:, 1] for o in outputs], axis=1)
    p = blend_lib.blend(blend_lib.calibrate_members(probs, [m.temperature for m in members]),
                        np.array([m.weight for m in members]))
    return outputs[0].ids, p, outputs[0].labels


def choose_gallery(ids: np.ndarray, p: np.ndarray, labels: np.ndarray, threshold: float, per_group: int, *,
                   image_ids: Sequence[str] | None = None, every_image: bool = False,
                   where: str = "the split") -> list[tuple[str, str, int]]:
    """(image_id, group, rank): those asked, else the `per_group` most confident tp, fp and fn."""
    ids = np.asarray(ids).astype(str)
    if image_ids:  # checked against the split before the models loaded
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
    known = set(ids)
    missing = [i for i in image_ids if i not in known]
    if missing:
        joined = next(filter(None, (repeat_hint(i, "image_ids", "image") for i in missing)), "")
        raise UserInputError(f"--image_ids: {few(missing)} not in {where} ({len(known)} images); pass ids "
                             f"from its image_id column (a prediction CSV lists them){joined}")


def split_ids(shards: ShardFolder, split: str) -> list[str]:
    spec = {records.IMAGE_ID: records.FEATURE_SPEC[records.IMAGE_ID]}
    data = tf.data.TFRecordDataset(list(shards.split(split).paths)).map(
        lambda s: tf.io.parse_single_example(s, spec))
    try:
        return [item[records.IMAGE_ID].decode() for item in data.as_numpy_iterator()]
    except tf.errors.DataLossError as err:
        raise input_pipeline.corrupt_data_error(shards, (split,), err) from None


def read_records(shards: ShardFolder, split: str, wanted: Sequence[str],
                 with_boxes: bool) -> Iterator[dict[str, Any]]:
    """Yields the records of `split` that are `wanted` or (`with_boxes`) have boxes, decoded."""
    wanted_ids = tf.constant(sorted(wanted), tf.string, shape=[len(wanted)])

    def keep(parsed):
        asked = tf.reduce_any(tf.equal(parsed[records.IMAGE_ID], wanted_ids))
        return tf.logical_or(asked, with_boxes and tf.size(parsed[records.BOX_FINDINGS].values) > 0)

    def decode(parsed):
        return {"image_id": parsed[records.IMAGE_ID], "label": parsed[records.LABEL],
                "gray": records.decode_image(parsed[records.IMAGE], shards.image_size)[..., 0],
                "crop_applied": parsed[records.CROP_APPLIED], "box": parsed[records.BOX],
                "xywh": parsed[records.BOXES].values, "findings": parsed[records.BOX_FINDINGS].values}

    data = tf.data.TFRecordDataset(list(shards.split(split).paths))
    data = data.map(records.parse_example).filter(keep).map(decode)
    try:
        for item in data.as_numpy_iterator():
            yield {"image_id": item["image_id"].decode(), "label": int(item["label"]), "gray": item["gray"],
                   "crop": tuple(item["box"].tolist()) if item["crop_applied"] else None,
                   "boxes": records.finding_boxes(item["xywh"], item["findings"])}
    except tf.errors.DataLossError as err:
        raise input_pipeline.corrupt_data_error(shards, (split,), err) from None


def explain_records(members: Sequence[Member], stream: Iterator[dict[str, Any]], gallery: set[str],
                    tally: localization.LocalizationTally | None,
                    batch_size: int) -> dict[str, dict[str, Any]]:
    """The gallery's records with their "map"; scores the boxed, uncropped ones into `tally`."""
    kept: dict[str, dict[str, Any]] = {}

    def run(batch):
        pixels = np.repeat(np.stack([r["gray"] for r in batch])[..., None], 3, axis=-1).astype(np.float32)
        maps = gradcam.ensemble_map([m.cam(pixels) for m in members], [m.weight for m in members])
        for record, heatmap in zip(batch, maps):
            boxes = [(b.finding, stored_box(b.xywh, heatmap.shape[0], record["crop"]))
                     for b in record["boxes"]]
            if tally is not None and boxes and record["crop"] is None:
                by_finding: dict[str, list] = {}
                for finding, box in boxes:
                    by_finding.setdefault(finding, []).append(box)
                tally.add(record["image_id"], heatmap, by_finding)
            if record["image_id"] in gallery:
                kept[record["image_id"]] = {**record, "map": heatmap, "pixel_boxes": boxes}

    while batch := list(itertools.islice(stream, batch_size)):
        run(batch)
    return kept


def write_explanations(output_dir: str, gallery: Sequence[tuple[str, str, int]],
                       kept: dict[str, dict[str, Any]], probability: dict[str, float], report: dict[str, Any],
                       header: dict[str, Any]) -> list[dict]:
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
    """Explains `split` of `data_dir` (default: the config's; None: the one the manifest makes
    unambiguous) with `config.model_dir`'s models (blended by `config.ensemble`) into
    `config.output_dir`: the tp/fp/fn gallery of `per_group` each, or `image_ids` / every image of
    `config.images` (group "asked"). `source` replaces the index's {data_dir, split} (the raw files
    behind a temporary shard folder). Bad input writes nothing."""
    model_dirs, ensemble, output_dir = config.model_dir, config.ensemble, config.output_dir
    data_dir, split = data_dir or config.data_dir, split or config.split
    image_ids, every_image, per_group = config.image_ids, config.images is not None, config.per_group
    batch_size, progress = config.global_batch_size, config.progress
    inputs = preflight.open_explain_inputs(model_dirs, ensemble, data_dir, split, output_dir)
    shards, split = inputs.shards, inputs.split.name
    threshold = settings.SINGLE_MODEL_THRESHOLD if inputs.threshold is None else inputs.threshold
    where = (f"--images={source['images']}" if (source or {}).get("images")
             else f"split {split!r} of {data_dir}")
    if image_ids:  # before the models load: a typo costs a second
        check_asked_ids(image_ids, split_ids(shards, split), where)
    members = [Member.load(model) for model in inputs.members]
    ids, p, labels = split_probabilities(members, shards, split, batch_size, progress)
    gallery = choose_gallery(ids, p, labels, threshold, per_group, image_ids=image_ids,
                             every_image=every_image, where=where)
    cropped = shards.crop == "bbox"
    tally = None if cropped else localization.LocalizationTally(shards.image_size)
    shown = [g[0] for g in gallery]
    kept = explain_records(members, read_records(shards, split, shown, with_boxes=not cropped), set(shown),
                           tally, batch_size)
    report = localization.not_scored(NOT_SCORED_CROPPED) if tally is None else tally.summary()
    header = {"schema_version": folder_lib.SCHEMA_VERSION, "target": TARGET, "threshold": threshold,
              "ensemble": os.path.abspath(ensemble) if ensemble else None,
              "models": [{"name": m.name, "model_dir": os.path.abspath(m.run.path), "weight": m.weight,
                          "feature_map": list(m.cam.feature_map_shape()),
                          "feature_grid": dataclasses.asdict(m.cam.grid)} for m in members],
              "image_size": shards.image_size, "crop": shards.crop,
              "source": source or {"data_dir": storage.abspath(data_dir), "split": split},
              "localization_file": folder_lib.LOCALIZATION}
    probability = dict(zip(ids.tolist(), p.tolist()))
    entries = write_explanations(output_dir, gallery, kept, probability, report, header)
    return ExplainResult(output_dir, entries, report, threshold)


def summary(result: ExplainResult) -> str:
    counts = {group: sum(e["group"] == group for e in result.images) for group in folder_lib.GROUPS}
    shown = ", ".join(f"{group} {n}" for group, n in counts.items() if n)
    return (f"explain: {len(result.images)} images ({shown or 'none'}) at threshold "
            f"{result.threshold:.4f} -> {os.path.join(result.output_dir, folder_lib.INDEX)}\n"
            f"{localization.format_table(result.localization)}")
