"""The classifiers: the backbone registry, each backbone's input normalisation as layers, and the heads.

Importing this package registers the custom layers, so `keras.models.load_model(path, safe_mode=True)`
can rebuild a saved model in a fresh process.
"""

from models.builder import (AUGMENTATION_LAYER, WeightsUnavailableError, all_layers, build_classifier,
                            build_model, inference_model)
from models.registry import BACKBONES, TEST_BACKBONES, Backbone, get_backbone

__all__ = ["AUGMENTATION_LAYER", "BACKBONES", "TEST_BACKBONES", "Backbone", "WeightsUnavailableError",
           "all_layers", "build_classifier", "build_model", "get_backbone", "inference_model"]
