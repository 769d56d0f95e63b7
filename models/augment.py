"""The reference's `ImageDataGenerator` augmentation as Keras 3 layers at the front of the model."""

from __future__ import annotations

import math

import keras

ROTATION_DEGREES = 10.0  # uniform in [-10, 10] degrees
SHIFT_FRACTION = 0.1  # of the side, each axis
SHEAR_DEGREES = 10.0  # a shear angle, uniform in [-10, 10] degrees
ZOOM_FRACTION = 0.1  # each axis scaled by its own factor in [0.9, 1.1]
FILL_MODE = "nearest"  # pixels moved in from outside repeat the nearest edge pixel
AUGMENTATION_LAYER = "augmentation"


def _shear_factor(degrees: float) -> float:
    # ImageDataGenerator's shear moves a point sideways by sin(a) times its row, RandomShear's by the
    # factor: sin(a), not tan(a) (Keras drops the cos(a) row scale and shears about the top edge).
    return math.sin(math.radians(degrees))


def make_augmentation(seed: int = 0) -> keras.Sequential:
    """The augmentation block (no XLA kernel: keep it out of `jit_compile`); training=False at inference."""
    common = {"fill_mode": FILL_MODE, "interpolation": "bilinear", "dtype": "float32"}
    zoom = (-ZOOM_FRACTION, ZOOM_FRACTION)
    return keras.Sequential(
        [
            keras.layers.RandomRotation(ROTATION_DEGREES / 360.0, seed=seed, **common),  # a turn's fraction
            keras.layers.RandomTranslation(SHIFT_FRACTION, SHIFT_FRACTION, seed=seed + 1, **common),
            keras.layers.RandomShear(
                x_factor=_shear_factor(SHEAR_DEGREES), y_factor=0.0, seed=seed + 2, **common
            ),
            # Separate height and width factors, as the reference drew its two zooms independently.
            keras.layers.RandomZoom(height_factor=zoom, width_factor=zoom, seed=seed + 3, **common),
        ],
        name=AUGMENTATION_LAYER,
    )
