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
    batchnorm_momentum: float | None = None,
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
      batchnorm_momentum: momentum of every BatchNormalization layer's moving statistics; None
        keeps the backbone's (0.99). From scratch and for a few hundred steps, 0.99 leaves the
        statistics that inference uses far from the trained ones; 0.9 catches up in ~50 steps.

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
    model = keras.Model(inputs, outputs, name=backbone)
    if batchnorm_momentum is not None:
        set_batchnorm_momentum(model, batchnorm_momentum)
    return model


def set_batchnorm_momentum(model: keras.Model, momentum: float) -> int:
    """Sets the momentum of every BatchNormalization layer in `model` (nested models included).

    Returns:
      How many layers were changed.

    Raises:
      ValueError: momentum outside [0, 1).
    """
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"batchnorm_momentum must be in [0, 1), got {momentum}")
    changed, stack = 0, list(model.layers)
    while stack:
        layer = stack.pop()
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum
            changed += 1
        stack.extend(getattr(layer, "layers", []))
    return changed
