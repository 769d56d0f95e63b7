"""Each backbone's input normalisation as layers, so a saved model takes raw 0..255 RGB pixels
(float32 whatever the policy: a mean near 120 in bfloat16 loses every pixel's low bits)."""

from __future__ import annotations

import keras
from keras import layers, ops

# Keras Applications' "caffe" and "torch" modes (see keras.applications.imagenet_utils).
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN_RGB = (0.485, 0.456, 0.406)
TORCH_STD_RGB = (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package="cxr")
class ReverseChannels(layers.Layer):
    """Reverses the last axis: RGB to BGR, as the "caffe" backbones (ResNet50) expect."""

    def call(self, inputs):
        return ops.flip(inputs, axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape


def caffe() -> list[layers.Layer]:
    """ResNet50's normalisation: RGB to BGR, then subtract the ImageNet mean; no scaling."""
    return [
        ReverseChannels(name="rgb_to_bgr", dtype="float32"),
        layers.Normalization(mean=CAFFE_MEAN_BGR, variance=(1.0, 1.0, 1.0), name="caffe_mean",
                             dtype="float32"),
    ]


def torch() -> list[layers.Layer]:
    """DenseNet121's normalisation: scale to 0..1, then standardise with the ImageNet mean and std."""
    return [
        layers.Rescaling(1.0 / 255.0, name="to_unit", dtype="float32"),
        layers.Normalization(mean=TORCH_MEAN_RGB, variance=[s * s for s in TORCH_STD_RGB],
                             name="torch_standardise", dtype="float32"),
    ]


def built_in() -> list[layers.Layer]:
    """EfficientNet's normalisation: none here, the Keras EfficientNet model takes 0..255 itself."""
    return []


def unit_scale() -> list[layers.Layer]:
    return [layers.Rescaling(1.0 / 255.0, name="to_unit", dtype="float32")]
