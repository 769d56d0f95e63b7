"""Heatmaps against expert boxes (stored-image pixels; a pixel is inside when its centre is): the
pointing game and the energy inside the boxes, each beside a centred-Gaussian baseline map."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from evaluation import settings

ALL_FINDINGS = "all"  # the summary's row over every box
FINDING_MAPS = "finding_maps"  # the summary's key: each finding's own map against that finding's boxes
MEANS = {"pointing_game": "hit", "pointing_game_baseline": "hit_baseline", "energy_in_boxes": "energy",
         "energy_in_boxes_baseline": "energy_baseline", "box_area_fraction": "area"}


def _span(start: float, end: float, size: int) -> np.ndarray:
    """The pixels of an axis whose centres lie in [start, end] (a thinner span: the pixel holding its
    middle, so every box covers a pixel); none for a span outside [0, size)."""
    if end <= 0 or start >= size:
        return np.zeros(size, bool)
    centres = np.arange(size) + 0.5
    inside = (centres >= start) & (centres <= end)
    if not inside.any():
        inside = np.arange(size) == min(max(int(math.floor((start + end) / 2)), 0), size - 1)
    return inside


def box_mask(boxes: Sequence[Sequence[float]], image_size: int) -> np.ndarray:
    """The (S, S) mask of pixels inside any (left, top, right, bottom) box."""
    mask = np.zeros((image_size, image_size), bool)
    for left, top, right, bottom in boxes:
        mask |= _span(top, bottom, image_size)[:, None] & _span(left, right, image_size)[None, :]
    return mask


def pointing_hit(heatmap: np.ndarray, mask: np.ndarray) -> bool:
    """Whether the map's first maximum (row-major) lies in `mask`; a flat or empty map misses."""
    if not np.any(heatmap > heatmap.min()):
        return False
    return bool(mask.flat[int(np.argmax(heatmap))])


def energy_fraction(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """The share of the map's (non-negative) sum in `mask`; 0 for an all-zero map."""
    total = float(np.sum(heatmap, dtype=np.float64))
    return float(np.sum(heatmap[mask], dtype=np.float64)) / total if total > 0 else 0.0


def centred_gaussian(image_size: int, sigma: float = settings.LOCALIZATION_BASELINE_SIGMA) -> np.ndarray:
    """The baseline map exp(-d^2 / (2 (sigma S)^2)), d a pixel centre's distance from the centre."""
    centres = np.arange(image_size) + 0.5 - image_size / 2
    d2 = centres[:, None] ** 2 + centres[None, :] ** 2
    return np.exp(-d2 / (2 * (sigma * image_size) ** 2)).astype(np.float32)


class LocalizationTally:
    """Per-image scores of maps and of the baseline; overall counts every box, per finding its own. With
    `add_finding_maps`, also each finding's own map against that finding's boxes only."""

    def __init__(self, image_size: int, sigma: float = settings.LOCALIZATION_BASELINE_SIGMA):
        self.image_size = image_size
        self.sigma = sigma
        self.baseline = centred_gaussian(image_size, sigma)
        self.images: list[dict[str, Any]] = []
        self.finding_maps: list[dict[str, Any]] = []

    def _masks(self, boxes: Mapping[str, Sequence[Sequence[float]]]) -> dict[str, np.ndarray]:
        masks = {finding: box_mask(found, self.image_size) for finding, found in boxes.items()}
        return {finding: mask for finding, mask in masks.items() if mask.any()}  # boxes off the image

    def _scores(self, heatmap: np.ndarray, mask: np.ndarray, boxes: int) -> dict[str, Any]:
        return {"boxes": boxes,
                "hit": pointing_hit(heatmap, mask), "hit_baseline": pointing_hit(self.baseline, mask),
                "energy": energy_fraction(heatmap, mask),
                "energy_baseline": energy_fraction(self.baseline, mask),
                "area": float(mask.mean())}

    def add(self, image_id: str, heatmap: np.ndarray, boxes: Mapping[str, Sequence[Sequence[float]]]) -> None:
        """Scores one image's (S, S) map against its boxes: finding -> [(left, top, right, bottom)]."""
        masks = self._masks(boxes)
        if not masks:
            return
        counts = {finding: len(boxes[finding]) for finding in masks}
        counts[ALL_FINDINGS] = sum(counts.values())
        masks[ALL_FINDINGS] = np.logical_or.reduce(list(masks.values()))
        self.images.append({
            "image_id": image_id, "empty_map": _empty(heatmap),
            "scores": {finding: self._scores(heatmap, mask, counts[finding])
                       for finding, mask in masks.items()}})

    def add_finding_maps(self, image_id: str, maps: Mapping[str, np.ndarray],
                         boxes: Mapping[str, Sequence[Sequence[float]]]) -> None:
        """Scores each finding's own (S, S) map in `maps` against the boxes of that finding only."""
        masks = self._masks(boxes)
        scores = {finding: self._scores(maps[finding], mask, len(boxes[finding]))
                  for finding, mask in masks.items()}
        if scores:
            self.finding_maps.append({"image_id": image_id, "scores": scores,
                                      "empty_maps": sum(_empty(maps[finding]) for finding in scores)})

    def summary(self) -> dict[str, Any]:
        """Overall and per-finding rates with counts, and per-image scores; with finding maps, their
        per-finding rows under FINDING_MAPS."""
        if not self.images:
            return not_scored("no image of the split has boxes")
        findings = sorted({f for image in self.images for f in image["scores"]} - {ALL_FINDINGS})
        rows = {f: _row([image["scores"][f] for image in self.images if f in image["scores"]])
                for f in (ALL_FINDINGS, *findings)}
        summary = {
            "scored": True, "images": len(self.images), "boxes": rows[ALL_FINDINGS]["boxes"],
            "empty_maps": sum(image["empty_map"] for image in self.images),
            "baseline": {"map": "centred Gaussian", "sigma_fraction_of_side": self.sigma},
            "overall": rows[ALL_FINDINGS], "per_finding": {f: rows[f] for f in findings},
            "per_image": _per_image(self.images),
        }
        if self.finding_maps:
            own = sorted({f for image in self.finding_maps for f in image["scores"]})
            summary[FINDING_MAPS] = {
                "empty_maps": sum(image["empty_maps"] for image in self.finding_maps),
                "per_finding": {f: _row([image["scores"][f] for image in self.finding_maps
                                         if f in image["scores"]]) for f in own},
                "per_image": _per_image(self.finding_maps)}
        return summary


def _empty(heatmap: np.ndarray) -> bool:
    return not np.any(heatmap > heatmap.min())


def _per_image(images: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{"image_id": image["image_id"], **{f: {"hit": s["hit"], "energy": s["energy"]}
                                               for f, s in image["scores"].items()}} for image in images]


def _row(scores: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {"images": len(scores), "boxes": int(sum(s["boxes"] for s in scores)),
            **{column: float(np.mean([s[key] for s in scores])) for column, key in MEANS.items()}}


def not_scored(reason: str) -> dict[str, Any]:
    return {"scored": False, "reason": reason}


def format_table(summary: Mapping[str, Any]) -> str:
    """The printed table (or the one line saying why nothing was scored); with finding maps, theirs after."""
    if not summary.get("scored"):
        return f"localization: not scored: {summary['reason']}"
    lines = [f"localization: {summary['images']} images with {summary['boxes']} boxes "
             f"({summary['empty_maps']} empty maps); baseline: centred Gaussian, sigma "
             f"{summary['baseline']['sigma_fraction_of_side']:g} x side", _HEADER]
    lines += [_line(finding, row) for finding, row in {ALL_FINDINGS: summary["overall"],
                                                       **summary["per_finding"]}.items()]
    own = summary.get(FINDING_MAPS)
    if own:
        lines += [f"each finding's own map (Grad-CAM of its logit) against that finding's boxes "
                  f"({own['empty_maps']} empty maps):", _HEADER]
        lines += [_line(finding, row) for finding, row in own["per_finding"].items()]
    return "\n".join(lines)


_HEADER = (f"{'finding':<20}{'images':>7}{'boxes':>7}{'pointing':>10}{'baseline':>10}"
           f"{'energy':>9}{'baseline':>10}{'area':>7}")


def _line(finding: str, row: Mapping[str, Any]) -> str:
    return (f"{finding:<20}{row['images']:>7}{row['boxes']:>7}{row['pointing_game']:>10.3f}"
            f"{row['pointing_game_baseline']:>10.3f}{row['energy_in_boxes']:>9.3f}"
            f"{row['energy_in_boxes_baseline']:>10.3f}{row['box_area_fraction']:>7.3f}")
