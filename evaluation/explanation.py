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
from contracts.labels import FINDINGS
from contracts.manifest import ShardFolder
from contracts.output_names import PROB, finding_prob
from contracts.prediction_files import few
from evaluation import blend as blend_lib
from evaluation import gradcam, localization, preflight, settings
from evaluation.overlay import render_overlay
from evaluation.prediction import predict_split
from models import distribute
from models.saved import load_classifier
from pipeline import input_pipeline

TARGET = "Grad-CAM of the pre-softmax margin z_abnormal - z_normal on the feature map the head pools"
FINDING_TARGET = "Grad-CAM of the pre-sigmoid logit of {} on the feature map the head pools"
FINDING_THRESHOLD = (f"a record is called positive for the finding when its blended calibrated p >= "
                     f"{settings.FINDING_THRESHOLD}; records whose findings are unknown are in no group")
FINDING_MAPS_WEIGHTS = ("each member's weight for that finding (the ensemble file's per-finding weights, "
                        "else its binary weight)")
NOT_SCORED_CROPPED = ("the shards were built with --crop=bbox: a boxed image is its own box, so a map "
                      "cannot miss it; rebuild them with --crop=none to score localization")


@dataclasses.dataclass(frozen=True)
class Member(Blended):

    classifier: Any = None
    cam: gradcam.GradCam | None = None

    @classmethod
    def load(cls, model: Blended, finding: str | None = None) -> Member:
        classifier = load_classifier(model.run)
        return cls(**{f.name: getattr(model, f.name) for f in dataclasses.fields(model)},
                   classifier=classifier, cam=gradcam.GradCam(classifier, finding, name=model.run.path))

    def weight_for(self, finding: str | None) -> float:
        """Its weight in the blend of `finding`'s maps and probabilities (None: the binary ones)."""
        if finding is None or self.finding_weights is None:
            return self.weight
        return self.finding_weights[FINDINGS.index(finding)]


@dataclasses.dataclass(frozen=True)
class ExplainResult:

    output_dir: str
    images: list[dict[str, Any]]
    localization: dict[str, Any]
    threshold: float
    finding: str | None = None  # the gallery's target: None the binary margin, else this finding's logit


def split_probabilities(members: Sequence[Member], shards: ShardFolder, split: str, batch_size: int,
                        progress: bool = True, finding: str | None = None):
    """(ids, blended P(abnormal), labels) of every record of `split`, rows sorted by id; with `finding`,
    its blended calibrated probability and its labels (-1 where the record's findings are unknown)."""
    strategy = distribute.resolve_strategy("default")
    outputs = [predict_split(m.classifier, strategy, shards, split, batch_size,
                             progress=m.name if progress else None) for m in members]
    if finding is None:
        probs = np.stack([o.softmax[:, 1] for o in outputs], axis=1)
        temperatures, labels = [m.temperature for m in members], outputs[0].labels
    else:
        k = FINDINGS.index(finding)
        probs = np.stack([o.findings[:, k] for o in outputs], axis=1)
        temperatures, labels = [m.finding_temperatures[k] for m in members], outputs[0].finding_labels[:, k]
    p = blend_lib.blend(blend_lib.calibrate_members(probs, temperatures),
                        np.array([m.weight_for(finding) for m in members]))
    return outputs[0].ids, p, labels


def check_finding(finding: str | None, members: Sequence[Blended], ensemble: str | None) -> None:
    """Refuses --finding with an ensemble file without per-finding weights or a run without the head."""
    if finding is None:
        return
    if ensemble and any(m.finding_weights is None or m.finding_temperatures is None for m in members):
        raise UserInputError(f"--finding={finding}: --ensemble={ensemble} has no per-finding weights and "
                             "temperatures; rerun ensemble.py to write them")
    for m in members:
        if not m.run.config.get("findings_weight"):
            raise UserInputError(f"--finding={finding}: {m.run.path} {gradcam.NO_FINDINGS_HEAD}")


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


def blended_map(members: Sequence[Member], pixels: np.ndarray, finding: str | None) -> np.ndarray:
    """The ensemble's (B, S, S) maps of `finding`'s logit (None: the binary margin) over `pixels`."""
    return gradcam.ensemble_map([m.cam.maps(pixels, finding) for m in members],
                                [m.weight_for(finding) for m in members])


def _score_finding_maps(members: Sequence[Member], pixels: np.ndarray,
                        boxed: Sequence[tuple[int, str, dict[str, list]]],
                        tally: localization.LocalizationTally) -> None:
    """Scores each boxed row's map of every finding it has boxes of against that finding's boxes."""
    maps: dict[int, dict[str, np.ndarray]] = {row: {} for row, _, _ in boxed}
    for finding in sorted({f for _, _, by_finding in boxed for f in by_finding}):
        rows = [row for row, _, by_finding in boxed if finding in by_finding]
        for row, heatmap in zip(rows, blended_map(members, pixels[rows], finding)):
            maps[row][finding] = heatmap
    for row, image_id, by_finding in boxed:
        tally.add_finding_maps(image_id, maps[row], by_finding)


def explain_records(members: Sequence[Member], stream: Iterator[dict[str, Any]], gallery: set[str],
                    tally: localization.LocalizationTally | None, batch_size: int,
                    finding: str | None = None) -> dict[str, dict[str, Any]]:
    """The gallery's records with their "map" of `finding` (None: the binary margin); scores the boxed,
    uncropped ones' binary maps into `tally`, and with findings heads each box finding's own map."""
    kept: dict[str, dict[str, Any]] = {}
    own_maps = tally is not None and all(gradcam.has_findings_head(m.classifier) for m in members)

    def run(batch):
        pixels = np.repeat(np.stack([r["gray"] for r in batch])[..., None], 3, axis=-1).astype(np.float32)
        maps = blended_map(members, pixels, None)
        shown = [row for row, record in enumerate(batch) if record["image_id"] in gallery]
        target = dict(zip(shown, maps[shown] if finding is None or not shown
                          else blended_map(members, pixels[shown], finding)))
        boxed = []
        for row, (record, heatmap) in enumerate(zip(batch, maps)):
            boxes = [(b.finding, stored_box(b.xywh, heatmap.shape[0], record["crop"]))
                     for b in record["boxes"]]
            if tally is not None and boxes and record["crop"] is None:
                by_finding: dict[str, list] = {}
                for name, box in boxes:
                    by_finding.setdefault(name, []).append(box)
                tally.add(record["image_id"], heatmap, by_finding)
                boxed.append((row, record["image_id"], by_finding))
            if row in target:
                kept[record["image_id"]] = {**record, "map": target[row], "pixel_boxes": boxes}
        if own_maps and boxed:
            _score_finding_maps(members, pixels, boxed, tally)

    while batch := list(itertools.islice(stream, batch_size)):
        run(batch)
    return kept


def write_explanations(output_dir: str, gallery: Sequence[tuple[str, str, int]],
                       kept: dict[str, dict[str, Any]], scores: dict[str, dict[str, Any]],
                       report: dict[str, Any], header: dict[str, Any]) -> list[dict]:
    """Writes each gallery image's .npy and .png, then localization.json, then the index (last);
    `scores`: image id -> its probability and label entries."""
    os.makedirs(output_dir, exist_ok=True)
    entries, title = [], f"Grad-CAM of {header.get('finding') or 'abnormal vs normal'}"
    for image_id, group, rank in gallery:
        record, stem = kept[image_id], folder_lib.file_stem(group, rank, image_id)
        with atomic_path(os.path.join(output_dir, stem + ".npy")) as tmp:
            np.save(tmp, record["map"].astype(np.float32))
        write_bytes(os.path.join(output_dir, stem + ".png"),
                    render_overlay(record["gray"], record["map"], record["pixel_boxes"], title=title))
        entries.append({"image_id": image_id, "group": group, "rank": rank, **scores[image_id],
                        "heatmap": stem + ".npy", "overlay": stem + ".png"})
    write_json(os.path.join(output_dir, folder_lib.LOCALIZATION), report)
    write_json(os.path.join(output_dir, folder_lib.INDEX), {**header, "images": entries})
    return entries


def _header(config: settings.ExplainConfig, members: Sequence[Member], shards: ShardFolder,
            threshold: float, source: dict[str, Any]) -> dict[str, Any]:
    finding = config.finding
    target = {"target": TARGET, "threshold": threshold} if finding is None else {
        "target": FINDING_TARGET.format(finding), "finding": finding, "threshold": threshold,
        "threshold_rule": FINDING_THRESHOLD}
    return {"schema_version": folder_lib.SCHEMA_VERSION, **target,
            "ensemble": os.path.abspath(config.ensemble) if config.ensemble else None,
            "models": [{"name": m.name, "model_dir": os.path.abspath(m.run.path),
                        "weight": m.weight_for(finding),
                        "feature_map": list(m.cam.feature_map_shape()),
                        "feature_grid": dataclasses.asdict(m.cam.grid)} for m in members],
            "image_size": shards.image_size, "crop": shards.crop, "source": source,
            "localization_file": folder_lib.LOCALIZATION}


def _scores(ids: np.ndarray, p: np.ndarray, labels: np.ndarray,
            finding: str | None) -> dict[str, dict[str, Any]]:
    key = PROB if finding is None else finding_prob(finding)
    return {str(i): {key: float(value), "label": int(label) if label >= 0 else None}
            for i, value, label in zip(ids, p, labels)}


def run_explain(config: settings.ExplainConfig, split: str | None = None, data_dir: str | None = None,
                source: dict[str, Any] | None = None) -> ExplainResult:
    """Explains `split` of `data_dir` (default: the config's; None: the one the manifest makes
    unambiguous) with `config.model_dir`'s models (blended by `config.ensemble`) into
    `config.output_dir`: the tp/fp/fn gallery of `per_group` each (of `config.finding` when given), or
    `image_ids` / every image of `config.images` (group "asked"). `source` replaces the index's
    {data_dir, split} (the raw files behind a temporary shard folder). Bad input writes nothing."""
    data_dir, split, finding = data_dir or config.data_dir, split or config.split, config.finding
    image_ids, batch_size = config.image_ids, config.global_batch_size
    inputs = preflight.open_explain_inputs(config.model_dir, config.ensemble, data_dir, split,
                                           config.output_dir)
    shards, split = inputs.shards, inputs.split.name
    check_finding(finding, inputs.members, config.ensemble)
    threshold = (settings.FINDING_THRESHOLD if finding else settings.SINGLE_MODEL_THRESHOLD
                 if inputs.threshold is None else inputs.threshold)
    where = (f"--images={source['images']}" if (source or {}).get("images")
             else f"split {split!r} of {data_dir}")
    if image_ids:  # before the models load: a typo costs a second
        check_asked_ids(image_ids, split_ids(shards, split), where)
    members = [Member.load(model, finding) for model in inputs.members]
    ids, p, labels = split_probabilities(members, shards, split, batch_size, config.progress, finding)
    gallery = choose_gallery(ids, p, labels, threshold, config.per_group, image_ids=image_ids,
                             every_image=config.images is not None,
                             where=where if finding is None else f"{where} for {finding}")
    cropped = shards.crop == "bbox"
    tally = None if cropped else localization.LocalizationTally(shards.image_size)
    shown = [g[0] for g in gallery]
    kept = explain_records(members, read_records(shards, split, shown, with_boxes=not cropped), set(shown),
                           tally, batch_size, finding)
    report = localization.not_scored(NOT_SCORED_CROPPED) if tally is None else tally.summary()
    if localization.FINDING_MAPS in report:
        report[localization.FINDING_MAPS].update(target=FINDING_TARGET.format("each finding"),
                                                 weights=FINDING_MAPS_WEIGHTS)
    header = _header(config, members, shards, threshold,
                     source or {"data_dir": storage.abspath(data_dir), "split": split})
    scores = _scores(ids, p, labels, finding)
    entries = write_explanations(config.output_dir, gallery, kept, scores, report, header)
    return ExplainResult(config.output_dir, entries, report, threshold, finding)


def summary(result: ExplainResult) -> str:
    counts = {group: sum(e["group"] == group for e in result.images) for group in folder_lib.GROUPS}
    shown = ", ".join(f"{group} {n}" for group, n in counts.items() if n)
    target = f" of {result.finding}" if result.finding else ""
    return (f"explain: {len(result.images)} images{target} ({shown or 'none'}) at threshold "
            f"{result.threshold:.4f} -> {os.path.join(result.output_dir, folder_lib.INDEX)}\n"
            f"{localization.format_table(result.localization)}")
