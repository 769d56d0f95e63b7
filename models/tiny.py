"""A two-convolution backbone for fast tests. Only `TEST_BACKBONES` lists it; no user default uses it."""

from __future__ import annotations

import keras
from keras import layers


def tiny_backbone(*, include_top: bool = False, weights=None, input_shape=(32, 32, 3)) -> keras.Model:
    """Builds the test backbone with the Keras Applications calling convention.

    Args:
      include_top: must be False (the test backbone has no classifier of its own).
      weights: None or the path of a weights file saved from this backbone.
      input_shape: (S, S, 3).

    Returns:
      A model mapping (B, S, S, 3) to a (B, S/4, S/4, 16) feature map.

    Raises:
      ValueError: include_top is True or weights is "imagenet".
    """
    if include_top:
        raise ValueError("the tiny test backbone has no top; pass include_top=False")
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
