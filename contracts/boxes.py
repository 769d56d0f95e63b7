"""NIH's boxes ((x, y, w, h) in the 1024 frame, whatever a copy's size) and where one lands in a
stored image: `stored_box` runs the builder's stretch, crop (`frame_region`) and resize forward."""

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
    """The `FINDINGS` name of a bbox CSV's "Finding Label" ("Infiltrate" -> "Infiltration"), or ValueError."""
    name = raw.strip()
    name = {spelled: finding for finding, spelled in BBOX_CSV_SPELLING.items()}.get(name, name)
    if name not in FINDINGS:
        raise ValueError(f"unknown finding {raw.strip()!r}; known: {', '.join(FINDINGS)}")
    return name


def frame_region(box: Sequence[float]) -> tuple[float, float, float, float]:
    """Box (x, y, w, h) clipped to the frame as (left, top, right, bottom); ValueError if degenerate."""
    x, y, w, h = box
    if not all(math.isfinite(v) for v in box) or w <= 0 or h <= 0:
        raise ValueError(f"box (x={x}, y={y}, w={w}, h={h}) is degenerate")
    return max(0.0, x), max(0.0, y), min(float(NIH_FRAME), x + w), min(float(NIH_FRAME), y + h)


def stored_box(box: Sequence[float], image_size: int,
               crop: Sequence[float] | None = None) -> tuple[float, float, float, float]:
    """Maps a 1024-frame box to (left, top, right, bottom) in the stored image's pixels, unclipped
    (pixel (i, j) covers [j, j + 1) x [i, i + 1)); `crop` is the union box of a cropped record."""
    left, top, right, bottom = (0.0, 0.0, float(NIH_FRAME), float(NIH_FRAME)) if crop is None \
        else frame_region(crop)
    sx, sy = image_size / (right - left), image_size / (bottom - top)
    x, y, w, h = box
    return (x - left) * sx, (y - top) * sy, (x + w - left) * sx, (y + h - top) * sy
