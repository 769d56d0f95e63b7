"""Grad-CAM (Selvaraju et al., 2017) of a saved classifier on the head's pooled feature map,
upsampled between the cells' true centres (evaluation.feature_grid); an ensemble's map is the
weighted mean of its members' maps, each normalised to a maximum of 1 first."""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from evaluation.feature_grid import feature_grid, upsampling_matrix
from models.heads import OUTPUT_LAYER, POOL_LAYER


class GradCam:
    """The Grad-CAM of one classifier (a `models.build_classifier` graph, e.g. `load_classifier`'s)."""

    def __init__(self, classifier: keras.Model):
        pool = classifier.get_layer(POOL_LAYER)
        self._head = classifier.get_layer(OUTPUT_LAYER)
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

    def _compute(self, images: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            # Watching the input puts every later tensor on the tape, frozen layers included.
            tape.watch(images)
            features, hidden = self._network(images, training=False)
            logits = tf.matmul(tf.cast(hidden, tf.float32), self._head.kernel) + self._head.bias
            # The log-odds, not P(abnormal): the probability's gradient carries a factor p (1 - p)
            # that float32 rounds to 0 on an image the model is sure of, leaving its map empty.
            margin = logits[:, 1] - logits[:, 0]
        # Each image's margin depends on its own features only: the sum's gradient is per image.
        gradients = tape.gradient(margin, features)
        return cam(tf.cast(features, tf.float32), tf.cast(gradients, tf.float32), *self._upsample)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Returns the maps of float (B, S, S, 3) 0..255 `images`: (B, S, S) float32, max 1 (or all 0)."""
        return self._maps(tf.convert_to_tensor(images, tf.float32)).numpy()


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
