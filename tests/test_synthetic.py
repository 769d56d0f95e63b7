"""The synthetic generator's "radiograph" preset gives no intensity shortcut and documents its
label noise; the "easy" preset stays learnable by the tiny test model (test_end_to_end.py)."""

import csv
import os

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from contracts import labels
from contracts.boxes import BBOX_CSV_SPELLING
from preprocess import synthetic_data, synthetic_radiographs

SIZE = 128
MAX_SHORTCUT_AUROC = 0.65


def _generate(out: str, preset: str):
    counts = synthetic_data.generate(synthetic_data.SyntheticConfig(output_dir=out, preset=preset, num_patients=150,
                                                          source_size=SIZE, seed=0))
    with open(os.path.join(out, "Data_Entry_2017_v2020.csv")) as f:
        rows = list(csv.DictReader(f))
    with open(os.path.join(out, synthetic_data.LABEL_NOISE_FILE)) as f:
        flips = list(csv.DictReader(f))
    pixels = np.stack([np.asarray(Image.open(os.path.join(out, "images_001", "images", r["Image Index"])), np.float32)
                       for r in rows])
    return out, counts, rows, flips, pixels


@pytest.fixture(scope="module")
def radiographs(tmp_path_factory):
    return _generate(str(tmp_path_factory.mktemp("radiographs")), "radiograph")


def _separation(y: np.ndarray, feature: np.ndarray) -> float:
    """AUROC of a single feature in its better direction."""
    auroc = roc_auc_score(y, feature)
    return max(auroc, 1.0 - auroc)


def _shortcuts(generated) -> tuple[float, float]:
    """How well the whole image's and the lung fields' mean intensity separate the true labels."""
    _, _, rows, flips, pixels = generated
    written = {r["Image Index"]: r["Finding Labels"] for r in rows}
    written.update({f["Image Index"]: f["True Finding Labels"] for f in flips})  # judge on the truth
    y = np.array([int(written[r["Image Index"]] != labels.NO_FINDING) for r in rows])
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    lungs = np.zeros((SIZE, SIZE), bool)
    for cx in (0.3, 0.7):  # the lung fields' average place
        lungs |= ((xx - cx) / 0.15) ** 2 + ((yy - 0.47) / 0.28) ** 2 <= 1.0
    assert 0.3 < y.mean() < 0.7
    return _separation(y, pixels.mean(axis=(1, 2))), _separation(y, pixels[:, lungs].mean(axis=1))


def test_mean_intensity_is_no_shortcut(radiographs, tmp_path):
    whole, lungs = _shortcuts(radiographs)
    assert whole <= MAX_SHORTCUT_AUROC and lungs <= MAX_SHORTCUT_AUROC, (whole, lungs)
    # The same measure does see the shortcut of the easy preset (one anatomy, bright lesions).
    easy_whole, easy_lungs = _shortcuts(_generate(str(tmp_path / "easy"), "easy"))
    assert max(easy_whole, easy_lungs) > 0.8, (easy_whole, easy_lungs)


def test_label_noise_is_recorded_image_by_image(radiographs):
    _, counts, rows, flips, _ = radiographs
    written = {r["Image Index"]: r["Finding Labels"] for r in rows}
    assert counts["flipped"] == len(flips)
    # 10% of the images, within a 4-sigma binomial band.
    n, p = len(rows), synthetic_data.PRESETS["radiograph"]
    assert abs(len(flips) - n * p) <= 4 * np.sqrt(n * p * (1 - p))
    for flip in flips:
        assert written[flip["Image Index"]] == flip["Written Finding Labels"]
        assert (flip["True Finding Labels"] == labels.NO_FINDING) != (flip["Written Finding Labels"] == labels.NO_FINDING)


def test_findings_are_the_radiograph_kinds_and_boxes_name_them(radiographs):
    out, _, rows, _, _ = radiographs
    kinds = set(synthetic_radiographs.FINDING_KINDS)
    found = {k for r in rows for k in r["Finding Labels"].split("|")} - {labels.NO_FINDING}
    assert found == kinds and kinds <= set(labels.FINDINGS)
    with open(os.path.join(out, "BBox_List_2017.csv")) as f:
        next(f)
        boxed = {line.split(",")[1] for line in f}
    spelled = {BBOX_CSV_SPELLING.get(k, k) for k in kinds}
    assert boxed and boxed <= spelled


def test_an_unknown_preset_names_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="radiograph, easy"):
        synthetic_data.generate(synthetic_data.SyntheticConfig(output_dir=str(tmp_path), preset="hard"))
