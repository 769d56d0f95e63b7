"""A SavedModel holding one trained classifier or a blended ensemble: image bytes or pixels in.

Each member is the float32 graph train.py saved as `model.keras` (itself a clone of the trained
graph, see `models.precision`); nothing is rebuilt from flags. Signatures:
  serving_default(image_bytes: string [None]) and pixels(pixels: float32 [None, S, S, 3] in 0..255;
  any other shape fails the request, it is never resized)
  → p_abnormal float32 [None], logit float32 [None], decision int32 [None]
    (+ p_uncalibrated float32 [None] for one model, member_p_uncalibrated float32 [None, members]
    for an ensemble); the names and meanings of contracts/export_folder.py, the prediction files'.
One order, as predict.py and ensemble.py: member logit -> temperature -> probability -> weighted
blend -> threshold (training/calibration.py; a temperature of 1 leaves a member's probability as
it is). One model: p_abnormal is its probability after its run's temperature and p_uncalibrated
its softmax output (the columns of the same names in predict.py's CSV and val_predictions.csv),
logit its pre-softmax margin z_abnormal - z_normal divided by the temperature. An ensemble:
p_abnormal is the weighted mean of the members' calibrated probabilities (ensemble.py's blend),
logit is log(p / (1 - p)) of that blend, member_p_uncalibrated the members' softmax outputs.
decision is p_abnormal >= threshold, compared in float64 as ensemble.py does.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import keras
import tensorflow as tf

from contracts.export_folder import (
    INPUT_BYTES,
    INPUT_PIXELS,
    OUTPUT_DECISION,
    OUTPUT_LOGIT,
    OUTPUT_MEMBERS,
    OUTPUT_PROB,
    OUTPUT_UNCALIBRATED,
    PIXELS,
    SERVING_DEFAULT,
)
from models.calibration import PROB_EPSILON
from models.heads import OUTPUT_LAYER
from serving.decode import bytes_to_pixels

BLEND_EPSILON = 1e-12  # keeps the ensemble's logit finite where the blend is exactly 0 or 1


@dataclasses.dataclass(frozen=True)
class ServedMember:
    """One model of the export: its name, its float32 classifier, its blend weight and temperature."""

    name: str
    classifier: keras.Model
    weight: float
    temperature: float = 1.0


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
        self.temperatures = [float(m.temperature) for m in members]
        self.threshold = tf.constant(threshold, tf.float64)
        self.ensemble = len(members) > 1
        size = image_size
        self.serve_bytes = tf.function(self._from_bytes, input_signature=[
            tf.TensorSpec([None], tf.string, name=INPUT_BYTES)])
        self.serve_pixels = tf.function(self._from_checked_pixels, input_signature=[
            tf.TensorSpec([None, size, size, 3], tf.float32, name=INPUT_PIXELS)])

    def _decode(self, image_bytes: tf.Tensor) -> tf.Tensor:
        gray = tf.map_fn(lambda b: bytes_to_pixels(b, self.image_size, self.max_pixels), image_bytes,
                         fn_output_signature=tf.TensorSpec([self.image_size, self.image_size], tf.uint8))
        # As the input pipeline does: the stored uint8 gray value, as float, on three channels.
        return tf.repeat(tf.cast(gray, tf.float32)[..., None], 3, axis=-1)

    def _from_bytes(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._from_pixels(self._decode(image_bytes))

    def _from_checked_pixels(self, pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        # A loaded signature does not check its input's shape, and the convolutions and global
        # pooling take any size: without this a 32 px batch would get a probability from a 64 px
        # model. Nothing is resized here; the bytes signature decodes and resizes as the builder.
        size = self.image_size
        fits = tf.reduce_all(tf.equal(tf.shape(pixels)[1:], [size, size, 3]))
        check = tf.debugging.Assert(fits, [
            f"pixels must be float32 [batch, {size}, {size}, 3], the size this model was trained at; "
            "got shape", tf.shape(pixels), "; send encoded images to serving_default to have them resized"],
            summarize=4)
        with tf.control_dependencies([check]):
            return self._from_pixels(tf.identity(pixels))

    @staticmethod
    def _calibrate(probability: tf.Tensor, temperature: float) -> tf.Tensor:
        # training.calibration.apply_temperature in float64: the same clipped logit, the same result.
        if temperature == 1.0:
            return tf.cast(probability, tf.float64)
        p = tf.clip_by_value(tf.cast(probability, tf.float64), PROB_EPSILON, 1.0 - PROB_EPSILON)
        return tf.math.sigmoid((tf.math.log(p) - tf.math.log1p(-p)) / temperature)

    def _from_pixels(self, pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        probabilities, calibrated, margins = [], [], []
        for network, head, temperature in zip(self.networks, self.heads, self.temperatures):
            softmax, features = network(pixels, training=False)
            logits = tf.matmul(tf.cast(features, tf.float32), head.kernel) + head.bias
            probabilities.append(tf.cast(softmax[:, 1], tf.float32))
            calibrated.append(self._calibrate(probabilities[-1], temperature))
            margins.append((logits[:, 1] - logits[:, 0]) / temperature)
        members = tf.stack(probabilities, axis=1)
        blend = tf.linalg.matvec(tf.stack(calibrated, axis=1), self.weights)
        if self.ensemble:
            clipped = tf.clip_by_value(blend, BLEND_EPSILON, 1.0 - BLEND_EPSILON)
            logit = tf.math.log(clipped) - tf.math.log1p(-clipped)
        else:
            logit = margins[0]
        outputs = {OUTPUT_PROB: tf.cast(blend, tf.float32), OUTPUT_LOGIT: tf.cast(logit, tf.float32),
                   OUTPUT_DECISION: tf.cast(blend >= self.threshold, tf.int32)}
        if self.ensemble:
            outputs[OUTPUT_MEMBERS] = members
        else:
            outputs[OUTPUT_UNCALIBRATED] = probabilities[0]
        return outputs


def output_dtypes(ensemble: bool) -> dict[str, str]:
    """Returns each signature output's name → dtype and shape, as export.json records them."""
    outputs = {OUTPUT_PROB: "float32 [None]", OUTPUT_LOGIT: "float32 [None]", OUTPUT_DECISION: "int32 [None]"}
    if ensemble:
        outputs[OUTPUT_MEMBERS] = "float32 [None, members]"
    else:
        outputs[OUTPUT_UNCALIBRATED] = "float32 [None]"
    return outputs


def save(module: ServingModule, export_dir: str) -> None:
    """Writes `module` as a SavedModel with the `serving_default` and `pixels` signatures."""
    tf.saved_model.save(module, export_dir, signatures={
        SERVING_DEFAULT: module.serve_bytes.get_concrete_function(),
        PIXELS: module.serve_pixels.get_concrete_function(),
    })
