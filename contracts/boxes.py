"""NIH's boxes: one finding's box in the 1024 frame, and where a box lands in a stored image.

NIH gives boxes as (x, y, w, h) in the 1024 x 1024 frame of its released PNGs, whatever size a copy
has. The builder stretches that frame over the source image, optionally crops the source to the
union of its boxes (`--crop=bbox`, the region `frame_region` returns), then resizes the result to
the stored square. `stored_box` runs the same geometry forward, so a box drawn or scored on a stored
image is where the builder put its pixels. No TensorFlow: the builder's workers import this.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

from contracts.labels import FINDINGS, NIH_FRAME

# BBox_List_2017.csv spells one finding differently from Data_Entry (whose names are FINDINGS).
BBOX_CSV_SPELLING = {"Infiltration": "Infiltrate"}


class FindingBox(NamedTuple):
    """One expert box: its finding (a `FINDINGS` name) and (x, y, w, h) in the 1024 frame."""

    finding: str
    x: float
    y: float
    w: float
    h: float

    @property
    def xywh(self) -> tuple[float, float, float, float]:
        return (self.x, self.y, self.w, self.h)


def finding_of_bbox_label(raw: str) -> str:
    """Returns the `FINDINGS` name of a bbox CSV's "Finding Label" cell ("Infiltrate" -> "Infiltration").

    Raises:
      ValueError: not an NIH finding.
    """
    name = raw.strip()
    name = {spelled: finding for finding, spelled in BBOX_CSV_SPELLING.items()}.get(name, name)
    if name not in FINDINGS:
        raise ValueError(f"unknown finding {raw.strip()!r}; known: {', '.join(FINDINGS)}")
    return name


def frame_region(box: Sequence[float]) -> tuple[float, float, float, float]:
    """Returns box (x, y, w, h) clipped to the 1024 frame as (left, top, right, bottom), frame units.

    Raises:
      ValueError: the box is not finite or has no area.
    """
    x, y, w, h = box
    if not all(math.isfinite(v) for v in box) or w <= 0 or h <= 0:
        raise ValueError(f"box (x={x}, y={y}, w={w}, h={h}) is degenerate")
    return max(0.0, x), max(0.0, y), min(float(NIH_FRAME), x + w), min(float(NIH_FRAME), y + h)


def stored_box(box: Sequence[float], image_size: int,
               crop: Sequence[float] | None = None) -> tuple[float, float, float, float]:
    """Maps a 1024-frame box to the stored image: (left, top, right, bottom) in its pixel units.

    Pixel (row i, column j) of the stored image covers [j, j + 1) x [i, i + 1) in these units,
    which is how Pillow's resize (the builder's) places its output pixels over the source region.
    The result is not clipped: a box reaching outside a crop reaches outside the image.

    Args:
      box: (x, y, w, h) in the 1024 frame.
      image_size: side S of the stored square image.
      crop: for a record whose `crop/applied` is set, the box it was cropped to (the record's
        union box, 1024 frame); None for an uncropped record (the whole frame was resized).

    Raises:
      ValueError: a degenerate crop box.
    """
    left, top, right, bottom = (0.0, 0.0, float(NIH_FRAME), float(NIH_FRAME)) if crop is None \
        else frame_region(crop)
    sx, sy = image_size / (right - left), image_size / (bottom - top)
    x, y, w, h = box
    return (x - left) * sx, (y - top) * sy, (x + w - left) * sx, (y + h - top) * sy
