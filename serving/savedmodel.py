"""A SavedModel holding one trained classifier or a blended ensemble: image bytes or pixels in.

Each member is the float32 graph train.py saved as `model.keras` (itself a clone of the trained
graph, see `models.precision`); nothing is rebuilt from flags. Signatures:
  serving_default(image_bytes: string [None]) and pixels(pixels: float32 [None, S, S, 3] in 0..255)
  → p_abnormal float32 [None], logit float32 [None], label int32 [None]
    (+ member_p_abnormal float32 [None, members] for an ensemble).
One model: logit is its pre-softmax margin z_abnormal - z_normal. An ensemble: p_abnormal is the
weighted mean of the members' probabilities (as ensemble.py blends) and logit is log(p / (1 - p))
of that blend. label is p_abnormal >= threshold, compared in float64 as ensemble.py does.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import keras
import tensorflow as tf

from contracts.export_folder import INPUT_BYTES, INPUT_PIXELS, PIXELS, SERVING_DEFAULT
from models.heads import OUTPUT_LAYER
from serving.decode import bytes_to_pixels

BLEND_EPSILON = 1e-12  # keeps the ensemble's logit finite where the blend is exactly 0 or 1


@dataclasses.dataclass(frozen=True)
class ServedMember:
    """One model of the export: its name, its float32 classifier and its blend weight."""

    name: str
    classifier: keras.Model
    weight: float


def _probability_and_margin(classifier: keras.Model) -> keras.Model:
    # The softmax's own output (what predict.py reports) and its input features, from which the
    # pre-softmax margin is computed with the layer's own kernel.
    head = classifier.get_layer(OUTPUT_LAYER)
    return keras.Model(classifier.inputs, [classifier.output, head.input])


class ServingModule(tf.Module):
    """The exported module: members, blend weights, threshold and the two signatures."""

    def __init__(self, members: Sequence[ServedMember], threshold: float, image_size: int, max_pixels: int):
        super().__init__()
        self.image_size = image_size
        self.max_pixels = max_pixels
        self.networks = [_probability_and_margin(m.classifier) for m in members]
        self.heads = [m.classifier.get_layer(OUTPUT_LAYER) for m in members]
        self.weights = tf.constant([m.weight for m in members], tf.float64)
        self.threshold = tf.constant(threshold, tf.float64)
        self.ensemble = len(members) > 1
        size = image_size
        self.serve_bytes = tf.function(self._from_bytes, input_signature=[
            tf.TensorSpec([None], tf.string, name=INPUT_BYTES)])
        self.serve_pixels = tf.function(self._from_pixels, input_signature=[
            tf.TensorSpec([None, size, size, 3], tf.float32, name=INPUT_PIXELS)])

    def _decode(self, image_bytes: tf.Tensor) -> tf.Tensor:
        gray = tf.map_fn(lambda b: bytes_to_pixels(b, self.image_size, self.max_pixels), image_bytes,
                         fn_output_signature=tf.TensorSpec([self.image_size, self.image_size], tf.uint8))
        # As the input pipeline does: the stored uint8 gray value, as float, on three channels.
        return tf.repeat(tf.cast(gray, tf.float32)[..., None], 3, axis=-1)

    def _from_bytes(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._from_pixels(self._decode(image_bytes))

    def _from_pixels(self, pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        probabilities, margins = [], []
        for network, head in zip(self.networks, self.heads):
            softmax, features = network(pixels, training=False)
            logits = tf.matmul(tf.cast(features, tf.float32), head.kernel) + head.bias
            probabilities.append(tf.cast(softmax[:, 1], tf.float32))
            margins.append(logits[:, 1] - logits[:, 0])
        members = tf.stack(probabilities, axis=1)
        blend = tf.linalg.matvec(tf.cast(members, tf.float64), self.weights)
        if self.ensemble:
            clipped = tf.clip_by_value(blend, BLEND_EPSILON, 1.0 - BLEND_EPSILON)
            logit = tf.math.log(clipped) - tf.math.log1p(-clipped)
            p_abnormal = tf.cast(blend, tf.float32)
        else:
            logit, p_abnormal = margins[0], probabilities[0]
        outputs = {"p_abnormal": p_abnormal, "logit": tf.cast(logit, tf.float32),
                   "label": tf.cast(blend >= self.threshold, tf.int32)}
        if self.ensemble:
            outputs["member_p_abnormal"] = members
        return outputs


def output_dtypes(ensemble: bool) -> dict[str, str]:
    """Returns each signature output's name → dtype and shape, as export.json records them."""
    outputs = {"p_abnormal": "float32 [None]", "logit": "float32 [None]", "label": "int32 [None]"}
    if ensemble:
        outputs["member_p_abnormal"] = "float32 [None, members]"
    return outputs


def save(module: ServingModule, export_dir: str) -> None:
    """Writes `module` as a SavedModel with the `serving_default` and `pixels` signatures."""
    tf.saved_model.save(module, export_dir, signatures={
        SERVING_DEFAULT: module.serve_bytes.get_concrete_function(),
        PIXELS: module.serve_pixels.get_concrete_function(),
    })
