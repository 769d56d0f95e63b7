"""Training-time augmentation that runs inside the model, on the accelerator.

The reference augmented on the CPU with Keras 2's `ImageDataGenerator(rotation_range=10,
width_shift_range=0.1, height_shift_range=0.1, shear_range=10, zoom_range=0.1,
fill_mode="nearest")`. The same transforms, as core Keras 3 layers placed at the front of a model,
run wherever the model runs, draw new parameters for every image of every training batch, and
pass images through untouched at inference, so a saved model needs no switch.
"""

from __future__ import annotations

import math

import keras

ROTATION_DEGREES = 10.0  # rotation_range: uniform in [-10, 10] degrees
SHIFT_FRACTION = 0.1  # width_shift_range and height_shift_range, as fractions of the side
SHEAR_DEGREES = 10.0  # shear_range: a shear angle, uniform in [-10, 10] degrees
ZOOM_FRACTION = 0.1  # zoom_range: each axis scaled by its own factor in [0.9, 1.1]
FILL_MODE = "nearest"  # pixels moved in from outside repeat the nearest edge pixel



def _rotation_factor(degrees: float) -> float:
    # RandomRotation takes a fraction of a full turn.
    return degrees / 360.0


def _shear_factor(degrees: float) -> float:
    # ImageDataGenerator's shear matrix is [[1, -sin(a), 0], [0, cos(a), 0]]: a point moves
    # sideways by sin(a) times its row. RandomShear's x factor is that same coefficient, so the
    # angle converts as sin(a) (0.174 for 10 degrees; tan(a) would differ by 1.5%). Keras drops
    # the cos(a) row scale (0.985) and shears about the top edge, not the centre, so a sheared
    # image also moves sideways by up to factor * side / 2 (8.7% of the width at 10 degrees).
    return math.sin(math.radians(degrees))


def make_augmentation(seed: int = 0) -> keras.layers.Layer:
    """Returns the reference augmentation as a Keras block for the front of a model.

    Rotation, shift, shear and zoom in the reference's order, bilinear, edges filled with the
    nearest pixel. Each image of a batch gets its own random transform when called with
    `training=True`; with `training=False` (inference, `predict`) the block returns its input.
    The layers compute in float32 whatever the mixed-precision policy, so 0..255 pixels reach the
    model's own normalisation at full precision.

    Two traps for the caller. Keras' random layers default to `training=True`, so a bare
    `model(x)` augments: pass `training=False` at inference (`predict`/`evaluate` do). And the
    transforms lower to `ImageProjectiveTransformV3`, which has no XLA kernel (TF 2.21): a
    `jit_compile=True` function that contains the block fails to compile.

    Args:
      seed: seeds the four layers (seed, seed + 1, seed + 2, seed + 3), so two blocks built with
        the same seed draw the same transforms, call for call.

    Returns:
      A `keras.Sequential` named "augmentation", mapping float images (B, H, W, C) to the same
      shape and dtype.
    """
    common = {"fill_mode": FILL_MODE, "interpolation": "bilinear", "dtype": "float32"}
    zoom = (-ZOOM_FRACTION, ZOOM_FRACTION)
    return keras.Sequential(
        [
            keras.layers.RandomRotation(_rotation_factor(ROTATION_DEGREES), seed=seed, **common),
            keras.layers.RandomTranslation(SHIFT_FRACTION, SHIFT_FRACTION, seed=seed + 1, **common),
            keras.layers.RandomShear(
                x_factor=_shear_factor(SHEAR_DEGREES), y_factor=0.0, seed=seed + 2, **common
            ),
            # Separate height and width factors, as the reference drew its two zooms independently.
            keras.layers.RandomZoom(height_factor=zoom, width_factor=zoom, seed=seed + 3, **common),
        ],
        name="augmentation",
    )
