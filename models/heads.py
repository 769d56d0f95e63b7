"""The classification heads on a backbone's feature map (the reference's three variants)."""

from __future__ import annotations

import dataclasses

NUM_CLASSES = 2  # column 0: P(normal), column 1: P(abnormal)
OUTPUT_LAYER = "probabilities"  # the softmax Dense layer; its input is the head's last features
POOL_LAYER = "head_pool"  # the head's first layer; its input is the feature map the head sees (Grad-CAM's)


@dataclasses.dataclass(frozen=True)
class Head:
    """GlobalAveragePooling2D → [BatchNorm] → [Dropout] → Dense ReLU → [Dropout] → Dense softmax."""

    batch_norm: bool
    dropout_before_dense: float  # 0: no Dropout layer
    dropout_after_dense: float  # 0: no Dropout layer
    dense_units: int = 1024


def build_head(features, head: Head, *, seed: int = 0):
    """`head` on a feature map (B, H, W, C): (B, 2) probabilities, float32 under any policy."""
    from keras import layers  # here, so the registry can import `Head` without TensorFlow

    x = layers.GlobalAveragePooling2D(name=POOL_LAYER)(features)
    if head.batch_norm:
        x = layers.BatchNormalization(name="head_bn")(x)
    if head.dropout_before_dense:
        x = layers.Dropout(head.dropout_before_dense, seed=seed, name="head_dropout_1")(x)
    x = layers.Dense(head.dense_units, activation="relu", name="head_dense")(x)
    if head.dropout_after_dense:
        x = layers.Dropout(head.dropout_after_dense, seed=seed + 1, name="head_dropout_2")(x)
    return layers.Dense(NUM_CLASSES, activation="softmax", dtype="float32", name=OUTPUT_LAYER)(x)
