"""Grad-CAM (Selvaraju et al., 2017) of a saved classifier's binary margin or one finding's logit on the
head's pooled feature map, upsampled between the cells' true centres (evaluation.feature_grid); an
ensemble's map is the weighted mean of its members' maps, each normalised to a maximum of 1 first."""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from contracts.errors import UserInputError
from contracts.labels import FINDINGS
from evaluation.feature_grid import feature_grid, upsampling_matrix
from models.heads import FINDINGS_LAYER, OUTPUT_LAYER, POOL_LAYER

MARGIN = -1  # the target index of the binary margin; a finding's is its index in FINDINGS
NO_FINDINGS_HEAD = "has no findings head; retrain it with --findings_weight > 0 to map a finding"


def has_findings_head(classifier: keras.Model) -> bool:
    return any(layer.name == FINDINGS_LAYER for layer in classifier.layers)


class GradCam:
    """The Grad-CAM of one classifier (a `models.build_classifier` graph, e.g. `load_classifier`'s):
    of the binary margin, or with `finding` (a name of FINDINGS) of that finding's logit. UserInputError
    for a finding of a classifier without the findings head."""

    def __init__(self, classifier: keras.Model, finding: str | None = None, name: str = "the classifier"):
        pool = classifier.get_layer(POOL_LAYER)
        self._head = classifier.get_layer(OUTPUT_LAYER)
        # The findings Dense layer reads the same features as the softmax layer (models.heads).
        self._findings = classifier.get_layer(FINDINGS_LAYER) if has_findings_head(classifier) else None
        if finding is not None and finding not in FINDINGS:
            raise UserInputError(f"finding {finding!r} is not one of {', '.join(FINDINGS)}")
        if finding is not None and self._findings is None:
            raise UserInputError(f"{name} {NO_FINDINGS_HEAD}")
        self.finding = finding
        # One graph, two outputs: the feature map and the softmax layer's input features.
        self._network = keras.Model(classifier.inputs, [pool.input, self._head.input])
        self.image_size = int(classifier.input_shape[1])
        self.grid = feature_grid(classifier, pool.input)
        rows, cols = self.feature_map_shape()[:2]
        self._upsample = [
            tf.constant(upsampling_matrix(cells, self.image_size, self.grid.offset[a], self.grid.stride[a]))
            for a, cells in enumerate((rows, cols))]
        self._maps = tf.function(self._compute, reduce_retracing=True)

    def feature_map_shape(self) -> tuple[int, int, int]:  # (height, width, channels)
        return tuple(int(d) for d in self._network.outputs[0].shape[1:])

    def _compute(self, images: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            # Watching the input puts every later tensor on the tape, frozen layers included.
            tape.watch(images)
            features, hidden = self._network(images, training=False)
            hidden = tf.cast(hidden, tf.float32)
            logits = tf.matmul(hidden, self._head.kernel) + self._head.bias
            # Logits, not probabilities: a probability's gradient carries a factor p (1 - p) that
            # float32 rounds to 0 on an image the model is sure of, leaving its map empty.
            targets = logits[:, 1:] - logits[:, :1]  # the margin z_abnormal - z_normal (the log-odds)
            if self._findings is not None:  # then each finding's logit, one column per finding
                per_finding = tf.matmul(hidden, self._findings.kernel) + self._findings.bias
                targets = tf.concat([targets, per_finding], 1)
            score = tf.gather(targets, target + 1, axis=1)
        # Each image's score depends on its own features only: the sum's gradient is per image.
        gradients = tape.gradient(score, features)
        return cam(tf.cast(features, tf.float32), tf.cast(gradients, tf.float32), *self._upsample)

    def maps(self, images: np.ndarray, finding: str | None) -> np.ndarray:
        """The maps of float (B, S, S, 3) 0..255 `images` for the binary margin (`finding` None) or a
        finding's logit: (B, S, S) float32, max 1 (or all 0)."""
        if finding is not None and self._findings is None:
            raise UserInputError(f"the classifier {NO_FINDINGS_HEAD}")
        target = MARGIN if finding is None else FINDINGS.index(finding)
        return self._maps(tf.convert_to_tensor(images, tf.float32), tf.constant(target, tf.int32)).numpy()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """The maps of this GradCam's target (its `finding`, else the binary margin); see `maps`."""
        return self.maps(images, self.finding)


def cam(features: tf.Tensor, gradients: tf.Tensor, rows: tf.Tensor, cols: tf.Tensor) -> tf.Tensor:
    """(B, S, S) ReLU(sum_k mean(gradient_k) * features_k) of a (B, h, w, C) feature map,
    upsampled by the (S, h) and (S, w) matrices `rows`, `cols`, divided by its maximum (or all 0)."""
    weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
    low = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1))
    maps = tf.einsum("yi,bij,xj->byx", rows, low, cols)
    peak = tf.reduce_max(maps, axis=(1, 2), keepdims=True)
    return tf.math.divide_no_nan(maps, peak)


def ensemble_map(member_maps: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """The `weights`-weighted mean of the members' (B, S, S) maps (not normalised again)."""
    stacked = np.stack([np.asarray(m, np.float64) for m in member_maps])
    w = np.asarray(weights, np.float64)
    return np.tensordot(w / w.sum(), stacked, axes=1).astype(np.float32)
