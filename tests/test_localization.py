"""Boxes with their findings in the record, where a box lands in a stored image, and the localization
scores (pointing game, energy in the boxes, the centred baseline) against independent computations."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from contracts import records
from contracts.boxes import FindingBox, stored_box
from contracts.labels import NIH_FRAME
from evaluation import localization
from preprocess import images

FINDINGS = [0] * len(records.FINDINGS)


def _example(**kw) -> tf.train.Example:
    return records.make_example(records.Record(image=b"png", image_format="png", image_size=8, image_id="a.png",
                                               label=1, findings=FINDINGS, **kw))


def test_records_carry_every_box_with_its_finding_and_older_records_read_as_boxless():
    boxes = [FindingBox("Mass", 10.5, 20.0, 30.0, 40.0), FindingBox("Nodule", 500.0, 600.0, 7.0, 8.0)]
    new = _example(boxes=boxes, box=(10.5, 20.0, 496.5, 588.0))
    old = _example()
    for key in (records.BOXES, records.BOX_FINDINGS):  # as a schema-3 builder wrote it: no such features
        del old.features.feature[key]
    assert records.example_to_dict(new.SerializeToString())["boxes"] == boxes
    assert records.example_to_dict(old.SerializeToString())["boxes"] == []
    parsed = records.parse_example(tf.constant([new.SerializeToString(), old.SerializeToString()]))
    coordinates = tf.sparse.to_dense(parsed[records.BOXES]).numpy()
    names = tf.sparse.to_dense(parsed[records.BOX_FINDINGS], default_value=b"").numpy()
    np.testing.assert_array_equal(coordinates[0], [10.5, 20, 30, 40, 500, 600, 7, 8])
    assert names[0].tolist() == [b"Mass", b"Nodule"] and not coordinates[1].any() and not names[1].any()
    assert parsed[records.BOX].numpy()[1].tolist() == [0, 0, 0, 0]  # the union field is unchanged
    with pytest.raises(ValueError, match="box finding"):
        _example(boxes=[FindingBox("Infiltrate", 1, 2, 3, 4)])  # the bbox file's spelling is not a finding


def _bright_centre(stored: bytes, background: float) -> tuple[float, float]:
    """The intensity centroid (x, y) of what stands above the background, pixel (i, j) at (j + .5, i + .5)."""
    values = np.asarray(Image.open(io.BytesIO(stored)), np.float64) - background
    rows, cols = np.mgrid[0:values.shape[0], 0:values.shape[1]] + 0.5
    return float((cols * values).sum() / values.sum()), float((rows * values).sum() / values.sum())


@pytest.mark.parametrize("crop", [None, (256.0, 128.0, 512.0, 640.0)], ids=["uncropped", "cropped"])
def test_a_box_lands_where_the_builders_resize_and_crop_put_its_pixels(crop):
    # A non-square source (768 x 512), so the frame is stretched unequally: a bright rectangle whose
    # frame box is known, through the builder's own decode, crop and resize.
    width, height, size, background = 768, 512, 64, 50.0
    source = np.full((height, width), background, np.uint8)
    left, top, right, bottom = 312, 150, 372, 210  # source pixels
    source[top:bottom, left:right] = 200
    buffer = io.BytesIO()
    Image.fromarray(source).save(buffer, format="PNG")
    out = images.process(buffer.getvalue(), box=crop, image_size=size, image_format="png")
    assert out.crop_applied == (crop is not None)
    frame_box = (left * NIH_FRAME / width, top * NIH_FRAME / height,
                 (right - left) * NIH_FRAME / width, (bottom - top) * NIH_FRAME / height)
    x0, y0, x1, y1 = stored_box(frame_box, size, crop)
    got = _bright_centre(out.encoded, background)
    np.testing.assert_allclose(got, ((x0 + x1) / 2, (y0 + y1) / 2), atol=0.15)
    # Its extent too: the crop stretches it (a 60 px wide box over a 256-frame-unit crop).
    expected_width = (right - left) / width * NIH_FRAME * size / (crop[2] if crop else NIH_FRAME)
    assert x1 - x0 == pytest.approx(expected_width)


def _reference_scores(heatmap: np.ndarray, boxes) -> tuple[bool, float]:
    """The pointing game and the energy fraction, pixel by pixel in plain Python."""
    size = heatmap.shape[0]

    def inside(i, j):
        return any(left <= j + 0.5 <= right and top <= i + 0.5 <= bottom for left, top, right, bottom in boxes)

    best, where = -1.0, None
    for i in range(size):
        for j in range(size):
            if heatmap[i, j] > best:
                best, where = heatmap[i, j], (i, j)
    total = sum(float(heatmap[i, j]) for i in range(size) for j in range(size))
    boxed = sum(float(heatmap[i, j]) for i in range(size) for j in range(size) if inside(i, j))
    return inside(*where), boxed / total


def test_pointing_game_and_energy_equal_a_pixel_by_pixel_computation():
    rng = np.random.default_rng(0)
    size = 12
    for _ in range(40):
        heatmap = rng.random((size, size)).astype(np.float32) ** 3
        boxes = []
        for _ in range(rng.integers(1, 3)):
            x, y = rng.uniform(-2, size - 2, 2)
            boxes.append((x, y, x + rng.uniform(1.2, 6), y + rng.uniform(1.2, 6)))
        mask = localization.box_mask(boxes, size)
        hit, energy = _reference_scores(heatmap, boxes)
        assert localization.pointing_hit(heatmap, mask) == hit
        assert localization.energy_fraction(heatmap, mask) == pytest.approx(energy, rel=1e-6)


def test_tiny_boxes_empty_maps_and_the_centred_baseline():
    # A box thinner than a pixel holds no pixel centre: the pixel holding its middle stands for it.
    assert np.argwhere(localization.box_mask([(3.1, 5.2, 3.4, 5.3)], 8)).tolist() == [[5, 3]]
    flat, mask = np.zeros((8, 8)), localization.box_mask([(0, 0, 8, 8)], 8)
    assert not localization.pointing_hit(flat, mask) and localization.energy_fraction(flat, mask) == 0.0
    assert not localization.pointing_hit(np.full((8, 8), 0.5), mask)  # flat: no maximum to point with
    size, sigma = 40, 0.25
    baseline = localization.centred_gaussian(size, sigma)
    i, j = np.mgrid[0:size, 0:size]
    expected = np.exp(-(((i + 0.5) - 20) ** 2 + ((j + 0.5) - 20) ** 2) / (2 * (sigma * size) ** 2))
    np.testing.assert_allclose(baseline, expected, rtol=1e-6)
    assert localization.pointing_hit(baseline, localization.box_mask([(18, 18, 22, 22)], size))
    assert not localization.pointing_hit(baseline, localization.box_mask([(2, 2, 12, 12)], size))


def test_the_tally_reports_overall_and_per_finding_means_with_counts():
    rng = np.random.default_rng(1)
    size, tally = 16, localization.LocalizationTally(16)
    cases = []
    for k in range(6):
        heatmap = rng.random((size, size)).astype(np.float32)
        boxes = {"Mass": [(1.0 + k, 2.0, 7.0 + k, 9.0)]}
        if k % 2:
            boxes["Nodule"] = [(9.0, 9.0, 14.0, 15.0), (0.0, 12.0, 3.0, 16.0)]
        tally.add(f"{k}.png", heatmap, boxes)
        cases.append((heatmap, boxes))
    got = tally.summary()
    assert (got["images"], got["boxes"]) == (6, 6 + 3 * 2)
    for finding, row in (("all", got["overall"]), ("Mass", got["per_finding"]["Mass"]),
                         ("Nodule", got["per_finding"]["Nodule"])):
        scores = [_reference_scores(h, [b for f, found in boxes.items() for b in found if finding in ("all", f)])
                  for h, boxes in cases if finding == "all" or finding in boxes]
        baseline = [_reference_scores(tally.baseline, [b for f, found in boxes.items() for b in found
                                                       if finding in ("all", f)])
                    for _, boxes in cases if finding == "all" or finding in boxes]
        assert row["images"] == len(scores)
        assert row["pointing_game"] == pytest.approx(np.mean([s[0] for s in scores]))
        assert row["energy_in_boxes"] == pytest.approx(np.mean([s[1] for s in scores]), rel=1e-6)
        assert row["pointing_game_baseline"] == pytest.approx(np.mean([s[0] for s in baseline]))
        assert row["energy_in_boxes_baseline"] == pytest.approx(np.mean([s[1] for s in baseline]), rel=1e-6)
    assert got["per_finding"]["Nodule"]["boxes"] == 6 and "Nodule" in localization.format_table(got)


def test_each_findings_own_map_is_scored_against_that_findings_boxes_only():
    # Each finding's map peaks inside the OTHER finding's box: against every box it would hit.
    size, tally = 16, localization.LocalizationTally(16)
    boxes = {"Mass": [(1.0, 1.0, 6.0, 6.0)], "Nodule": [(9.0, 9.0, 15.0, 15.0), (0.0, 12.0, 3.0, 16.0)]}
    rng = np.random.default_rng(4)
    maps = {"Mass": rng.random((size, size)) * 0.5, "Nodule": rng.random((size, size)) * 0.5}
    maps["Mass"][11, 11] = maps["Nodule"][3, 3] = 1.0
    binary = rng.random((size, size))
    tally.add("a.png", binary, boxes)
    tally.add_finding_maps("a.png", maps, boxes)
    tally.add("b.png", binary, {"Mass": boxes["Mass"]})
    tally.add_finding_maps("b.png", {"Mass": maps["Nodule"]}, {"Mass": boxes["Mass"]})
    got = tally.summary()
    own = got[localization.FINDING_MAPS]["per_finding"]
    assert own["Mass"]["images"] == 2 and own["Nodule"]["images"] == 1 and own["Nodule"]["boxes"] == 2
    for finding, cases in (("Mass", [(maps["Mass"], boxes["Mass"]), (maps["Nodule"], boxes["Mass"])]),
                           ("Nodule", [(maps["Nodule"], boxes["Nodule"])])):
        scores = [_reference_scores(m, b) for m, b in cases]
        assert own[finding]["pointing_game"] == pytest.approx(np.mean([s[0] for s in scores]))
        assert own[finding]["energy_in_boxes"] == pytest.approx(np.mean([s[1] for s in scores]), rel=1e-6)
        baseline = [_reference_scores(tally.baseline, b) for _, b in cases]
        assert own[finding]["pointing_game_baseline"] == pytest.approx(np.mean([s[0] for s in baseline]))
    assert own["Mass"]["pointing_game"] == 0.5  # a.png misses (its peak is on Nodule), b.png hits
    # The binary map's table is unchanged by the finding maps beside it.
    assert got["per_finding"]["Mass"]["images"] == 2 and got["overall"]["images"] == 2
    assert "each finding's own map" in localization.format_table(got)
    alone = localization.LocalizationTally(16)
    alone.add("a.png", binary, boxes)
    alone.add("b.png", binary, {"Mass": boxes["Mass"]})
    assert localization.FINDING_MAPS not in alone.summary()
    assert localization.format_table(alone.summary()) == "\n".join(
        localization.format_table(got).splitlines()[:2 + 3])
