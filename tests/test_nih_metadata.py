"""Reading NIH metadata: both Data_Entry dialects, the bbox CSV, label rules and unsafe names."""

import gzip
import os

import pytest

from contracts import labels
from contracts.boxes import FindingBox
from preprocess import nih_metadata as md

HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
          "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n")


def write_csv(tmp_path, body: str, name="entries.csv", header=HEADER) -> str:
    path = tmp_path / name
    path.write_text(header + body)
    return str(path)


def test_both_real_dialects_agree_on_ids_and_patients(nih_sample):
    v2020 = md.read_data_entry(os.path.join(nih_sample, "Data_Entry_2017_v2020.csv.gz"))
    v2017 = md.read_data_entry(os.path.join(nih_sample, "Data_Entry_2017.csv.gz"))
    assert v2020.rows == v2017.rows == 112_120
    assert len(v2020.entries) == len(v2017.entries) == 112_120
    assert not v2020.skipped and not v2017.skipped
    first = v2017.entries["00000001_001.png"]
    assert first.patient_id == v2020.entries["00000001_001.png"].patient_id == "1"  # "00000001" vs "1"
    assert first.label == 1 and first.view_position == "PA"
    assert first.findings[labels.FINDINGS.index("Cardiomegaly")] == 1
    assert first.findings[labels.FINDINGS.index("Emphysema")] == 1
    normal = sum(e.label == 0 for e in v2020.entries.values()) / len(v2020.entries)
    assert 0.52 < normal < 0.56  # about 54% "No Finding"


def test_real_bbox_csv_has_984_boxes_on_880_images(nih_sample):
    boxes, problems = md.read_bbox_csv(os.path.join(nih_sample, "BBox_List_2017.csv"))
    assert not problems
    assert len(boxes) == 880
    assert sum(len(b) for b in boxes.values()) == 984
    first = boxes["00013118_008.png"][0]
    assert first.finding == "Atelectasis" and (round(first.x, 3), round(first.y, 3)) == (225.085, 547.019)
    findings = {b.finding for image in boxes.values() for b in image}
    assert "Infiltration" in findings and findings <= set(labels.FINDINGS)  # spelled "Infiltrate" in the file


def test_gzip_and_crlf_and_trailing_comma_dialect(tmp_path):
    body = "a.png,No Finding,000,00000007,058Y,M,AP,2500,2048,0.168,0.168\r\n"
    header = HEADER.rstrip("\n") + ",\r\n"
    path = tmp_path / "e.csv.gz"
    with gzip.open(path, "wt", newline="") as f:
        f.write(header + body)
    table = md.read_data_entry(str(path))
    assert table.entries["a.png"] == md.Entry("a.png", 0, (0,) * 14, "7", "AP", sex="M", age=58,
                                                  findings_known=True)


def test_label_problems_and_duplicates_are_skipped_with_reasons(tmp_path):
    body = (
        "ok.png,Mass|Nodule,0,1,50,M,PA,1,1,1,1\n"
        "dup.png,Mass,0,2,50,M,PA,1,1,1,1\n"
        "dup.png,Mass,0,2,50,M,PA,1,1,1,1\n"          # identical: collapses
        "conflict.png,Mass,0,3,50,M,PA,1,1,1,1\n"
        "conflict.png,No Finding,0,3,50,M,PA,1,1,1,1\n"  # conflicting: skipped
        "empty.png,,0,4,50,M,PA,1,1,1,1\n"
        "unknown.png,Mass|Tumour,0,5,50,M,PA,1,1,1,1\n"
        "mixed.png,No Finding|Mass,0,6,50,M,PA,1,1,1,1\n"
        "nopatient.png,Mass,0,,50,M,PA,1,1,1,1\n"
        "../escape.png,Mass,0,7,50,M,PA,1,1,1,1\n"
        "/etc/passwd,Mass,0,8,50,M,PA,1,1,1,1\n"
    )
    table = md.read_data_entry(write_csv(tmp_path, body))
    assert set(table.entries) == {"ok.png", "dup.png"}
    assert table.identical_duplicates == 1
    reasons = {s.image: s.reason for s in table.skipped}
    assert set(reasons) == {"conflict.png", "empty.png", "unknown.png", "mixed.png", "nopatient.png",
                            "../escape.png", "/etc/passwd"}
    assert "conflicting duplicate" in reasons["conflict.png"]
    assert "empty finding label" in reasons["empty.png"]
    assert "Tumour" in reasons["unknown.png"]
    assert "No Finding" in reasons["mixed.png"]
    assert "Patient ID" in reasons["nopatient.png"]
    assert "plain file name" in reasons["../escape.png"]
    assert "plain file name" in reasons["/etc/passwd"]


def test_missing_column_names_the_file_and_columns(tmp_path):
    path = write_csv(tmp_path, "a.png,x\n", header="Image Index,Labels\n")
    with pytest.raises(ValueError, match="missing column.*Finding Labels"):
        md.read_data_entry(path)


def test_union_box_and_invalid_boxes():
    assert md.union_box([(10, 20, 30, 40), (100, 5, 10, 10)]) == (10, 5, 100, 55)
    with pytest.raises(ValueError, match=r"box \(x=10, y=20, w=-5, h=40\) is degenerate"):
        md.union_box([(10, 20, -5, 40)])
    with pytest.raises(ValueError, match="box.*is degenerate"):
        md.union_box([(float("nan"), 20, 5, 40)])


def test_bbox_rows_with_unreadable_numbers_are_reported(tmp_path):
    path = tmp_path / "b.csv"
    path.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\na.png,Mass,1,2,3,4\nb.png,Mass,x,2,3,4\n"
                    "a.png,Infiltrate,5,6,7,8\nc.png,Tumour,1,2,3,4\n")
    boxes, problems = md.read_bbox_csv(str(path))
    assert boxes == {"a.png": [FindingBox("Mass", 1.0, 2.0, 3.0, 4.0), FindingBox("Infiltration", 5.0, 6.0, 7.0, 8.0)]}
    assert [p.image for p in problems] == ["b.png", "c.png"] and "unknown finding 'Tumour'" in problems[1].reason


@pytest.mark.parametrize("value, years", [("058Y", 58), ("58", 58), (" 62 ", 62), (62, 62), ("062M", 5),
                                          ("003W", 0), ("411Y", None), ("", None), (None, None), ("abc", None)])
def test_ages_read_tolerantly(value, years):
    from contracts.demographics import parse_age

    assert parse_age(value) == years


def test_labels_csv_by_id_or_findings(tmp_path):
    from contracts.labels_csv import read_labels_csv

    path = tmp_path / "labels.csv"
    path.write_text("Image Index,Finding Labels\na.png,No Finding\nb.dcm,Nodule|Mass\n")
    assert read_labels_csv(str(path)) == {"a.png": 0, "b.dcm": 1}
    path.write_text("SOPInstanceUID,label\n1.2.3,1\n1.2.4,maybe\n")
    with pytest.raises(ValueError, match="line 3: label='maybe' is not a label"):
        read_labels_csv(str(path))
