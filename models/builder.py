"""Assembling a classifier: [augmentation] → backbone normalisation → backbone → head."""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Iterator

import keras

from contracts.errors import UserInputError
from models.augment import AUGMENTATION_LAYER, make_augmentation
from models.heads import build_head
from models.registry import get_backbone

WEIGHTS_IMAGENET = "imagenet"
WEIGHTS_NONE = "none"


@contextlib.contextmanager
def _imagenet_download_from(path: str) -> Iterator[None]:
    # The constructors fetch ImageNet weights through file_utils.get_file, looked up at call time:
    # answering it with a local file runs their ImageNet branch on that file, offline, unhashed.
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
            f"feature_layer={feature_layer}: {net.name} has no such layer; pass one of its layer names "
            f"(for example {net.layers[len(net.layers) // 2].name}), or leave it unset for the whole backbone"
        ) from None
    return keras.Model(net.input, layer.output, name=net.name)


def _build_backbone(name: str, image_size: int, weights: str) -> keras.Model:
    spec = get_backbone(name)
    make = functools.partial(spec.make_backbone(), include_top=False, input_shape=(image_size, image_size, 3))
    if weights == WEIGHTS_NONE:
        return make(weights=None)
    if weights == WEIGHTS_IMAGENET:
        try:
            return make(weights=WEIGHTS_IMAGENET)
        except Exception as err:  # Keras raises a bare Exception when a download fails.
            if "URL fetch failure" not in str(err):
                raise
            cache = os.path.join(os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras")), "models")
            raise UserInputError(
                f"backbone {name}: the ImageNet weights could not be downloaded ({err}) and are not "
                f"in the Keras cache {cache}; run once where there is internet (or copy the file into "
                "that folder), or pass weights=PATH for a local weights file, or weights=none to train "
                "from scratch"
            ) from err
    if not os.path.isfile(weights):
        raise FileNotFoundError(
            f"weights file {weights!r} for backbone {name} not found; pass 'imagenet', 'none' "
            "or the path of a weights file saved from this backbone (include_top=False)"
        )
    # A local file is ImageNet's obtained offline: build the network weights=imagenet builds, load it.
    context = _imagenet_download_from(weights) if spec.pretrained else contextlib.nullcontext()
    try:
        with context:
            return make(weights=WEIGHTS_IMAGENET if spec.pretrained else weights)
    except (ValueError, OSError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserInputError(f"weights file {weights!r} does not fit backbone {name} ({first_line}); "
                             f"pass a no-top weights file of {name} (include_top=False)") from err


def build_classifier(backbone: str, image_size: int, *, weights: str = WEIGHTS_IMAGENET, seed: int = 0,
                     batchnorm_momentum: float | None = None, feature_layer: str | None = None,
                     findings: bool = False) -> keras.Model:
    """The classifier `backbone`: float (B, S, S, 3) pixels in 0..255 to (B, 2) float32 softmax, or
    with `findings` (B, 16): that and the 14 findings' sigmoids (`models.heads.split_outputs`).

    `weights`: "imagenet", "none" or a local no-top weights file; `batchnorm_momentum` None keeps the
    backbone's; `feature_layer` the backbone layer feeding the head (None: the whole backbone).
    """
    spec = get_backbone(backbone)
    inputs = keras.Input((image_size, image_size, 3), dtype="float32", name="image")
    x = inputs
    for layer in spec.make_preprocessing():
        x = layer(x)
    features = _cut(_build_backbone(backbone, image_size, weights), feature_layer)(x)
    model = keras.Model(inputs, build_head(features, spec.head, seed=seed, findings=findings), name=backbone)
    if batchnorm_momentum is not None:
        set_batchnorm_momentum(model, batchnorm_momentum)
    return model


def build_model(backbone: str, image_size: int, *, weights: str = WEIGHTS_IMAGENET,
                augment: bool | None = None, seed: int = 0, batchnorm_momentum: float | None = None,
                feature_layer: str | None = None, findings: bool = False) -> keras.Model:
    """The classifier, behind the augmentation block when `augment` (None: the backbone's reference)."""
    augment = get_backbone(backbone).augment if augment is None else augment
    classifier = build_classifier(backbone, image_size, weights=weights, seed=seed,
                                  batchnorm_momentum=batchnorm_momentum, feature_layer=feature_layer,
                                  findings=findings)
    if not augment:
        return classifier
    inputs = keras.Input((image_size, image_size, 3), dtype="float32", name="image")
    # Augment raw pixels, before normalisation, so fill values stay in the image's range.
    return keras.Model(inputs, classifier(make_augmentation(seed)(inputs)), name=f"{backbone}_training")


def split_augmentation(model: keras.Model) -> tuple[keras.Layer | None, keras.Model]:
    """(augmentation block or None, classifier) of a `build_model` model; they share its weights."""
    names = [layer.name for layer in model.layers]
    if AUGMENTATION_LAYER not in names:
        return None, model
    return model.get_layer(AUGMENTATION_LAYER), model.layers[-1]  # the classifier is called last


def inference_model(model: keras.Model) -> keras.Model:
    """The classifier a `build_model` model computes with at inference (shared weights)."""
    return split_augmentation(model)[1]


def set_batchnorm_momentum(model: keras.Model, momentum: float) -> None:
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"batchnorm_momentum must be in [0, 1), got {momentum}")
    for layer in all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum


def all_layers(model: keras.Model) -> list[keras.Layer]:
    found = []
    for layer in model.layers:
        found.append(layer)
        if isinstance(layer, keras.Model) or hasattr(layer, "layers"):
            found.extend(all_layers(layer))
    return found
