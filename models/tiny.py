"""A two-convolution backbone for fast tests. Only `TEST_BACKBONES` lists it; no user default uses it."""

from __future__ import annotations

import keras
from keras import layers


def tiny_backbone(*, include_top: bool = False, weights=None, input_shape=(32, 32, 3)) -> keras.Model:
    """(B, S, S, 3) -> (B, S/4, S/4, 16), called as Keras Applications are (no top, no ImageNet)."""
    if weights == "imagenet":
        raise ValueError("the tiny test backbone has no ImageNet weights; use weights=none or a file")
    inputs = keras.Input(input_shape)
    x = layers.Conv2D(8, 3, strides=2, padding="same", name="tiny_conv1")(inputs)
    x = layers.BatchNormalization(name="tiny_bn1")(x)
    x = layers.ReLU(name="tiny_relu1")(x)
    x = layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="tiny_conv2")(x)
    model = keras.Model(inputs, x, name="tiny_test")
    if weights is not None:
        model.load_weights(weights)
    return model
