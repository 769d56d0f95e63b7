"""The SavedModel of train.py's `model.keras` graphs, one or a blend, in predict.py's order."""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from contracts import export_folder as names
from contracts.decode_rules import MIN_IMAGE_STD
from contracts.labels import FINDINGS
from contracts.output_names import CLEARED, PRIORITIZED, REVIEW
from evaluation.triage import Triage
from models import tta
from models.calibration import PROB_EPSILON
from models.heads import OUTPUT_LAYER, split_outputs
from serving.decode import decode_batch

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
    `findings` (per member: its 14 finding weights and temperatures) also the blended findings; each
    member run on its `views` (models.tta); every row sorted by `triage` (evaluation.triage.groups)."""

    def __init__(self, classifiers: Sequence[keras.Model], weights: Sequence[float],
                 temperatures: Sequence[float], threshold: float, image_size: int, max_pixels: int,
                 findings: Sequence[tuple[Sequence[float], Sequence[float]]] | None = None,
                 views: Sequence[tuple[int, float]] | None = None, triage: Triage | None = None):
        super().__init__()
        # Each member's test-time views (models.tta; None: 1 each) and the temperature its spread over
        # them is taken at: its run's, as predict.py --tta writes p_spread; the triage (None: all review).
        views = [(1, 1.0)] * len(classifiers) if views is None else views
        self.views = [int(v) for v, _ in views]
        self.view_temperatures = [float(t) for _, t in views]
        self.rule_out, self.rule_in, self.spread_limit = (None, None, None) if triage is None else (
            triage.rule_out.threshold, triage.rule_in.threshold, triage.spread_limit)
        self.spread = len(classifiers) > 1 or max(self.views) > 1
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
        gray, implausible = decode_batch(image_bytes, self.image_size, self.max_pixels)
        # As the input pipeline does: the stored uint8 gray value, as float, on three channels.
        return self._from_pixels(tf.repeat(tf.cast(gray, tf.float32)[..., None], 3, axis=-1), implausible)

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
            pixels = tf.identity(pixels)
        # No source size here: only the flatness half of the rule, on the first channel as sent.
        flat = tf.math.reduce_std(tf.cast(pixels[..., 0], tf.float64), axis=[1, 2]) < MIN_IMAGE_STD
        return self._from_pixels(pixels, flat)

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

    def _member(self, network: keras.Model, pixels: tf.Tensor, views: int):
        """One member's (softmax P(abnormal) (B,), finding sigmoids (B, 14) or None, pre-head features,
        P(abnormal) of each view (V, B) or None): with views, each the mean over them (predict.py --tta)."""
        if views == 1:  # the image alone: the graph as it was before test-time views
            output, features = network(pixels, training=False)
            softmax, per_finding = split_outputs(output)
            return tf.cast(softmax[:, 1], tf.float32), per_finding, features, None
        stacked = tta.views(pixels, views)  # (V, B, S, S, C): one call of the network on V * B images
        output, features = network(tf.reshape(stacked, tf.concat([[-1], tf.shape(pixels)[1:]], 0)),
                                   training=False)
        softmax, per_finding = split_outputs(output)  # rows view by view: view 0's batch, then view 1's
        by_view = tf.reshape(tf.cast(softmax[:, 1], tf.float32), [views, -1])
        if per_finding is not None:
            per_finding = tf.reduce_mean(tf.reshape(per_finding, [views, -1, len(FINDINGS)]), axis=0)
        return tf.reduce_mean(by_view, axis=0), per_finding, features, by_view

    def _spread(self, members: tf.Tensor, blend: tf.Tensor, view_spreads: list[tf.Tensor]) -> tf.Tensor:
        """evaluation.triage.spread in float64: the members' weighted spread about the blend, plus each
        member's spread over its views (the standard deviation of its calibrated view probabilities)."""
        variance = tf.linalg.matvec(tf.square(members - blend[:, None]), self.weights)
        if max(self.views) > 1:
            variance += tf.linalg.matvec(tf.square(tf.stack(view_spreads, axis=1)), self.weights)
        return tf.sqrt(tf.maximum(variance, 0.0))

    def _triage(self, blend: tf.Tensor, spread: tf.Tensor | None, implausible: tf.Tensor) -> tf.Tensor:
        """evaluation.triage.groups in float64: cleared p < rule-out, prioritized p >= rule-in, review
        where both, where neither, or where the spread exceeds the limit; None never sorts into its group.
        An implausible image (not a film: serving.decode.is_implausible) is always review."""
        never = tf.zeros_like(blend, tf.bool)
        cleared = never if self.rule_out is None else blend < tf.constant(self.rule_out, tf.float64)
        prioritized = never if self.rule_in is None else blend >= tf.constant(self.rule_in, tf.float64)
        unsure = (cleared & prioritized) | implausible
        if self.spread_limit is not None and spread is not None:
            unsure |= spread > tf.constant(self.spread_limit, tf.float64)
        review = tf.fill(tf.shape(blend), REVIEW)
        return tf.where(cleared & ~unsure, CLEARED, tf.where(prioritized & ~unsure, PRIORITIZED, review))

    def _from_pixels(self, pixels: tf.Tensor, implausible: tf.Tensor) -> dict[str, tf.Tensor]:
        probabilities, calibrated, margins, findings, view_spreads = [], [], [], [], []
        for network, head, temperature, views, own in zip(self.networks, self.heads, self.temperatures,
                                                          self.views, self.view_temperatures):
            probability, per_finding, features, by_view = self._member(network, pixels, views)
            findings.append(per_finding)
            probabilities.append(probability)
            calibrated.append(self._calibrate(probability, temperature))
            if by_view is None:
                logits = tf.matmul(tf.cast(features, tf.float32), head.kernel) + head.bias
                margins.append((logits[:, 1] - logits[:, 0]) / temperature)
                view_spreads.append(tf.zeros_like(calibrated[-1]))
            else:
                view_spreads.append(tf.math.reduce_std(self._calibrate(by_view, own), axis=0))
        members = tf.stack(calibrated, axis=1)
        blend = tf.linalg.matvec(members, self.weights)  # float64: p_abnormal and the triage both read it
        spread = self._spread(members, blend, view_spreads) if self.spread else None
        outputs = {names.OUTPUT_PROB: tf.cast(blend, tf.float32),
                   names.OUTPUT_DECISION: tf.cast(blend >= self.threshold, tf.int32),
                   names.OUTPUT_TRIAGE: self._triage(blend, spread, implausible),
                   names.OUTPUT_IMPLAUSIBLE: tf.cast(implausible, tf.int32)}
        if spread is not None:
            outputs[names.OUTPUT_SPREAD] = tf.cast(spread, tf.float32)
        if self.finding_weights is not None:
            outputs[names.OUTPUT_FINDINGS] = self._blend_findings(findings)
        if not self.ensemble:  # one model's logit: its margin over its temperature (views: the logit of p)
            logit = margins[0] if margins else self._blend_logit(blend)
            return {**outputs, names.OUTPUT_LOGIT: logit, names.OUTPUT_UNCALIBRATED: probabilities[0]}
        return {**outputs, names.OUTPUT_LOGIT: self._blend_logit(blend),
                names.OUTPUT_MEMBERS: tf.stack(probabilities, axis=1),
                names.OUTPUT_MEMBERS_PROB: tf.cast(members, tf.float32)}

    @staticmethod
    def _blend_logit(blend: tf.Tensor) -> tf.Tensor:
        clipped = tf.clip_by_value(blend, BLEND_EPSILON, 1.0 - BLEND_EPSILON)
        return tf.cast(tf.math.log(clipped) - tf.math.log1p(-clipped), tf.float32)


def output_dtypes(ensemble: bool, findings: bool, spread: bool) -> dict[str, str]:
    outputs = {names.OUTPUT_PROB: "float32 [None]", names.OUTPUT_LOGIT: "float32 [None]",
               names.OUTPUT_DECISION: "int32 [None]", names.OUTPUT_TRIAGE: "string [None]",
               names.OUTPUT_IMPLAUSIBLE: "int32 [None]"}
    if spread:
        outputs[names.OUTPUT_SPREAD] = "float32 [None]"
    if findings:
        outputs[names.OUTPUT_FINDINGS] = f"float32 [None, {len(FINDINGS)}]"
    if ensemble:
        return {**outputs, names.OUTPUT_MEMBERS: "float32 [None, members]",
                names.OUTPUT_MEMBERS_PROB: "float32 [None, members]"}
    return {**outputs, names.OUTPUT_UNCALIBRATED: "float32 [None]"}


def save(module: ServingModule, export_dir: str) -> None:
    tf.saved_model.save(module, export_dir, signatures={
        names.SERVING_DEFAULT: module.serve_bytes.get_concrete_function(),
        names.PIXELS: module.serve_pixels.get_concrete_function(),
    })
