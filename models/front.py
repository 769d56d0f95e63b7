"""The uint8 front: a model fed uint8 gray batches (1 byte a pixel, not 12) makes its float32 RGB
input on its device; it only wraps a model for a step, never what is saved."""

from __future__ import annotations

import keras

from pipeline.input_pipeline import gray_to_rgb_float

FRONT_LAYER = "gray_to_rgb"


class GrayToRGB(keras.layers.Layer):
    """uint8 (B, S, S, 1) -> float32 (B, S, S, 3) in 0..255, exactly; float32 whatever the policy."""

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        kwargs.setdefault("name", FRONT_LAYER)
        super().__init__(**kwargs)
        # A float RGB batch here is a wiring error: fail, not pass.
        self.input_spec = keras.InputSpec(dtype="uint8", ndim=4, axes={-1: 1})

    def call(self, images):
        return gray_to_rgb_float(images)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 3)


def with_uint8_front(model: keras.Model) -> keras.Model:
    """`model` (float32 RGB 0..255 in) behind the front: uint8 (B, S, S, 1) in, shared weights."""
    size = model.input_shape[1:3]
    inputs = keras.Input((*size, 1), dtype="uint8", name="image_gray")
    return keras.Model(inputs, model(GrayToRGB()(inputs)), name=f"{model.name}_uint8")
