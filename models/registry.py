"""The backbone registry: one entry per backbone, the one place a backbone is described.

An entry names its Keras Applications constructor and its input normalisation rather than holding
them, so this module imports no TensorFlow: the command-line flags, their help texts, the
ensemble's reference weights and the demo read the registry without loading it. Adding a
backbone is adding an entry here (and its reference head to `tests/test_models.py`).
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Callable

from models.heads import Head


@dataclasses.dataclass(frozen=True)
class Backbone:
    """One registry entry.

    Attributes:
      constructor: dotted path of a Keras Applications-style constructor (include_top, weights,
        input_shape), imported when a model is built.
      preprocessing: name of the `models.preprocessing` function returning the layers that map
        0..255 RGB pixels to what `constructor` expects.
      head: the classification head on the feature map.
      optimizer: "adam" or "sgd".
      learning_rate: the reference learning rate.
      epochs: the reference epoch count.
      augment: whether the reference augmented this backbone's training images.
      ensemble_weight: the reference blend's weight (weights are normalised over the blended models).
      from_scratch_learning_rate: a rate that learns from random weights in a CPU-sized budget
        (the synthetic demo), where the reference rate barely moves the weights.
      pretrained: `constructor` has ImageNet weights (its `weights="imagenet"` branch); a local
        weights file is then loaded into the network that branch builds.
      from_scratch_feature_layer: the layer whose output feeds the head when the backbone learns
        from random weights in a CPU-sized budget (`train.py --feature_layer=from_scratch`); None
        keeps the whole backbone there too.
    """

    constructor: str
    preprocessing: str
    head: Head
    optimizer: str
    learning_rate: float
    epochs: int
    augment: bool
    ensemble_weight: float
    from_scratch_learning_rate: float
    pretrained: bool = True
    from_scratch_feature_layer: str | None = None

    def make_backbone(self) -> Callable:
        """Imports and returns the constructor."""
        module, name = self.constructor.rsplit(".", 1)
        return getattr(importlib.import_module(module), name)

    def make_preprocessing(self) -> list:
        """Returns fresh normalisation layers."""
        from models import preprocessing

        return getattr(preprocessing, self.preprocessing)()


# The reference's three models. Its notebook fixes ResNet50 at 5 epochs; EfficientNetB3 and
# DenseNet121 ran with early stopping, so 10 epochs (early stopping usually ends them sooner).
# Its blend: EfficientNet 0.6, DenseNet 0.3, ResNet 0.1. From scratch on the small synthetic set,
# ten times the reference rates learn the lesions in a CPU budget. EfficientNetB3 does not learn there
# at all (test AUROC 0.52 after 8 epochs at 64 px): 18 of its 26 blocks run on 4x4 and 2x2 maps, and
# from random weights the gradient of faint lesions does not survive that depth. Cut after its third
# stage (the stem and 7 blocks, about 170K parameters, 8x8 maps at 64 px) it reaches 0.89-0.92 in a
# third of the time, at 3e-3.
BACKBONES: dict[str, Backbone] = {
    "efficientnet_b3": Backbone(
        constructor="keras.applications.EfficientNetB3",
        preprocessing="built_in",
        head=Head(batch_norm=True, dropout_before_dense=0.3, dropout_after_dense=0.0),
        optimizer="adam",
        learning_rate=1e-4,
        epochs=10,
        augment=True,
        ensemble_weight=0.6,
        from_scratch_learning_rate=3e-3,
        from_scratch_feature_layer="block3c_add",
    ),
    "resnet50": Backbone(
        constructor="keras.applications.ResNet50",
        preprocessing="caffe",
        head=Head(batch_norm=False, dropout_before_dense=0.0, dropout_after_dense=0.5),
        optimizer="sgd",
        learning_rate=1e-3,
        epochs=5,
        augment=False,
        ensemble_weight=0.1,
        from_scratch_learning_rate=1e-2,
    ),
    "densenet121": Backbone(
        constructor="keras.applications.DenseNet121",
        preprocessing="torch",
        head=Head(batch_norm=True, dropout_before_dense=0.3, dropout_after_dense=0.3),
        optimizer="adam",
        learning_rate=1e-4,
        epochs=10,
        augment=True,
        ensemble_weight=0.3,
        from_scratch_learning_rate=1e-3,
    ),
}

# Fast stand-ins for tests (the end-to-end test included); reachable from Python, never from a CLI flag.
TEST_BACKBONES: dict[str, Backbone] = {
    "tiny_test": Backbone(
        constructor="models.tiny.tiny_backbone",
        preprocessing="unit_scale",
        head=Head(batch_norm=True, dropout_before_dense=0.1, dropout_after_dense=0.0, dense_units=32),
        optimizer="adam",
        learning_rate=1e-3,
        epochs=3,
        augment=False,
        ensemble_weight=1.0,
        from_scratch_learning_rate=1e-3,
        pretrained=False,
    ),
}


# The --feature_layer keyword for an entry's `from_scratch_feature_layer`.
FEATURE_LAYER_FROM_SCRATCH = "from_scratch"


def resolve_feature_layer(backbone: str, feature_layer: str | None) -> str | None:
    """Returns the layer name `feature_layer` stands for in `backbone`: None for the whole backbone.

    `FEATURE_LAYER_FROM_SCRATCH` is the entry's from-scratch layer (None where it has none); an
    empty value is the whole backbone; anything else is a layer name, checked when the model is built.
    """
    if feature_layer == FEATURE_LAYER_FROM_SCRATCH:
        return get_backbone(backbone).from_scratch_feature_layer
    return feature_layer or None


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


def describe(field: str, fmt: str = "{}") -> str:
    """Returns "name value, ..." of one field over the user-facing backbones, for help texts."""
    return ", ".join(f"{name} {fmt.format(getattr(spec, field))}" for name, spec in BACKBONES.items())
