"""The classifiers (building loads Keras on first use) and what training, evaluation and serving share."""

import importlib

from models.registry import BACKBONES, TEST_BACKBONES, Backbone, get_backbone

_FROM_BUILDER = ("AUGMENTATION_LAYER", "all_layers", "build_classifier", "build_model", "inference_model",
                 "split_augmentation")

__all__ = ["BACKBONES", "TEST_BACKBONES", "Backbone", "get_backbone", *_FROM_BUILDER]


def __getattr__(name: str):
    if name in _FROM_BUILDER:
        return getattr(importlib.import_module("models.builder"), name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")
