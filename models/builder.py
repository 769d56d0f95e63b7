"""Assembling a classifier: [augmentation] → backbone normalisation → backbone → head."""

from __future__ import annotations

import os

import keras

from models.heads import build_head
from models.registry import get_backbone
from pipeline.augment import make_augmentation

AUGMENTATION_LAYER = "augmentation"  # the name make_augmentation gives its block
WEIGHTS_IMAGENET = "imagenet"
WEIGHTS_NONE = "none"


class WeightsUnavailableError(RuntimeError):
    """ImageNet weights were asked for but can be neither downloaded nor found in the Keras cache."""


def _constructor_weights(weights: str, backbone: str) -> str | None:
    if weights == WEIGHTS_NONE:
        return None
    if weights == WEIGHTS_IMAGENET:
        return WEIGHTS_IMAGENET
    if not os.path.isfile(weights):
        raise FileNotFoundError(
            f"weights file {weights!r} for backbone {backbone} not found; pass 'imagenet', 'none' "
            "or the path of a weights file saved from this backbone (include_top=False)"
        )
    return weights


def _keras_cache_dir() -> str:
    return os.path.join(os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras")),
                        "models")


def _build_backbone(name: str, image_size: int, weights: str) -> keras.Model:
    spec = get_backbone(name)
    constructor_weights = _constructor_weights(weights, name)
    try:
        return spec.constructor(include_top=False, weights=constructor_weights,
                                input_shape=(image_size, image_size, 3))
    except Exception as err:  # Keras raises a bare Exception when a download fails.
        if constructor_weights == WEIGHTS_IMAGENET and "URL fetch failure" in str(err):
            raise WeightsUnavailableError(
                f"backbone {name}: the ImageNet weights could not be downloaded ({err}) and are not "
                f"in the Keras cache {_keras_cache_dir()}; run once where there is internet (or copy "
                "the file into that folder), or pass --weights=PATH for a local weights file, "
                "or --weights=none to train from scratch"
            ) from err
        raise


def build_model(
    backbone: str,
    image_size: int,
    *,
    weights: str = WEIGHTS_IMAGENET,
    augment: bool | None = None,
    seed: int = 0,
) -> keras.Model:
    """Builds the classifier `backbone` under the current Keras dtype policy.

    Build it inside `strategy.scope()` when training under a distribution strategy.

    Args:
      backbone: a `BACKBONES` name (or a `TEST_BACKBONES` name in tests).
      image_size: side S of the square input.
      weights: "imagenet" (downloaded or from the Keras cache), "none" (random initialisation) or
        the path of a local weights file for the backbone without its top.
      augment: random rotation/shift/shear/zoom at training time (identity at inference);
        None takes the backbone's reference default.
      seed: seed of the augmentation and dropout layers.

    Returns:
      A model taking float (B, S, S, 3) pixels in 0..255 and returning (B, 2) float32 softmax
      probabilities; column 1 is P(abnormal).

    Raises:
      ValueError: unknown backbone (listing the valid ones).
      FileNotFoundError: `weights` is neither keyword nor an existing file.
      WeightsUnavailableError: ImageNet weights requested but neither downloadable nor cached.
    """
    spec = get_backbone(backbone)
    augment = spec.augment if augment is None else augment
    inputs = keras.Input((image_size, image_size, 3), dtype="float32", name="image")
    x = inputs
    if augment:
        # Augment raw pixels, before normalisation, so fill values stay in the image's range.
        x = make_augmentation(seed)(x)
    for layer in spec.preprocessing():
        x = layer(x)
    features = _build_backbone(backbone, image_size, weights)(x)
    outputs = build_head(features, spec.head, seed=seed)
    return keras.Model(inputs, outputs, name=backbone)
