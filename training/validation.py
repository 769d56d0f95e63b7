"""Scoring a split after an epoch: predictions with their ids, and loss, accuracy and AUROC from them."""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from contracts.manifest import ShardFolder
from models import distribute
from models.heads import split_outputs
from models.metrics import auroc_or_nan
from pipeline import input_pipeline

EPSILON = 1e-7  # probability clip of the cross-entropy, as Keras' own


@dataclasses.dataclass(frozen=True)
class Scores:

    image_ids: np.ndarray  # (N,) str
    labels: np.ndarray  # (N,) int 0/1
    probabilities: np.ndarray  # (N, 2) float32 softmax; column 1 is P(abnormal)
    findings: np.ndarray | None = None  # (N, 14) float32 sigmoids; None without the findings head
    finding_labels: np.ndarray | None = None  # (N, 14) int 1/0, -1 where the record's findings are unknown


def summarize(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """{"loss", "accuracy", "auroc"} of (N, 2) probabilities against 0/1 labels (AUROC NaN with one class)."""
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    picked = np.clip(probabilities[np.arange(len(labels)), labels], EPSILON, 1.0 - EPSILON)
    return {
        "loss": float(-np.mean(np.log(picked))),
        "accuracy": float(np.mean(np.argmax(probabilities, axis=1) == labels)),
        "auroc": auroc_or_nan(labels, probabilities[:, 1]),
    }


def findings_auroc(scores: Scores) -> float:
    """The mean AUROC over the findings with both classes among known records (NaN: none has)."""
    if scores.findings is None:
        return float("nan")
    found = [auroc_or_nan(y[y >= 0], p[y >= 0]) for y, p in zip(scores.finding_labels.T, scores.findings.T)]
    found = [a for a in found if np.isfinite(a)]
    return float(np.mean(found)) if found else float("nan")


def precision_parity(trained: Scores, served: Scores, policy: str) -> dict[str, float | int | str]:
    """How far the float32 graph's P(abnormal) (`served`) is from the `policy` graph's that trained
    (`trained`), over the same images: contracts.run_folder.PRECISION_PARITY's record."""
    if not np.array_equal(trained.image_ids, served.image_ids):
        raise ValueError("the two scorings of the validation split differ in their images")
    gap = np.abs(served.probabilities[:, 1].astype(np.float64) - trained.probabilities[:, 1])
    record = {"trained_under": policy, "images": int(gap.size), "max_abs": float(gap.max(initial=0.0)),
              "median_abs": float(np.median(gap)) if gap.size else 0.0,
              "auroc_trained": auroc_or_nan(trained.labels, trained.probabilities[:, 1]),
              "auroc_served": auroc_or_nan(served.labels, served.probabilities[:, 1])}
    if served.findings is not None:  # the served p_findings too: the largest gap over every finding
        findings_gap = np.abs(served.findings.astype(np.float64) - trained.findings)
        record["findings_max_abs"] = float(findings_gap.max(initial=0.0))
    return record


def make_distributed_split(strategy: tf.distribute.Strategy, shards: ShardFolder, split: str,
                           global_batch_size: int, *, cache: bool = False, uint8_gray: bool = False):
    """`split` as a distributed dataset that every worker reads whole, to compute the same metrics."""
    per_replica = distribute.per_replica_batch(global_batch_size, strategy, "global_batch_size")
    return strategy.distribute_datasets_from_function(
        lambda _: input_pipeline.make_eval_dataset(shards, split, per_replica, cache=cache,
                                                   uint8_gray=uint8_gray),
        # Id strings cannot be copied to a GPU: batches stay on the host; the model call moves images.
        options=tf.distribute.InputOptions(experimental_fetch_to_device=False))


def score(strategy: tf.distribute.Strategy, predict_step, dataset) -> Scores:
    found = {key: [] for key in ("image_id", "label", "findings", "findings_known", "outputs")}
    for batch in dataset:
        batch = {**batch, "outputs": predict_step(batch["image"])}
        for key, values in found.items():
            values.extend(t.numpy() for t in strategy.experimental_local_results(batch[key]))
    merged = {key: np.concatenate(values) for key, values in found.items()}
    softmax, findings = split_outputs(merged["outputs"].astype(np.float32))
    known = merged["findings_known"].astype(bool)[:, None]
    return Scores(
        image_ids=np.array([i.decode() for i in merged["image_id"]]),
        labels=merged["label"].astype(np.int64),
        probabilities=softmax,
        findings=findings,
        finding_labels=None if findings is None else np.where(known, merged["findings"], -1).astype(np.int64),
    )
