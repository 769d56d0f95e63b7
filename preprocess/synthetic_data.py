"""A small synthetic dataset in NIH ChestX-ray14's format (CSVs, split lists, PNGs under
images_001/images/), for tests and the demo. Same seed, same bytes."""

from __future__ import annotations

import csv
import dataclasses
import io
import os

import numpy as np
from PIL import Image

from contracts import labels
from contracts.atomic import atomic_path, write_text
from contracts.boxes import BBOX_CSV_SPELLING
from contracts.labels import NIH_FRAME
from contracts.settings import REQUIRED, check, setting
from contracts.shared import OUTPUT_DIR, SEED
from preprocess import synthetic_radiographs
from preprocess.config import NUM_PATIENTS, SOURCE_SIZE
from preprocess.nih_metadata import BBOX_COLUMNS

DATA_ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
BBOX_HEADER = ",".join(BBOX_COLUMNS) + ",Bbox [x,y,w,h],,,"  # as NIH wrote it
# Preset -> its label noise. "radiograph" (synthetic_radiographs.py): varied anatomy, exposure and
# findings, the demo's data. "easy": one bright round lesion per abnormal image, learnt in seconds.
PRESETS = {"radiograph": 0.1, "easy": 0.0}
# Bumped whenever the same config would generate other images, so the demo regenerates.
GENERATOR_VERSION = 2
LABEL_NOISE_FILE = "label_noise.csv"  # the flipped images: image, true and written Finding Labels


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """What to generate; every field is a flag of preprocess/synthetic.py."""

    output_dir: str = OUTPUT_DIR.field(REQUIRED, note="Here: the CSVs and images_001/images/*.png.")
    preset: str = setting("radiograph", (
        "radiograph: varied anatomy, exposure, distractors and five finding kinds (the demo's data); "
        "easy: one anatomy and one bright lesion (data a tiny model learns in seconds)."),
        choices=tuple(PRESETS))
    label_noise: float | None = setting(None, (
        f"Share of images whose written label is flipped, listed in {LABEL_NOISE_FILE} (default: the "
        f"preset's, {PRESETS})."), lower=0.0, upper=1.0)
    num_patients: int = NUM_PATIENTS.field(120)
    max_images_per_patient: int = setting(5, "Each patient gets 1..this many images.", lower=1)
    source_size: int = SOURCE_SIZE.field(1024)
    abnormal_fraction: float = setting(0.5, "Share of images with a finding.", lower=0.0, upper=1.0)
    bbox_fraction: float = setting(0.3, "Share of findings given a bbox row.", lower=0.0, upper=1.0)
    test_patient_fraction: float = setting(0.2, "Share of patients in test_list.txt.", lower=0.0, upper=1.0)
    seed: int = SEED.field(note="Here: the patients, images and labels.")

    def __post_init__(self):
        check(self)


def _anatomy(rng: np.random.Generator, size: int) -> np.ndarray:
    """A patient's chest: body, two dark lung fields, a bright mediastinum and rib shadows."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    image = 150.0 + 40.0 * (1.0 - np.abs(xx - 0.5) * 2.0)
    for cx in (0.3 + rng.uniform(-0.02, 0.02), 0.7 + rng.uniform(-0.02, 0.02)):
        lung = ((xx - cx) / 0.17) ** 2 + ((yy - 0.5) / 0.3) ** 2 <= 1.0
        image[lung] -= 90.0
    ribs = 12.0 * np.sin(yy * rng.uniform(38.0, 46.0) + np.abs(xx - 0.5) * 6.0)
    return image + ribs


def _lesion(rng: np.random.Generator, size: int, image: np.ndarray) -> tuple[float, float, float, float]:
    """Adds a round opacity of varied size and contrast in a lung; returns its box (x, y, w, h) px."""
    cx = rng.choice([0.3, 0.7]) + rng.uniform(-0.07, 0.07)
    cy = 0.5 + rng.uniform(-0.18, 0.18)
    radius = rng.uniform(0.04, 0.09)
    contrast = rng.uniform(30.0, 90.0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    distance = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / radius
    image += contrast * np.clip(1.0 - distance**2, 0.0, None)
    return ((cx - radius) * size, (cy - radius) * size, 2 * radius * size, 2 * radius * size)


def _easy_image(rng, size, anatomy, abnormal):
    """The "easy" preset: the patient's anatomy, one round lesion on abnormal images."""
    image = anatomy.copy()
    chosen, boxes = (), []
    if abnormal:
        chosen = tuple(rng.choice(labels.FINDINGS, size=int(rng.integers(1, 3)), replace=False))
        boxes = [(chosen[0], *_lesion(rng, size, image))]
    noisy = image + rng.normal(0.0, 8.0, image.shape).astype(np.float32)
    return np.clip(noisy, 0, 255).astype(np.uint8), chosen, boxes


def _radiograph_image(rng, size, patient, abnormal):
    chosen = ()
    if abnormal:  # no draw for a normal image: the same seed keeps giving the same images
        count = int(rng.choice([1, 1, 2]))
        chosen = tuple(sorted(rng.choice(synthetic_radiographs.FINDING_KINDS, size=count, replace=False)))
    image, boxes = synthetic_radiographs.render(patient, chosen, rng, size)
    return synthetic_radiographs.acquire(image, rng), chosen, boxes


def _written_labels(rng, chosen: tuple, noise: float) -> tuple[str, bool]:
    """The Finding Labels cell: the truth, or with probability `noise` its opposite."""
    if rng.random() >= noise:
        return "|".join(sorted(chosen)) or labels.NO_FINDING, False
    return (labels.NO_FINDING if chosen else str(rng.choice(synthetic_radiographs.FINDING_KINDS))), True


def generate(config: SyntheticConfig) -> dict[str, int]:
    """Writes the dataset; returns counts {"images", "abnormal", "boxes", "patients", "flipped"}."""
    if config.preset not in PRESETS:
        raise ValueError(f"unknown preset {config.preset!r}; valid: {', '.join(PRESETS)}")
    noise = PRESETS[config.preset] if config.label_noise is None else config.label_noise
    rng = np.random.default_rng(config.seed)
    image_dir = os.path.join(config.output_dir, "images_001", "images")
    os.makedirs(image_dir, exist_ok=True)
    size, scale = config.source_size, NIH_FRAME / config.source_size
    rows, boxes, flips, patient_images = [], [], [], {}
    for patient in range(1, config.num_patients + 1):
        anatomy = (_anatomy(rng, size) if config.preset == "easy"
                   else synthetic_radiographs.make_patient(rng))
        age, sex = int(rng.integers(18, 90)), rng.choice(["M", "F"])
        names = []
        for follow_up in range(int(rng.integers(1, config.max_images_per_patient + 1))):
            name = f"{patient:08d}_{follow_up:03d}.png"
            make = _easy_image if config.preset == "easy" else _radiograph_image
            pixels, chosen, found = make(rng, size, anatomy, rng.random() < config.abnormal_fraction)
            finding_labels, flipped = _written_labels(rng, chosen, noise)
            if flipped:
                flips.append([name, "|".join(chosen) or labels.NO_FINDING, finding_labels])
            for kind, x, y, w, h in found:
                if rng.random() < config.bbox_fraction:
                    spelled = BBOX_CSV_SPELLING.get(kind, kind)
                    boxes.append([name, spelled, x * scale, y * scale, w * scale, h * scale])
            with atomic_path(os.path.join(image_dir, name), durable=False) as tmp:
                Image.fromarray(pixels, mode="L").save(tmp, format="PNG", compress_level=1)
            view = "PA" if rng.random() < 0.6 else "AP"
            rows.append([name, finding_labels, follow_up, patient, age + follow_up // 4, sex, view,
                         NIH_FRAME, NIH_FRAME, 0.143, 0.143])
            names.append(name)
        patient_images[patient] = names
    _write_tables(config, rows, boxes, patient_images, rng)
    write_text(os.path.join(config.output_dir, LABEL_NOISE_FILE),
               _csv_text("Image Index,True Finding Labels,Written Finding Labels", flips))
    abnormal = sum(r[1] != labels.NO_FINDING for r in rows)
    return {"images": len(rows), "abnormal": abnormal, "boxes": len(boxes), "patients": config.num_patients,
            "flipped": len(flips)}


def _csv_text(header: str, rows: list[list]) -> str:
    buffer = io.StringIO()
    buffer.write(header + "\n")
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def _write_tables(config, rows, boxes, patient_images, rng) -> None:
    out = config.output_dir
    write_text(os.path.join(out, "Data_Entry_2017_v2020.csv"), _csv_text(DATA_ENTRY_HEADER, rows))
    write_text(os.path.join(out, "BBox_List_2017.csv"), _csv_text(BBOX_HEADER, boxes))
    patients = sorted(patient_images)
    test = set(rng.choice(patients, size=int(len(patients) * config.test_patient_fraction), replace=False))
    for file_name, keep in (("train_val_list.txt", False), ("test_list.txt", True)):
        write_text(os.path.join(out, file_name),
                   "".join(f"{name}\n" for patient in patients if (patient in test) == keep
                           for name in patient_images[patient]))
