"""models/tta.py's views against NumPy: the identity, shifts by round(5%) with the edge repeated, zooms
that keep the shape and never flip."""

import numpy as np
import pytest
import tensorflow as tf

from models import tta

SIDE = 70  # 5% of it is 3.5 px: rounding gives 4, truncation 3


def _batch(seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (2, SIDE, SIDE, 3)).astype("float32")


def test_view_zero_is_the_image_itself_and_the_order_is_fixed():
    images = _batch()
    np.testing.assert_array_equal(tta.views(tf.constant(images), 1).numpy()[0], images)
    assert tta.TRANSFORMS[0] == "identity" and tta.MAX_VIEWS == len(tta.TRANSFORMS)
    stacked = tta.views(tf.constant(images), tta.MAX_VIEWS).numpy()
    assert stacked.shape == (tta.MAX_VIEWS, *images.shape)
    for k, name in enumerate(tta.TRANSFORMS):
        np.testing.assert_array_equal(stacked[k], tta.view(tf.constant(images), name).numpy())


@pytest.mark.parametrize("name, axis, sign", [("shift_right", 2, 1), ("shift_left", 2, -1),
                                              ("shift_down", 1, 1), ("shift_up", 1, -1)])
def test_a_shift_moves_content_by_round_5_percent_and_repeats_the_edge(name, axis, sign):
    images = _batch()
    pixels = round(0.05 * SIDE)
    # NumPy's own: pad with the edge on the uncovered side, keep the side's length.
    pad = [(0, 0)] * 4
    pad[axis] = (pixels, 0) if sign > 0 else (0, pixels)
    padded = np.pad(images, pad, mode="edge")
    start = 0 if sign > 0 else pixels
    expected = np.take(padded, np.arange(start, start + SIDE), axis=axis)
    np.testing.assert_array_equal(tta.view(tf.constant(images), name).numpy(), expected)


@pytest.mark.parametrize("name", ["zoom_in", "zoom_out"])
def test_a_zoom_keeps_the_shape_and_never_flips(name):
    images = np.zeros((1, SIDE, SIDE, 3), "float32")
    images[:, 20:50, 5:30] = 200.0  # content on the left half only
    zoomed = tta.view(tf.constant(images), name).numpy()
    assert zoomed.shape == images.shape and zoomed.dtype == np.float32
    half = SIDE // 2
    assert zoomed[:, :, half:].max() == 0.0 and zoomed[:, :, :half].max() > 100.0
    # In or out: the bright area grows or shrinks by about the factor squared.
    ratio = (zoomed > 100).sum() / (images > 100).sum()
    factor = tta.ZOOM_FACTOR if name == "zoom_in" else 1 / tta.ZOOM_FACTOR
    assert ratio == pytest.approx(factor**2, rel=0.05)
    assert ratio > 1 if name == "zoom_in" else ratio < 1
