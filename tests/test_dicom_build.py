"""DICOM through the builder: found by content, keyed by path, decoded, resized and tagged like
any other image; every unusable file skipped with its reason."""

import io
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from contracts import records
from contracts.errors import UserInputError
from preprocess import builder, images
from preprocess.config import BuildConfig
from tests.dicom_factory import write_dicom

SIZE = 32


def _records(output_dir: str) -> dict[str, dict]:
    with open(os.path.join(output_dir, "manifest.json")) as f:
        manifest = json.load(f)
    paths = [os.path.join(output_dir, s) for s in manifest["splits"]["eval"]["shards"]]
    return {r["image_id"]: r for r in (records.example_to_dict(x.numpy()) for x in tf.data.TFRecordDataset(paths))}


def _stored(record: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(record["image"])))


def _expected(stored_values: np.ndarray) -> np.ndarray:
    """What the builder stores for 8-bit MONOCHROME2 data: Pillow's resize of the stored values."""
    return np.asarray(Image.fromarray(stored_values).resize(
        (SIZE, SIZE), Image.Resampling.BICUBIC, reducing_gap=images.REDUCING_GAP))


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
    """PNG, DICOM under every kind of name, two `1.dcm` in two series, and broken DICOMs."""
    root = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(5)
    pixels = {name: rng.integers(0, 256, (128, 144), dtype=np.uint8) for name in ("s1", "s2", "named_png")}
    for series in ("s1", "s2"):
        os.makedirs(root / "study" / series)
        write_dicom(str(root / "study" / series / "1.dcm"), pixels[series], patient_id=f"P-{series}",
                    age="045Y" if series == "s1" else "62", sex="F" if series == "s1" else "O", view="ap")
    write_dicom(str(root / "scan.png"), pixels["named_png"], patient_id="P-png")  # DICOM under a .png name
    Image.fromarray(pixels["s1"]).save(root / "plain.png")
    write_dicom(str(root / "frames.dcm"), pixels["s1"], frames=2)
    write_dicom(str(root / "empty.dcm"), pixels["s1"], pixel_data=False)
    write_dicom(str(root / "whole.dcm"), pixels["s1"])
    data = (root / "whole.dcm").read_bytes()
    (root / "cut.dcm").write_bytes(data[: len(data) // 2])
    os.remove(root / "whole.dcm")
    (root / "notes.txt").write_text("not an image")
    return str(root), pixels


def test_a_mixed_folder_builds_every_readable_image_and_skips_the_rest(mixed_folder, tmp_path):
    folder, pixels = mixed_folder
    out = str(tmp_path / "out")
    result = builder.build(BuildConfig(image_dir=folder, output_dir=out, split_by="unlabeled", image_size=SIZE,
                                       workers=1, max_skip_fraction=1.0))
    got = _records(out)
    # Two series reuse "1.dcm": both are kept, keyed by their path under --image_dir.
    assert sorted(got) == ["plain.png", "scan.png", "study/s1/1.dcm", "study/s2/1.dcm"]
    for image_id, key in (("study/s1/1.dcm", "s1"), ("study/s2/1.dcm", "s2"), ("scan.png", "named_png")):
        np.testing.assert_array_equal(_stored(got[image_id]), _expected(pixels[key]))
    s1, s2 = got["study/s1/1.dcm"], got["study/s2/1.dcm"]
    assert (s1["patient_id"], s1["view_position"], s1["sex"], s1["age"], s1["label"]) == ("P-s1", "AP", "F", 45, -1)
    assert (s2["sex"], s2["age"]) == ("", 62)  # "O" is unknown; a bare "62" is 62 years
    assert got["plain.png"]["patient_id"] == "" and got["plain.png"]["age"] == records.AGE_UNKNOWN
    reasons = {s["image"]: s["reason"] for s in result.manifest["skipped"]}
    assert sorted(reasons) == ["cut.dcm", "empty.dcm", "frames.dcm"]
    assert "multi-frame" in reasons["frames.dcm"] and "no pixel data" in reasons["empty.dcm"]
    assert "truncated" in reasons["cut.dcm"]
    assert result.manifest["unlisted"] == 1  # notes.txt


def test_a_folder_of_only_dicom_builds(mixed_folder, tmp_path):
    folder, _ = mixed_folder
    only = tmp_path / "only"
    shutil.copytree(os.path.join(folder, "study"), only)
    result = builder.build(BuildConfig(image_dir=str(only), output_dir=str(tmp_path / "out"), split_by="unlabeled",
                                       image_size=SIZE, workers=1))
    assert result.ok and result.manifest["splits"]["eval"]["records"] == 2


def test_a_glob_pattern_selects_files_and_keys_them_under_its_fixed_folder(mixed_folder, tmp_path):
    folder, _ = mixed_folder
    out = str(tmp_path / "out")
    builder.build(BuildConfig(image_dir=os.path.join(folder, "study", "**", "*.dcm"), output_dir=out,
                              split_by="unlabeled", image_size=SIZE, workers=1))
    assert sorted(_records(out)) == ["s1/1.dcm", "s2/1.dcm"]


def test_the_real_monochrome1_file_is_stored_inverted(shared_dicom, tmp_path):
    folder = tmp_path / "real"
    folder.mkdir()
    for name in os.listdir(shared_dicom):
        shutil.copy(os.path.join(shared_dicom, name), folder / name)
    out = str(tmp_path / "out")
    builder.build(BuildConfig(image_dir=str(folder), output_dir=out, split_by="unlabeled", image_size=256, workers=1))
    got = _records(out)
    plain = _stored(got["siim_chest_pa.dcm"]).astype(int)
    inverted = _stored(got["siim_chest_pa_monochrome1.dcm"]).astype(int)
    # The same pixels under a MONOCHROME1 header: bone bright in both once inverted. Pillow's
    # fixed-point resize of 255 - v equals 255 - resize(v) up to its rounding (2 grey levels).
    gap = np.abs(inverted - (255 - plain))
    assert gap.max() <= 2 and gap.mean() < 0.5
    assert np.abs(inverted - plain).mean() > 50  # and not simply the same image
    assert got["siim_chest_pa.dcm"]["age"] == 62 and got["siim_chest_pa.dcm"]["sex"] == "M"


def test_a_labels_csv_labels_the_images_it_names_and_one_naming_none_is_refused(mixed_folder, tmp_path):
    folder, _ = mixed_folder
    labels = tmp_path / "labels.csv"
    labels.write_text("image_id,label\nstudy/s1/1.dcm,1\nplain.png,0\n")
    out = str(tmp_path / "out")
    builder.build(BuildConfig(image_dir=folder, output_dir=out, split_by="unlabeled", image_size=SIZE, workers=1,
                              max_skip_fraction=1.0, labels_csv=str(labels)))
    assert {k: r["label"] for k, r in _records(out).items()} == {
        "plain.png": 0, "scan.png": -1, "study/s1/1.dcm": 1, "study/s2/1.dcm": -1}
    labels.write_text("image_id,label\n1.dcm,1\n")  # the file name, not its path under the folder
    with pytest.raises(UserInputError, match=r"names none of the 7 image files found \(its ids look like '1.dcm'"):
        builder.build(BuildConfig(image_dir=folder, output_dir=str(tmp_path / "none"), split_by="unlabeled",
                                  image_size=SIZE, workers=1, max_skip_fraction=1.0, labels_csv=str(labels)))
    assert not os.path.exists(tmp_path / "none" / "manifest.json")
