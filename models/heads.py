"""The classification heads on a backbone's feature map (the reference's three variants)."""

from __future__ import annotations

import dataclasses

from contracts.labels import FINDINGS

NUM_CLASSES = 2  # column 0: P(normal), column 1: P(abnormal)
OUTPUT_LAYER = "probabilities"  # the softmax Dense layer; its input is the head's last features
FINDINGS_LAYER = "findings"  # the 14 sigmoids beside OUTPUT_LAYER, on the same features
OUTPUTS_LAYER = "outputs"  # with the findings head: softmax (2) then the findings (14), one (B, 16) tensor
POOL_LAYER = "head_pool"  # the head's first layer; its input is the feature map the head sees (Grad-CAM's)


@dataclasses.dataclass(frozen=True)
class Head:
    """GlobalAveragePooling2D → [BatchNorm] → [Dropout] → Dense ReLU → [Dropout] → Dense softmax."""

    batch_norm: bool
    dropout_before_dense: float  # 0: no Dropout layer
    dropout_after_dense: float  # 0: no Dropout layer
    dense_units: int = 1024


def build_head(features, head: Head, *, seed: int = 0, findings: bool = False):
    """`head` on a feature map (B, H, W, C): (B, 2) probabilities, float32 under any policy; with
    `findings`, (B, 16): those two, then a sigmoid per NIH finding on the same features."""
    from keras import layers  # here, so the registry can import `Head` without TensorFlow

    x = layers.GlobalAveragePooling2D(name=POOL_LAYER)(features)
    if head.batch_norm:
        x = layers.BatchNormalization(name="head_bn")(x)
    if head.dropout_before_dense:
        x = layers.Dropout(head.dropout_before_dense, seed=seed, name="head_dropout_1")(x)
    x = layers.Dense(head.dense_units, activation="relu", name="head_dense")(x)
    if head.dropout_after_dense:
        x = layers.Dropout(head.dropout_after_dense, seed=seed + 1, name="head_dropout_2")(x)
    binary = layers.Dense(NUM_CLASSES, activation="softmax", dtype="float32", name=OUTPUT_LAYER)(x)
    if not findings:
        return binary
    per_finding = layers.Dense(len(FINDINGS), activation="sigmoid", dtype="float32", name=FINDINGS_LAYER)(x)
    return layers.Concatenate(dtype="float32", name=OUTPUTS_LAYER)([binary, per_finding])


def output_width(findings: bool) -> int:
    return NUM_CLASSES + (len(FINDINGS) if findings else 0)


def split_outputs(outputs):
    """(softmax (B, 2), findings (B, 14) or None) of a classifier's outputs, NumPy or tensor."""
    width = outputs.shape[-1]
    if width not in (output_width(False), output_width(True)):
        raise ValueError(f"classifier outputs have {width} columns, not {output_width(False)} or "
                         f"{output_width(True)}")
    return outputs[:, :NUM_CLASSES], outputs[:, NUM_CLASSES:] if width > NUM_CLASSES else None
