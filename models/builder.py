"""Assembling a classifier: [augmentation] → backbone normalisation → backbone → head.

The classifier (normalisation → backbone → head) is built once. A training model that augments
wraps that same classifier behind the augmentation block, so the weights it trains are the
classifier's own, and export saves that trained graph (see `models.precision`), never a copy
rebuilt from flags: a Keras Applications constructor is not a pure function of the architecture
(EfficientNet adds a `Rescaling` layer only when `weights == "imagenet"`).
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import keras

from contracts.errors import UserInputError
from models.heads import build_head
from models.registry import get_backbone
from pipeline.augment import make_augmentation

AUGMENTATION_LAYER = "augmentation"  # the name make_augmentation gives its block
WEIGHTS_IMAGENET = "imagenet"
WEIGHTS_NONE = "none"



def _keras_cache_dir() -> str:
    return os.path.join(os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras")),
                        "models")


@contextlib.contextmanager
def _imagenet_download_from(path: str) -> Iterator[None]:
    # The constructors fetch ImageNet weights through keras' file_utils.get_file, looked up on the
    # module at call time. Answering it with a local file runs the constructor's ImageNet branch
    # (its architecture included) on that file, with no network and no hash check.
    from keras.src.utils import file_utils

    original = file_utils.get_file
    file_utils.get_file = lambda *args, **kwargs: path
    try:
        yield
    finally:
        file_utils.get_file = original


def _cut(net: keras.Model, feature_layer: str | None) -> keras.Model:
    if feature_layer is None:
        return net
    try:
        layer = net.get_layer(feature_layer)
    except ValueError:
        raise UserInputError(
            f"--feature_layer={feature_layer}: {net.name} has no such layer; pass one of its layer names "
            f"(for example {net.layers[len(net.layers) // 2].name}), or leave it unset for the whole backbone"
        ) from None
    return keras.Model(net.input, layer.output, name=net.name)


def _build_backbone(name: str, image_size: int, weights: str) -> keras.Model:
    spec = get_backbone(name)
    shape = (image_size, image_size, 3)
    if weights == WEIGHTS_NONE:
        return spec.make_backbone()(include_top=False, weights=None, input_shape=shape)
    if weights == WEIGHTS_IMAGENET:
        try:
            return spec.make_backbone()(include_top=False, weights=WEIGHTS_IMAGENET, input_shape=shape)
        except Exception as err:  # Keras raises a bare Exception when a download fails.
            if "URL fetch failure" not in str(err):
                raise
            raise UserInputError(
                f"backbone {name}: the ImageNet weights could not be downloaded ({err}) and are not "
                f"in the Keras cache {_keras_cache_dir()}; run once where there is internet (or copy "
                "the file into that folder), or pass --weights=PATH for a local weights file, "
                "or --weights=none to train from scratch"
            ) from err
    if not os.path.isfile(weights):
        raise FileNotFoundError(
            f"weights file {weights!r} for backbone {name} not found; pass 'imagenet', 'none' "
            "or the path of a weights file saved from this backbone (include_top=False)"
        )
    # A local file is ImageNet's file obtained offline (or one saved from a backbone built the same
    # way): build exactly the network that --weights=imagenet builds, then load the file.
    context = _imagenet_download_from(weights) if spec.pretrained else contextlib.nullcontext()
    try:
        with context:
            return spec.make_backbone()(include_top=False,
                                    weights=WEIGHTS_IMAGENET if spec.pretrained else weights,
                                    input_shape=shape)
    except (ValueError, OSError) as err:
        raise UserInputError(
            f"weights file {weights!r} does not fit backbone {name} "
            f"({str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}); pass a "
            f"no-top weights file of {name} (include_top=False)"
        ) from err


def build_classifier(
    backbone: str,
    image_size: int,
    *,
    weights: str = WEIGHTS_IMAGENET,
    seed: int = 0,
    batchnorm_momentum: float | None = None,
    feature_layer: str | None = None,
) -> keras.Model:
    """Builds the inference classifier `backbone` (no augmentation) under the current dtype policy.

    The normalisation layers in front of the backbone and the final softmax compute in float32
    whatever the policy (`models.precision.with_policy` keeps that rule).

    Args:
      backbone: a `BACKBONES` name (or a `TEST_BACKBONES` name in tests).
      image_size: side S of the square input.
      weights: "imagenet" (downloaded or from the Keras cache), "none" (random initialisation) or
        the path of a local no-top weights file, loaded into the same network "imagenet" builds.
      seed: seed of the dropout layers.
      batchnorm_momentum: momentum of every BatchNormalization layer's moving statistics; None
        keeps the backbone's (0.99). From scratch and for a few hundred steps, 0.99 leaves the
        statistics that inference uses far from the trained ones; 0.9 catches up in ~50 steps.
      feature_layer: the backbone layer whose output feeds the head (the layers after it are
        dropped, weights loaded first); None keeps the whole backbone.

    Returns:
      A model taking float (B, S, S, 3) pixels in 0..255 and returning (B, 2) float32 softmax
      probabilities; column 1 is P(abnormal).

    Raises:
      ValueError: unknown backbone (listing the valid ones).
      FileNotFoundError: `weights` is neither keyword nor an existing file.
      UserInputError: ImageNet weights neither downloadable nor cached, or a weights file
        that does not fit the backbone.
      UserInputError: `feature_layer` is not a layer of the backbone.
    """
    spec = get_backbone(backbone)
    inputs = keras.Input((image_size, image_size, 3), dtype="float32", name="image")
    x = inputs
    for layer in spec.make_preprocessing():
        x = layer(x)
    features = _cut(_build_backbone(backbone, image_size, weights), feature_layer)(x)
    outputs = build_head(features, spec.head, seed=seed)
    model = keras.Model(inputs, outputs, name=backbone)
    if batchnorm_momentum is not None:
        set_batchnorm_momentum(model, batchnorm_momentum)
    return model


def build_model(
    backbone: str,
    image_size: int,
    *,
    weights: str = WEIGHTS_IMAGENET,
    augment: bool | None = None,
    seed: int = 0,
    batchnorm_momentum: float | None = None,
    feature_layer: str | None = None,
) -> keras.Model:
    """Builds the training model of `backbone` under the current Keras dtype policy.

    Without augmentation it is the classifier itself; with it, the augmentation block followed by
    the classifier as one nested layer (`inference_model` returns it). Build it inside
    `strategy.scope()` when training under a distribution strategy.

    Args:
      backbone, image_size, weights, seed, batchnorm_momentum, feature_layer: as for
        `build_classifier`
        (`seed` also seeds the augmentation).
      augment: random rotation/shift/shear/zoom at training time (identity at inference);
        None takes the backbone's reference default.

    Returns:
      A model taking float (B, S, S, 3) pixels in 0..255 and returning (B, 2) float32 softmax
      probabilities; column 1 is P(abnormal).

    Raises:
      As `build_classifier`.
    """
    spec = get_backbone(backbone)
    augment = spec.augment if augment is None else augment
    classifier = build_classifier(backbone, image_size, weights=weights, seed=seed,
                                  batchnorm_momentum=batchnorm_momentum, feature_layer=feature_layer)
    if not augment:
        return classifier
    inputs = keras.Input((image_size, image_size, 3), dtype="float32", name="image")
    # Augment raw pixels, before normalisation, so fill values stay in the image's range.
    augmented = make_augmentation(seed)(inputs)
    return keras.Model(inputs, classifier(augmented), name=f"{backbone}_training")


def inference_model(model: keras.Model) -> keras.Model:
    """Returns the classifier a `build_model` model computes with at inference (shared weights)."""
    if AUGMENTATION_LAYER not in [layer.name for layer in model.layers]:
        return model
    return model.layers[-1]  # build_model calls the classifier last


def set_batchnorm_momentum(model: keras.Model, momentum: float) -> int:
    """Sets the momentum of every BatchNormalization layer in `model` (nested models included).

    Returns:
      How many layers were changed.

    Raises:
      ValueError: momentum outside [0, 1).
    """
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"batchnorm_momentum must be in [0, 1), got {momentum}")
    changed = 0
    for layer in all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum
            changed += 1
    return changed


def all_layers(model: keras.Model) -> list[keras.Layer]:
    """Returns every layer of `model`, nested models' layers included (depth first)."""
    found = []
    for layer in model.layers:
        found.append(layer)
        if isinstance(layer, keras.Model) or hasattr(layer, "layers"):
            found.extend(all_layers(layer))
    return found
