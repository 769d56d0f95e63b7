"""The reference's input design, for `pipeline_bench.py`'s seed_style row: a Keras `PyDataset` that,
per batch, opens each full-size PNG with PIL, crops it to its box, resizes it, makes it RGB and
applies a random affine with the reference's augmentation parameters on the CPU.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from PIL import Image
from scipy import ndimage

from contracts.labels import NIH_FRAME
from models.augment import ROTATION_DEGREES, SHEAR_DEGREES, SHIFT_FRACTION, ZOOM_FRACTION


def random_affine(gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random transform with the reference's parameters, about the centre, nearest fill.

    Composed as Keras 2's ImageDataGenerator did (rotation, shift, shear, zoom, one bilinear
    resampling with scipy), so the row costs what the reference's augmentation cost.
    """
    h, w = gray.shape
    theta = math.radians(rng.uniform(-ROTATION_DEGREES, ROTATION_DEGREES))
    shear = math.radians(rng.uniform(-SHEAR_DEGREES, SHEAR_DEGREES))
    ty, tx = rng.uniform(-SHIFT_FRACTION, SHIFT_FRACTION) * h, rng.uniform(-SHIFT_FRACTION, SHIFT_FRACTION) * w
    zy, zx = rng.uniform(1 - ZOOM_FRACTION, 1 + ZOOM_FRACTION, size=2)
    rotation = np.array([[math.cos(theta), -math.sin(theta), 0], [math.sin(theta), math.cos(theta), 0],
                         [0, 0, 1]])
    shift = np.array([[1, 0, ty], [0, 1, tx], [0, 0, 1]])
    shearing = np.array([[1, -math.sin(shear), 0], [0, math.cos(shear), 0], [0, 0, 1]])
    zoom = np.array([[zy, 0, 0], [0, zx, 0], [0, 0, 1]])
    centre = np.array([[1, 0, (h - 1) / 2], [0, 1, (w - 1) / 2], [0, 0, 1]])
    uncentre = np.array([[1, 0, -(h - 1) / 2], [0, 1, -(w - 1) / 2], [0, 0, 1]])
    matrix = centre @ rotation @ shift @ shearing @ zoom @ uncentre
    return ndimage.affine_transform(gray, matrix[:2, :2], offset=matrix[:2, 2], order=1, mode="nearest")


class SeedStyleSequence(keras.utils.PyDataset):
    """The reference's generator: per batch, full-size PNG -> crop -> resize -> RGB -> random affine.

    Args:
      sources: [{"path", "box" (x, y, w, h in the 1024 frame) or None, "label"}].
      batch_size, image_size: as the other rows.
      **kwargs: `workers` and `use_multiprocessing`, as PyDataset takes them.
    """

    def __init__(self, sources: list[dict], batch_size: int, image_size: int, **kwargs):
        super().__init__(**kwargs)
        self.sources, self.batch_size, self.image_size = sources, batch_size, image_size
        self.epoch = 0

    def __len__(self) -> int:
        return math.ceil(len(self.sources) / self.batch_size)

    def _load(self, source: dict, rng: np.random.Generator) -> np.ndarray:
        with Image.open(source["path"]) as image:
            if source["box"] is not None:
                scale = image.width / NIH_FRAME  # boxes are in the 1024 frame
                x, y, w, h = (v * scale for v in source["box"])
                image = image.crop((round(x), round(y), round(x + w), round(y + h)))
            image = image.convert("L").resize((self.image_size, self.image_size))
        gray = random_affine(np.asarray(image, np.float32), rng)
        # The reference augmented the three equal RGB channels; augmenting one and copying it
        # gives the same pixels for a third of the work, so this row is the design at its best.
        return np.repeat(gray[..., None], 3, axis=-1)

    def __getitem__(self, index: int):
        rng = np.random.default_rng([self.epoch, index])
        rows = self.sources[index * self.batch_size:(index + 1) * self.batch_size]
        images = np.stack([self._load(row, rng) for row in rows])
        return images, np.array([row["label"] for row in rows], np.float32)

    def on_epoch_end(self) -> None:
        self.epoch += 1
