"""The one labels-CSV reader (contracts/labels_csv.py): another reading of the same images."""

import gzip

import pytest

from contracts.labels_csv import read_labels_csv


@pytest.mark.parametrize("text, expected", [
    ("image_id,label\na.png,1\nb.png,0\n", {"a.png": 1, "b.png": 0}),
    ("image_id,Panel abnormal\na.png,YES\nb.png,no\n", {"a.png": 1, "b.png": 0}),  # the one other column
    ("Image Index,Finding Labels,Patient ID\na.png,Mass|Nodule,1\nb.png,No Finding,2\n", {"a.png": 1, "b.png": 0}),
    ("SOPInstanceUID,label\n1.2.3,Yes\n", {"1.2.3": 1}),
])
def test_each_dialect_reads(tmp_path, text, expected):
    path = tmp_path / "labels.csv"
    path.write_text(text)
    assert read_labels_csv(str(path)) == expected


def test_gzip_reads_the_same(tmp_path):
    path = tmp_path / "labels.csv.gz"
    path.write_bytes(gzip.compress(b"image_id,label\na.png,1\n"))
    assert read_labels_csv(str(path)) == {"a.png": 1}


@pytest.mark.parametrize("text, message", [
    ("image_id,label\na.png,1\na.png,1\n", "line 3: image_id 'a.png' is listed twice"),
    ("image_id,label\na.png,2\n", "line 2: label='2' is not a label; use 0/1, YES/NO"),
    ("image_id,label\na.png,maybe\n", "label='maybe' is not a label"),
    ("image_id,label\n,1\n", "line 2: empty image_id"),
    ("image_id,reader1,reader2\na.png,1,0\n", "one label column"),
    ("file,label\na.png,1\n", "needs a key column"),
    ("Image Index,Finding Labels\na.png,Dragon\n",
         r"line 2: Finding Labels: unknown finding label\(s\) \['Dragon'\]; known: Atelectasis, Cardiomegaly"),
])
def test_bad_files_are_refused_naming_the_line(tmp_path, text, message):
    path = tmp_path / "labels.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_labels_csv(str(path))
