"""Scoring a split after an epoch: predictions with their ids, and loss, accuracy and AUROC from them."""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from contracts.manifest import ShardFolder
from models import distribute
from models.metrics import auroc_or_nan
from pipeline import input_pipeline

EPSILON = 1e-7  # probability clip of the cross-entropy, as Keras' own


@dataclasses.dataclass(frozen=True)
class Scores:

    image_ids: np.ndarray  # (N,) str
    labels: np.ndarray  # (N,) int 0/1
    probabilities: np.ndarray  # (N, 2) float32 softmax; column 1 is P(abnormal)


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
    ids, labels, probabilities = [], [], []
    for batch in dataset:
        ids.extend(t.numpy() for t in strategy.experimental_local_results(batch["image_id"]))
        labels.extend(t.numpy() for t in strategy.experimental_local_results(batch["label"]))
        output = predict_step(batch["image"])
        probabilities.extend(t.numpy() for t in strategy.experimental_local_results(output))
    return Scores(
        image_ids=np.array([i.decode() for i in np.concatenate(ids)]),
        labels=np.concatenate(labels).astype(np.int64),
        probabilities=np.concatenate(probabilities).astype(np.float32),
    )
