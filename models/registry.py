"""The backbone registry and the strategy and precision names (no TensorFlow at import)."""

from __future__ import annotations

import dataclasses
import importlib
from typing import Callable

from models.heads import Head


@dataclasses.dataclass(frozen=True)
class Backbone:
    """One registry entry (adding a backbone: an entry here and its head in tests/test_models.py)."""

    constructor: str  # dotted path of a Keras Applications-style constructor
    preprocessing: str  # the `models.preprocessing` function making its 0..255 RGB normalisation
    head: Head
    optimizer: str  # "adam" or "sgd"
    learning_rate: float  # the reference's
    epochs: int  # the reference's
    augment: bool  # whether the reference augmented
    ensemble_weight: float  # the reference blend's weight (normalised over the blended models)
    from_scratch_learning_rate: float  # learns from random weights in a CPU budget (the demo)
    pretrained: bool = True  # has ImageNet weights; a local weights file loads into that network
    from_scratch_feature_layer: str | None = None  # the head's input layer from random weights

    def make_backbone(self) -> Callable:
        module, name = self.constructor.rsplit(".", 1)
        return getattr(importlib.import_module(module), name)

    def make_preprocessing(self) -> list:
        from models import preprocessing

        return getattr(preprocessing, self.preprocessing)()


# The reference's three models and blend. From random weights EfficientNetB3's deep blocks on 4x4 and
# 2x2 maps lose the faint lesions' gradient, so it is cut after its third stage (bench/RESULTS.md).
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

# Fast stand-ins for tests; reachable from Python, never from a command line.
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


FEATURE_LAYER_FROM_SCRATCH = "from_scratch"  # feature_layer's name for `from_scratch_feature_layer`
STRATEGIES = ("auto", "default", "mirrored", "multi_worker")  # see models.distribute
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")


def resolve_feature_layer(backbone: str, feature_layer: str | None) -> str | None:
    """The layer name `feature_layer` stands for in `backbone`; None (or empty) is the whole backbone."""
    if feature_layer == FEATURE_LAYER_FROM_SCRATCH:
        return get_backbone(backbone).from_scratch_feature_layer
    return feature_layer or None


def get_backbone(name: str) -> Backbone:
    """The registry entry `name` (a real or a test backbone); ValueError listing the valid ones."""
    if name not in BACKBONES and name not in TEST_BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; valid: {', '.join(BACKBONES)} "
                         f"(tests may also use {', '.join(TEST_BACKBONES)})")
    return {**BACKBONES, **TEST_BACKBONES}[name]


def describe(field: str, fmt: str = "{}") -> str:
    """"name value, ..." of one field over the user-facing backbones, for help texts."""
    return ", ".join(f"{name} {fmt.format(getattr(spec, field))}" for name, spec in BACKBONES.items())
