"""The uint8 front: a model fed the decoded gray bytes makes its float32 RGB input on its own device.

With `--transfer=uint8` the input pipeline emits uint8 (B, S, S, 1) batches: 1 byte per pixel
crosses to the accelerator instead of 12, and the host skips writing the float copy. The front
casts and copies the channel with the pipeline's own function (`gray_to_rgb_float`), so the
classifier behind it sees exactly the float32 RGB 0..255 pixels the float path gives it. The front
only ever wraps a model for a step: the saved `model.keras` and the export stay float32 RGB in.
"""

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
        # A float RGB batch here is a wiring error (a float pipeline behind the front): fail, not pass.
        self.input_spec = keras.InputSpec(dtype="uint8", ndim=4, axes={-1: 1})

    def call(self, images):
        return gray_to_rgb_float(images)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 3)


def with_uint8_front(model: keras.Model) -> keras.Model:
    """Returns `model` behind the front: uint8 (B, S, S, 1) in, `model`'s outputs out (shared weights).

    Args:
      model: takes float32 (B, S, S, 3) pixels in 0..255 (a `models.build_model` or loaded classifier).
    """
    size = model.input_shape[1:3]
    inputs = keras.Input((*size, 1), dtype="uint8", name="image_gray")
    return keras.Model(inputs, model(GrayToRGB()(inputs)), name=f"{model.name}_uint8")
