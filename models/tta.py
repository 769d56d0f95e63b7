"""Test-time augmentation: a fixed, ordered list of mild views of a batch (shifts and zooms within
training's augmentation; no flip: the heart's side matters), the same ops in predict.py and serving."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # TensorFlow loads only when views are made: settings read TRANSFORMS without it
    import tensorflow as tf

SHIFT_FRACTION = 0.05  # of the side, one axis at a time (training shifts up to models.augment's 0.1)
ZOOM_FACTOR = 1.05  # zoom in by it, and out by its inverse (training zooms up to 1.1)
# --tta=N takes the first N, in this order; view 0 is the image itself.
TRANSFORMS = ("identity", "shift_right", "shift_left", "shift_down", "shift_up", "zoom_in", "zoom_out")
MAX_VIEWS = len(TRANSFORMS)


def _shifted(images: tf.Tensor, axis: int, pixels: int) -> tf.Tensor:
    # Content moves by `pixels` along `axis`; the edge row it uncovers repeats (models.augment's "nearest").
    import tensorflow as tf

    side = tf.shape(images)[axis]
    return tf.gather(images, tf.clip_by_value(tf.range(side) - pixels, 0, side - 1), axis=axis)


def _zoomed(images: tf.Tensor, factor: float) -> tf.Tensor:
    # Resized about the centre to round(side * factor), then centre-cropped or edge-padded back to side.
    import tensorflow as tf

    side = int(images.shape[1])
    size = max(1, round(side * factor))
    resized = tf.image.resize(images, [size, size], method="bilinear")
    start = (size - side) // 2  # negative when zooming out: indices clipped to the edge pad it
    rows = tf.clip_by_value(tf.range(side) + start, 0, size - 1)
    return tf.gather(tf.gather(resized, rows, axis=1), rows, axis=2)


def view(images: tf.Tensor, name: str) -> tf.Tensor:
    """`images` (B, S, S, C) float32 under the transform `name` (one of TRANSFORMS)."""
    pixels = max(1, round(SHIFT_FRACTION * int(images.shape[1])))
    shifts = {"shift_right": (2, pixels), "shift_left": (2, -pixels), "shift_down": (1, pixels),
              "shift_up": (1, -pixels)}
    if name in shifts:
        return _shifted(images, *shifts[name])
    if name.startswith("zoom"):
        import tensorflow as tf

        return tf.cast(_zoomed(images, ZOOM_FACTOR if name == "zoom_in" else 1 / ZOOM_FACTOR), images.dtype)
    if name != "identity":
        raise ValueError(f"view: unknown transform {name!r}; one of {TRANSFORMS}")
    return images


def views(images: tf.Tensor, count: int) -> tf.Tensor:
    """(count, B, S, S, C): the first `count` TRANSFORMS of `images` (B, S, S, C), static S."""
    import tensorflow as tf

    if not 1 <= count <= MAX_VIEWS:
        raise ValueError(f"views: count {count} outside 1..{MAX_VIEWS}")
    return tf.stack([view(images, name) for name in TRANSFORMS[:count]])
