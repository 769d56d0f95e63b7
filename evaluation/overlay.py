"""The overlay PNG of one explained image: the stored radiograph, its Grad-CAM map, its boxes."""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw

from evaluation import settings

COLORMAP = "jet"  # the Grad-CAM paper's colours: blue (nothing) to red (the map's maximum)
OPACITY = 0.6  # of the colour where the map is 1; where it is 0 the radiograph shows through
BOX_COLOUR = (0, 255, 0)
TITLE_COLOUR = (255, 255, 255)


def render_overlay(gray: np.ndarray, heatmap: np.ndarray,
                   boxes: Sequence[tuple[str, Sequence[float]]] = (),
                   size: int = settings.OVERLAY_SIZE, title: str = "") -> bytes:
    """PNG bytes of an (S, S) [0, 1] `heatmap` over the (S, S) uint8 stored image, with the
    (finding, (left, top, right, bottom)) boxes outlined and `title` (what was mapped) at the bottom
    left; `size` px, never below S."""
    side = max(size, gray.shape[0])
    scale = side / gray.shape[0]
    background = np.asarray(Image.fromarray(gray).resize((side, side), Image.Resampling.BICUBIC), np.float32)
    heat = np.asarray(Image.fromarray(heatmap.astype(np.float32), mode="F").resize(
        (side, side), Image.Resampling.BILINEAR)).clip(0.0, 1.0)
    colour = colormaps[COLORMAP](heat)[..., :3] * 255.0
    alpha = OPACITY * heat[..., None]
    blended = (1.0 - alpha) * background[..., None] + alpha * colour
    image = Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(image)
    for finding, (left, top, right, bottom) in boxes:
        corners = [left * scale, top * scale,
                   max(right, left + 1) * scale - 1, max(bottom, top + 1) * scale - 1]
        draw.rectangle(corners, outline=BOX_COLOUR, width=max(1, side // 128))
        draw.text((corners[0] + 2, corners[1] + 1), finding, fill=BOX_COLOUR)
    if title:
        draw.text((3, side - 14), title, fill=TITLE_COLOUR)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
