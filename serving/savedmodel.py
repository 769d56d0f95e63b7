"""The SavedModel of train.py's `model.keras` graphs, one or a blend, in predict.py's order."""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from contracts import export_folder as names
from contracts.labels import FINDINGS
from models.calibration import PROB_EPSILON
from models.heads import OUTPUT_LAYER, split_outputs
from serving.decode import bytes_to_pixels

BLEND_EPSILON = 1e-12  # keeps the ensemble's logit finite where the blend is exactly 0 or 1


def _probability_and_margin(classifier: keras.Model) -> keras.Model:
    # The softmax's output (what predict.py reports) and its input, for the margin by its own kernel.
    head = classifier.get_layer(OUTPUT_LAYER)
    return keras.Model(classifier.inputs, [classifier.output, head.input])


def _clipped_logit(probability: tf.Tensor) -> tf.Tensor:
    p = tf.clip_by_value(tf.cast(probability, tf.float64), PROB_EPSILON, 1.0 - PROB_EPSILON)
    return tf.math.log(p) - tf.math.log1p(-p)


class ServingModule(tf.Module):
    """The exported module: float32 classifiers with their blend weights and temperatures; with
    `findings` (per member: its 14 finding weights and temperatures) also the blended findings."""

    def __init__(self, classifiers: Sequence[keras.Model], weights: Sequence[float],
                 temperatures: Sequence[float], threshold: float, image_size: int, max_pixels: int,
                 findings: Sequence[tuple[Sequence[float], Sequence[float]]] | None = None):
        super().__init__()
        # (members, 14) each: a finding's weight over the members, and each member's temperatures.
        self.finding_weights, self.finding_temperatures = None, None
        if findings is not None:
            self.finding_weights = tf.constant([w for w, _ in findings], tf.float64)
            self.finding_temperatures = np.array([t for _, t in findings], np.float64)
        self.image_size = image_size
        self.max_pixels = max_pixels
        self.networks = [_probability_and_margin(c) for c in classifiers]
        self.heads = [c.get_layer(OUTPUT_LAYER) for c in classifiers]
        self.weights = tf.constant(weights, tf.float64)
        self.temperatures = [float(t) for t in temperatures]
        self.threshold = tf.constant(threshold, tf.float64)
        self.ensemble = len(classifiers) > 1
        self.serve_bytes = tf.function(self._from_bytes, input_signature=[
            tf.TensorSpec([None], tf.string, name=names.INPUT_BYTES)])
        self.serve_pixels = tf.function(self._from_checked_pixels, input_signature=[
            tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name=names.INPUT_PIXELS)])

    def _from_bytes(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        size = self.image_size
        gray = tf.map_fn(lambda b: bytes_to_pixels(b, size, self.max_pixels), image_bytes,
                         fn_output_signature=tf.TensorSpec([size, size], tf.uint8))
        # As the input pipeline does: the stored uint8 gray value, as float, on three channels.
        return self._from_pixels(tf.repeat(tf.cast(gray, tf.float32)[..., None], 3, axis=-1))

    def _from_checked_pixels(self, pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        # A loaded signature does not check its input's shape and global pooling takes any size:
        # without this a 32 px batch would get a probability from a 64 px model.
        size = self.image_size
        fits = tf.reduce_all(tf.equal(tf.shape(pixels)[1:], [size, size, 3]))
        check = tf.debugging.Assert(fits, [
            f"pixels must be float32 [batch, {size}, {size}, 3], the size this model was trained at; "
            "got shape", tf.shape(pixels),
            "; send encoded images to serving_default to have them resized"], summarize=4)
        with tf.control_dependencies([check]):
            return self._from_pixels(tf.identity(pixels))

    @staticmethod
    def _calibrate(probability: tf.Tensor, temperature: float) -> tf.Tensor:
        # models.calibration.apply_temperature in float64: the same clipped logit, the same result.
        if temperature == 1.0:
            return tf.cast(probability, tf.float64)
        return tf.math.sigmoid(_clipped_logit(probability) / temperature)

    def _blend_findings(self, findings: Sequence[tf.Tensor]) -> tf.Tensor:
        """(B, 14) float32: each member's sigmoids (B, 14) through its per-finding temperatures (as
        models.calibration.calibrate_findings, a temperature of 1 leaving p as is), weighted per finding."""
        calibrated = []
        for probability, temperatures in zip(findings, self.finding_temperatures):
            scaled = tf.math.sigmoid(_clipped_logit(probability) / temperatures)
            calibrated.append(tf.where(temperatures == 1.0, tf.cast(probability, tf.float64), scaled))
        blend = tf.reduce_sum(tf.stack(calibrated, axis=1) * self.finding_weights, axis=1)
        return tf.cast(blend, tf.float32)

    def _from_pixels(self, pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        probabilities, calibrated, margins, findings = [], [], [], []
        for network, head, temperature in zip(self.networks, self.heads, self.temperatures):
            output, features = network(pixels, training=False)
            softmax, per_finding = split_outputs(output)
            findings.append(per_finding)
            logits = tf.matmul(tf.cast(features, tf.float32), head.kernel) + head.bias
            probabilities.append(tf.cast(softmax[:, 1], tf.float32))
            calibrated.append(self._calibrate(probabilities[-1], temperature))
            margins.append((logits[:, 1] - logits[:, 0]) / temperature)
        blend = tf.linalg.matvec(tf.stack(calibrated, axis=1), self.weights)
        outputs = {names.OUTPUT_PROB: tf.cast(blend, tf.float32),
                   names.OUTPUT_DECISION: tf.cast(blend >= self.threshold, tf.int32)}
        if self.finding_weights is not None:
            outputs[names.OUTPUT_FINDINGS] = self._blend_findings(findings)
        if not self.ensemble:  # one model's logit: its margin over its temperature
            return {**outputs, names.OUTPUT_LOGIT: margins[0], names.OUTPUT_UNCALIBRATED: probabilities[0]}
        clipped = tf.clip_by_value(blend, BLEND_EPSILON, 1.0 - BLEND_EPSILON)
        logit = tf.cast(tf.math.log(clipped) - tf.math.log1p(-clipped), tf.float32)
        return {**outputs, names.OUTPUT_LOGIT: logit, names.OUTPUT_MEMBERS: tf.stack(probabilities, axis=1)}


def output_dtypes(ensemble: bool, findings: bool) -> dict[str, str]:
    outputs = {names.OUTPUT_PROB: "float32 [None]", names.OUTPUT_LOGIT: "float32 [None]",
               names.OUTPUT_DECISION: "int32 [None]"}
    if findings:
        outputs[names.OUTPUT_FINDINGS] = f"float32 [None, {len(FINDINGS)}]"
    if ensemble:
        return {**outputs, names.OUTPUT_MEMBERS: "float32 [None, members]"}
    return {**outputs, names.OUTPUT_UNCALIBRATED: "float32 [None]"}


def save(module: ServingModule, export_dir: str) -> None:
    tf.saved_model.save(module, export_dir, signatures={
        names.SERVING_DEFAULT: module.serve_bytes.get_concrete_function(),
        names.PIXELS: module.serve_pixels.get_concrete_function(),
    })
