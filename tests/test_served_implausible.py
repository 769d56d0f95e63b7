"""The served graph marks images that cannot be films (too small, or nearly constant) as `implausible`
and sends them to review, by the builder's rule on the same bytes."""

import io

import numpy as np
import tensorflow as tf
from PIL import Image, ImageStat

from contracts.decode_rules import MIN_IMAGE_SIDE, MIN_IMAGE_STD
from evaluation import triage as triage_lib
from preprocess import chest_gate
from serving import exporter
from serving.config import ExportConfig
from tests import test_export
from tests.test_export import SIZE
from tests.test_export_triage import _write_ensemble

runs = test_export.runs  # the fixture: two tiny runs and their val files


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def _cases() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    noise = lambda side: rng.integers(0, 256, (side, side))  # noqa: E731
    almost_flat = np.full((256, 256), 128)
    almost_flat[:8, :] = 120  # std sqrt(p (1 - p)) * 8 with p = 1/32: 1.39, just above the minimum 1.0
    flatter = np.full((256, 256), 128)
    flatter[:2, :] = 120  # p = 1/128: std 0.70, below it
    return {"one": np.zeros((1, 1)), "small": noise(32), "constant": np.full((1024, 1024), 128),
            "side_below": noise(MIN_IMAGE_SIDE - 1), "side_at": noise(MIN_IMAGE_SIDE), "almost_flat": almost_flat,
            "flatter": flatter, "film": noise(300)}


def test_images_that_cannot_be_films_are_marked_and_reviewed_by_the_builders_rule(runs, tmp_path):
    # Catches: the served check on the resized pixels' side (every image is S px) or std, `<=` for `<`,
    # the mark not sending the image to review, a marked image handed back as a plain triage group.
    # A triage that clears every image it may: a marked one must still come back as review.
    clear_all = triage_lib.Triage(
        triage_lib.GuaranteedThreshold(1.0, 0.05, 0.1, 60, 0.04, 0.0, 0),
        triage_lib.GuaranteedThreshold(None, 0.1, 0.1, 60, 1.0, 0.0, 0), None, triage_lib.TriageSettings(),
        {"files": ["made up"], "images": 120, "abnormal": 60, "normal": 60, "exact": True, "note": None})
    path = _write_ensemble(str(tmp_path / "e.probabilities.json"), runs, (0.5, 0.5), (1.0, 1.0),
                           triage_lib.to_record(clear_all))
    exporter.run_export(ExportConfig(runs["dirs"], str(tmp_path / "served"), ensemble=path))
    loaded = tf.saved_model.load(str(tmp_path / "served"))
    cases = _cases()
    out = loaded.signatures["serving_default"](image_bytes=tf.constant([_png(p) for p in cases.values()]))
    served = dict(zip(cases, out["implausible"].numpy().tolist()))
    triage = dict(zip(cases, out["triage"].numpy().astype(str).tolist()))
    # The builder's rule (preprocess.chest_gate.implausible) on Pillow's reading of the same bytes.
    expected = {}
    for name, pixels in cases.items():
        image = Image.open(io.BytesIO(_png(pixels)))
        std = ImageStat.Stat(image.convert("L")).stddev[0]
        expected[name] = int(chest_gate.implausible(image.size, std, MIN_IMAGE_SIDE, MIN_IMAGE_STD) is not None)
    assert served == expected
    assert expected == {"one": 1, "small": 1, "constant": 1, "side_below": 1, "side_at": 0, "almost_flat": 0,
                        "flatter": 1, "film": 0}
    assert {name: group for name, group in triage.items()} == {
        name: "review" if flag else "cleared" for name, flag in served.items()}
    # The pixels signature has no source size: only flatness, on the pixels as sent.
    pixels = np.stack([np.full((SIZE, SIZE), 90.0), np.random.default_rng(1).uniform(0, 255, (SIZE, SIZE))])
    flat = loaded.signatures["pixels"](pixels=tf.constant(np.repeat(pixels[..., None], 3, -1), tf.float32))
    assert flat["implausible"].numpy().tolist() == [1, 0]
    assert flat["triage"].numpy()[0].decode() == "review"
