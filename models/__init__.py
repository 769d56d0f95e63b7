"""The classifiers: the backbone registry, each backbone's input normalisation as layers, and the heads.

Importing the package loads nothing heavy: `models.registry` (names and defaults) reads without
TensorFlow, and the model-building names below load Keras on first use. `models.preprocessing`
registers the project's custom layers, so `keras.models.load_model(path, safe_mode=True)` can
rebuild a saved model in a fresh process (`models.saved.load_classifier` imports it).
"""

import importlib

from models.registry import BACKBONES, TEST_BACKBONES, Backbone, get_backbone

_FROM_BUILDER = ("AUGMENTATION_LAYER", "all_layers", "build_classifier",
                 "build_model", "inference_model")

__all__ = ["BACKBONES", "TEST_BACKBONES", "Backbone", "get_backbone", *_FROM_BUILDER]


def __getattr__(name: str):
    if name in _FROM_BUILDER:
        return getattr(importlib.import_module("models.builder"), name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")
