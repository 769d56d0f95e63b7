"""Prediction files: round trip, validation of bad files, and joining on ids."""

import json

import numpy as np
import pytest

from contracts.errors import UserInputError
from contracts.prediction_files import align, read_predictions, sidecar_path, write_predictions


def _csv(path, text):
    path.write_text(text)
    return str(path)


def test_round_trip_keeps_ids_probabilities_labels_and_sidecar(tmp_path):
    path = str(tmp_path / "p.csv")
    probs = np.array([0.1, 1 / 3, 0.999999999])
    write_predictions(path, ["NA", "00000001_000.png", "0012"], probs, np.array([0, 1, -1]),
                      {"backbone": "resnet50"})
    read = read_predictions(path)
    assert list(read.ids) == ["NA", "00000001_000.png", "0012"]  # "NA" stays an id, "0012" keeps its zeros
    np.testing.assert_array_equal(read.probs, probs)
    np.testing.assert_array_equal(read.labels, [0, 1, -1])
    assert read.backbone == "resnet50" and sidecar_path(path) == str(tmp_path / "p.json")


def test_each_format_version_is_read_by_its_own_meaning(tmp_path):
    raw, calibrated = [0.2, 0.9], [0.3, 0.7]
    # Today's format: p_abnormal is handed over, p_uncalibrated raw; the sidecar says so.
    path = str(tmp_path / "new.csv")
    write_predictions(path, ["a", "b"], np.array(calibrated), sidecar={"backbone": "resnet50"},
                      uncalibrated=np.array(raw))
    with open(sidecar_path(path)) as f:
        assert json.load(f) == {"backbone": "resnet50", "prediction_format_version": 2}
    new = read_predictions(path)
    assert new.format_version == 2
    np.testing.assert_array_equal(new.probs, calibrated)
    np.testing.assert_array_equal(new.uncalibrated, raw)
    # Written before the change (format 1): p_abnormal raw, p_calibrated handed over, no version.
    old_csv = _csv(tmp_path / "old.csv", "image_id,p_abnormal,label,p_calibrated\na,0.2,0,0.3\nb,0.9,1,0.7\n")
    (tmp_path / "old.json").write_text(json.dumps({"backbone": "resnet50", "temperature": 2.0}))
    old = read_predictions(old_csv)
    assert old.format_version == 1
    np.testing.assert_array_equal(old.probs, calibrated)
    np.testing.assert_array_equal(old.uncalibrated, raw)
    # A version-1 val_predictions.csv (no p_calibrated) and a file made elsewhere: p_abnormal for both.
    old_val = read_predictions(_csv(tmp_path / "val.csv", "image_id,p_abnormal,label\na,0.2,0\nb,0.9,1\n"))
    np.testing.assert_array_equal(old_val.uncalibrated, raw)
    np.testing.assert_array_equal(old_val.probs, raw)
    joined = align([new, old, old_val])
    np.testing.assert_array_equal(joined.uncalibrated, np.stack([raw] * 3, axis=1))
    (tmp_path / "val.json").write_text(json.dumps({"prediction_format_version": 3}))
    with pytest.raises(UserInputError, match=r"val\.json: prediction_format_version 3 is not one this project "
                                             r"reads \(1 to 2\)"):
        read_predictions(str(tmp_path / "val.csv"))


def test_no_label_column_and_no_sidecar_are_allowed(tmp_path):
    read = read_predictions(_csv(tmp_path / "p.csv", "image_id,p_abnormal\na,0.2\nb,0.9\n"))
    assert read.labels is None and read.sidecar is None and read.backbone is None


@pytest.mark.parametrize("text, message", [
    ("image_id,p_abnormal\na,0.2\nb,0.3\na,0.4\nc,0.1\nc,0.5\n", r"p\.csv: 2 duplicate image_id.*a, c"),
    ("image_id,p_abnormal\na,0.2\nb,nan\nc,\nd,0.1\n",
     r"p\.csv: p_abnormal is missing, NaN or not a number for 2 id.*b, c"),
    ("image_id,p_abnormal\na,0.2\nb,1.5\nc,-0.1\n",
     r"p\.csv: p_abnormal outside \[0, 1\] for 2 id.*b \(1\.5\), c \(-0\.1\)"),
    ("image_id,p_abnormal\na,0.2\nb,high\n", r"not a number for 1 id.*: b"),
    ("image_id,p_abnormal,label\na,0.2,1\nb,0.3,2\n", r"label must be 0, 1 or -1.*: b"),
    ("image_id,prob\na,0.2\n", r"no column p_abnormal \(has: image_id, prob\)"),
    ("image_id,p_abnormal\n", r"no rows"),
    ("image_id,p_abnormal\na,0.2\n,0.3\n", r"empty image_id"),
])
def test_bad_files_are_refused_naming_the_file_and_ids(tmp_path, text, message):
    with pytest.raises(UserInputError, match=message):
        read_predictions(_csv(tmp_path / "p.csv", text))


def test_many_offending_ids_are_abbreviated(tmp_path):
    rows = "".join(f"id{i},2.0\n" for i in range(9))
    with pytest.raises(UserInputError, match=r"id0 \(2\), id1 \(2\), id2 \(2\), id3 \(2\), id4 \(2\) and 4 more"):
        read_predictions(_csv(tmp_path / "p.csv", "image_id,p_abnormal\n" + rows))


def test_npy_missing_files_and_bad_sidecars_are_refused(tmp_path):
    with pytest.raises(UserInputError, match=r"\.npy file carries no image ids"):
        read_predictions(str(tmp_path / "p.npy"))
    with pytest.raises(UserInputError, match="not found"):
        read_predictions(str(tmp_path / "absent.csv"))
    path = _csv(tmp_path / "p.csv", "image_id,p_abnormal\na,0.2\n")
    (tmp_path / "p.json").write_text("{not json")
    with pytest.raises(UserInputError, match=r"p\.json: sidecar is not valid JSON"):
        read_predictions(path)
    (tmp_path / "p.json").write_text(json.dumps(["backbone"]))
    with pytest.raises(UserInputError, match="JSON object"):
        read_predictions(path)


def test_align_joins_on_ids_in_the_first_files_order(tmp_path):
    a = read_predictions(_csv(tmp_path / "a.csv", "image_id,p_abnormal,label\nx,0.1,0\ny,0.2,1\nz,0.3,-1\n"))
    b = read_predictions(_csv(tmp_path / "b.csv", "image_id,p_abnormal,label\nz,0.6,1\nx,0.4,0\ny,0.5,-1\n"))
    joined = align([a, b])
    assert list(joined.ids) == ["x", "y", "z"]
    np.testing.assert_allclose(joined.probs, [[0.1, 0.4], [0.2, 0.5], [0.3, 0.6]])
    np.testing.assert_array_equal(joined.labels, [0, 1, 1])  # unknowns filled from the other file


def test_align_refuses_different_id_sets_naming_both_sides(tmp_path):
    a = read_predictions(_csv(tmp_path / "a.csv", "image_id,p_abnormal\nx,0.1\ny,0.2\n"))
    b = read_predictions(_csv(tmp_path / "b.csv", "image_id,p_abnormal\nx,0.1\nq,0.2\n"))
    message = r"b\.csv: different image ids from .*a\.csv.*not in .*: q.*missing: y"
    with pytest.raises(UserInputError, match=message):
        align([a, b])


def test_align_refuses_conflicting_labels(tmp_path):
    a = read_predictions(_csv(tmp_path / "a.csv", "image_id,p_abnormal,label\nx,0.1,0\ny,0.2,1\n"))
    b = read_predictions(_csv(tmp_path / "b.csv", "image_id,p_abnormal,label\ny,0.1,0\nx,0.2,0\n"))
    with pytest.raises(UserInputError, match=r"b\.csv: labels disagree .* 1 id\(s\): y"):
        align([a, b])
