"""The synthetic generator's "radiograph" preset: anatomy varies per patient, exposure, noise and
distractors (marker, ECG leads, a tube) per image, and each finding has its own look. The exposure
moves an image's mean more than any finding does, so intensity is no shortcut."""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# Each kind's name is an NIH finding (contracts.labels.FINDINGS), written to Finding Labels.
FINDING_KINDS = ("Nodule", "Mass", "Infiltration", "Effusion", "Cardiomegaly")


@dataclasses.dataclass(frozen=True)
class Patient:
    """One patient's anatomy, in fractions of the image side."""
    lung_x: tuple[float, float]  # centres of the right and left lung fields
    lung_y: float
    lung_rx: float
    lung_ry: float
    heart_x: float
    heart_w: float
    heart_h: float
    rib_frequency: float
    rib_phase: float
    body_w: float
    tissue: float  # soft-tissue brightness


def make_patient(rng: np.random.Generator) -> Patient:
    spread = rng.uniform(0.18, 0.23)
    centre = 0.5 + rng.uniform(-0.03, 0.03)
    return Patient(
        lung_x=(centre - spread, centre + spread), lung_y=0.47 + rng.uniform(-0.04, 0.04),
        lung_rx=rng.uniform(0.12, 0.17), lung_ry=rng.uniform(0.24, 0.32),
        heart_x=centre + rng.uniform(0.0, 0.04), heart_w=rng.uniform(0.10, 0.13),
        heart_h=rng.uniform(0.11, 0.14),
        rib_frequency=rng.uniform(30.0, 48.0), rib_phase=rng.uniform(0, 2 * np.pi),
        body_w=rng.uniform(0.40, 0.48), tissue=rng.uniform(115.0, 150.0))


def _soft(distance: np.ndarray, edge: float) -> np.ndarray:
    """1 inside (distance < 1), 0 outside, with a smooth edge `edge` wide."""
    return 0.5 - 0.5 * np.tanh((distance - 1.0) / (2.0 * edge))  # the logistic, without overflow


def _ellipse(xx, yy, cx, cy, rx, ry) -> np.ndarray:
    return np.sqrt(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2)


def _blob(xx, yy, cx, cy, radius) -> np.ndarray:
    return np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * radius**2)))


def _in_lung(rng: np.random.Generator, patient: Patient, margin: float = 0.6) -> tuple[float, float]:
    """A random point well inside one of the lung fields."""
    side = int(rng.integers(2))
    angle, reach = rng.uniform(0, 2 * np.pi), margin * np.sqrt(rng.uniform(0, 1))
    return (patient.lung_x[side] + reach * patient.lung_rx * np.cos(angle),
            patient.lung_y + reach * patient.lung_ry * np.sin(angle))


def render(patient: Patient, findings: tuple[str, ...], rng: np.random.Generator, size: int):
    """Draws one image of `patient` with `findings`; returns (float image, boxes as (kind, x, y, w, h)
    in pixels of `size`)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    body = _soft(np.abs(xx - 0.5) / patient.body_w, 0.03)
    image = 25.0 + (patient.tissue - 25.0) * body
    heart_scale = rng.uniform(1.6, 1.9) if "Cardiomegaly" in findings else 1.0
    lungs = np.zeros_like(image)
    for cx in patient.lung_x:
        lung = _ellipse(xx, yy, cx, patient.lung_y, patient.lung_rx, patient.lung_ry)
        lungs = np.maximum(lungs, _soft(lung, 0.04))
    ribs = 10.0 * np.sin(yy * patient.rib_frequency + np.abs(xx - 0.5) * 7.0 + patient.rib_phase)
    image += lungs * (-85.0 + ribs)
    heart_w, heart_h = patient.heart_w * heart_scale, patient.heart_h * heart_scale ** 0.5
    heart_y = patient.lung_y + patient.lung_ry - heart_h * 0.9
    image += 55.0 * _soft(_ellipse(xx, yy, patient.heart_x, heart_y, heart_w, heart_h), 0.05)
    image += 30.0 * body * _soft((patient.lung_y + patient.lung_ry * 0.9 - yy) / 0.03 + 1.0, 0.5)  # abdomen
    boxes = []
    if heart_scale > 1.0:
        boxes.append(("Cardiomegaly", patient.heart_x - heart_w, heart_y - heart_h, 2 * heart_w, 2 * heart_h))
    for kind in findings:
        if kind != "Cardiomegaly":
            boxes.append((kind, *_draw_finding(kind, image, xx, yy, patient, rng)))
    return image, [(kind, x * size, y * size, w * size, h * size) for kind, x, y, w, h in boxes]


def _draw_finding(kind: str, image, xx, yy, patient: Patient, rng) -> tuple[float, float, float, float]:
    """Adds one finding to `image`; returns its box (x, y, w, h) in fractions."""
    if kind in ("Nodule", "Mass"):
        cx, cy = _in_lung(rng, patient)
        radius = rng.uniform(0.03, 0.045) if kind == "Nodule" else rng.uniform(0.06, 0.09)
        image += rng.uniform(60.0, 90.0) * _soft(np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / radius, 0.15)
        return cx - radius, cy - radius, 2 * radius, 2 * radius
    if kind == "Infiltration":
        cx, cy = _in_lung(rng, patient, margin=0.4)
        for x, y, r in [(cx + rng.normal(0, 0.04), cy + rng.normal(0, 0.06), rng.uniform(0.03, 0.06))
                        for _ in range(5)]:
            image += rng.uniform(35.0, 50.0) * _blob(xx, yy, x, y, r)
        return cx - 0.1, cy - 0.14, 0.2, 0.28
    side = int(rng.integers(2))  # Effusion: fluid filling the bottom of one lung, a meniscus at its top
    cx, bottom = patient.lung_x[side], patient.lung_y + patient.lung_ry
    depth = rng.uniform(0.12, 0.22) * patient.lung_ry / 0.28
    curve = ((xx - cx) / patient.lung_rx) ** 2 * (1 if side else -1) * np.sign(xx - cx)
    meniscus = bottom - depth + 0.5 * depth * curve
    in_lung = _soft(_ellipse(xx, yy, cx, patient.lung_y, patient.lung_rx, patient.lung_ry), 0.04)
    image += rng.uniform(55.0, 80.0) * in_lung * _soft((meniscus - yy) / 0.01 + 1.0, 0.6)
    return cx - patient.lung_rx, bottom - depth * 1.5, 2 * patient.lung_rx, depth * 1.5


def acquire(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One exposure of `image`: gain, offset and gamma, marker, leads and tubes, blur and noise."""
    size = image.shape[0]
    scaled = np.clip(image / 255.0, 0.0, 1.0) ** rng.uniform(0.9, 1.1)
    scaled = scaled * 255.0 * rng.uniform(0.9, 1.1) + rng.uniform(-12.0, 12.0)
    canvas = Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), mode="L")
    draw = ImageDraw.Draw(canvas)
    corner = (rng.uniform(0.04, 0.12) * size, rng.uniform(0.04, 0.12) * size)
    marker = "LR"[int(rng.integers(2))]
    draw.text(corner, marker, fill=int(rng.integers(215, 256)), font_size=max(8, size // 16))
    for _ in range(int(rng.integers(0, 4))):  # ECG leads: small bright rings on the chest wall
        x = rng.choice([0.1, 0.9]) * size + rng.normal(0, 0.02) * size
        y, r = rng.uniform(0.05, 0.9) * size, size * 0.012
        draw.ellipse((x - r, y - r, x + r, y + r), outline=240, width=max(1, size // 256))
    if rng.random() < 0.3:  # a tube down the middle
        points = [(size * (0.5 + rng.normal(0, 0.01)), size * t) for t in np.linspace(0.0, 0.55, 6)]
        draw.line(points, fill=230, width=max(1, size // 128))
    blurred = canvas.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 1.0) * size / 512))
    noisy = np.asarray(blurred, np.float32) + rng.normal(0.0, rng.uniform(3.0, 6.0), (size, size))
    return np.clip(noisy, 0, 255).astype(np.uint8)
