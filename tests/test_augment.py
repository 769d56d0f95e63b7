"""Tests of `models.augment`: the in-model training augmentation."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from models import augment
from pipeline import options
from tests import shard_factory


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """Four 32x32 radiograph-like images as 0..255 float32 RGB, the pipeline's output format."""
    rng = np.random.default_rng(0)
    gray = np.stack([shard_factory.synthetic_pixels(rng, 32, abnormal=True) for _ in range(4)])
    return np.repeat(gray[..., None], 3, axis=-1).astype(np.float32)


def _in_tf_data(block, images, training):
    dataset = tf.data.Dataset.from_tensors(images).map(lambda x: block(x, training=training))
    return next(iter(dataset)).numpy()


def _in_tf_function(block, images, training):
    return tf.function(lambda x: block(x, training=training))(tf.constant(images)).numpy()


def _eager(block, images, training):
    return np.asarray(block(images, training=training))


RUNNERS = {"eager": _eager, "tf.function": _in_tf_function, "tf.data": _in_tf_data}


@pytest.mark.parametrize("where", sorted(RUNNERS))
def test_identity_at_inference(images, where):
    out = RUNNERS[where](augment.make_augmentation(seed=0), images, training=False)
    np.testing.assert_array_equal(out, images)


@pytest.mark.parametrize("where", sorted(RUNNERS))
def test_training_changes_every_image_and_keeps_shape_dtype_and_range(images, where):
    out = RUNNERS[where](augment.make_augmentation(seed=0), images, training=True)
    assert out.shape == images.shape
    assert out.dtype == np.float32
    for before, after in zip(images, out):
        assert not np.array_equal(before, after)
    # Bilinear sampling with nearest-edge fill only mixes existing pixels.
    assert out.min() >= images.min() - 1e-3 and out.max() <= images.max() + 1e-3


def test_same_seed_same_transforms_eagerly_and_inside_graphs(images):
    eager = _eager(augment.make_augmentation(seed=7), images, training=True)
    np.testing.assert_array_equal(_in_tf_function(augment.make_augmentation(seed=7), images, True), eager)
    np.testing.assert_array_equal(_in_tf_data(augment.make_augmentation(seed=7), images, True), eager)
    assert not np.array_equal(_eager(augment.make_augmentation(seed=8), images, True), eager)


def test_each_call_draws_new_transforms(images):
    block = augment.make_augmentation(seed=0)
    assert not np.array_equal(_eager(block, images, True), _eager(block, images, True))


def test_stays_float32_under_mixed_precision(images):
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        block = augment.make_augmentation(seed=0)
        assert block(images, training=True).dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy(previous)


def test_reference_parameters_in_keras_units():
    layers = {type(layer).__name__: layer for layer in augment.make_augmentation().layers}
    assert list(layers) == ["RandomRotation", "RandomTranslation", "RandomShear", "RandomZoom"]
    assert all(layer.fill_mode == "nearest" for layer in layers.values())
    rotation_turns = layers["RandomRotation"].get_config()["factor"]
    assert rotation_turns == pytest.approx((-10 / 360, 10 / 360))
    shear = layers["RandomShear"].get_config()
    assert shear["x_factor"] == pytest.approx((-math.sin(math.radians(10)), math.sin(math.radians(10))))
    assert shear["y_factor"] == (0.0, 0.0)
    translation = layers["RandomTranslation"].get_config()
    assert translation["height_factor"] == translation["width_factor"] == 0.1
    zoom = layers["RandomZoom"].get_config()
    assert zoom["height_factor"] == zoom["width_factor"] == (-0.1, 0.1)


@pytest.mark.parametrize(
    "mode, backbone_default, expected",
    [("auto", True, True), ("auto", False, False), ("on", False, True), ("off", True, False)],
)
def test_augmentation_enabled(mode, backbone_default, expected):
    assert options.augmentation_enabled(mode, backbone_default) is expected


def test_unknown_augment_mode_lists_the_valid_ones():
    with pytest.raises(ValueError, match="auto, on, off"):
        options.augmentation_enabled("yes", True)
