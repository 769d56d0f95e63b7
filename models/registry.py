"""The backbone registry: name → Keras Applications constructor, input normalisation, head and defaults."""

from __future__ import annotations

import dataclasses
from typing import Callable

import keras

from models import preprocessing
from models.heads import Head
from models.tiny import tiny_backbone


@dataclasses.dataclass(frozen=True)
class Backbone:
    """One registry entry.

    Attributes:
      constructor: Keras Applications-style constructor (include_top, weights, input_shape).
      preprocessing: returns the layers that map 0..255 RGB pixels to what `constructor` expects.
      head: the classification head on the feature map.
      optimizer: "adam" or "sgd".
      learning_rate: the reference learning rate.
      epochs: the reference epoch count.
      augment: whether the reference augmented this backbone's training images.
      pretrained: `constructor` has ImageNet weights (its `weights="imagenet"` branch); a local
        weights file is then loaded into the network that branch builds.
    """

    constructor: Callable[..., keras.Model]
    preprocessing: Callable[[], list]
    head: Head
    optimizer: str
    learning_rate: float
    epochs: int
    augment: bool
    pretrained: bool = True


# The reference's three models. Its notebook fixes ResNet50 at 5 epochs; EfficientNetB3 and
# DenseNet121 ran with early stopping, so 10 epochs (early stopping usually ends them sooner).
BACKBONES: dict[str, Backbone] = {
    "efficientnet_b3": Backbone(
        constructor=keras.applications.EfficientNetB3,
        preprocessing=preprocessing.built_in,
        head=Head(batch_norm=True, dropout_before_dense=0.3, dropout_after_dense=0.0),
        optimizer="adam",
        learning_rate=1e-4,
        epochs=10,
        augment=True,
    ),
    "resnet50": Backbone(
        constructor=keras.applications.ResNet50,
        preprocessing=preprocessing.caffe,
        head=Head(batch_norm=False, dropout_before_dense=0.0, dropout_after_dense=0.5),
        optimizer="sgd",
        learning_rate=1e-3,
        epochs=5,
        augment=False,
    ),
    "densenet121": Backbone(
        constructor=keras.applications.DenseNet121,
        preprocessing=preprocessing.torch,
        head=Head(batch_norm=True, dropout_before_dense=0.3, dropout_after_dense=0.3),
        optimizer="adam",
        learning_rate=1e-4,
        epochs=10,
        augment=True,
    ),
}

# Fast stand-ins for tests (the end-to-end test included); reachable from Python, never from a CLI flag.
TEST_BACKBONES: dict[str, Backbone] = {
    "tiny_test": Backbone(
        constructor=tiny_backbone,
        preprocessing=preprocessing.unit_scale,
        head=Head(batch_norm=True, dropout_before_dense=0.1, dropout_after_dense=0.0, dense_units=32),
        optimizer="adam",
        learning_rate=1e-3,
        epochs=3,
        augment=False,
        pretrained=False,
    ),
}


def get_backbone(name: str) -> Backbone:
    """Returns the registry entry `name` (a real backbone or a test one).

    Raises:
      ValueError: unknown name, listing the valid ones.
    """
    if name in BACKBONES:
        return BACKBONES[name]
    if name in TEST_BACKBONES:
        return TEST_BACKBONES[name]
    raise ValueError(
        f"unknown backbone {name!r}; valid: {', '.join(BACKBONES)} "
        f"(tests may also use {', '.join(TEST_BACKBONES)})"
    )
