"""The offline builder: round trip, splits, crop, decoding, bad inputs, resume and determinism."""

import csv
import io
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from contracts import manifest as manifest_lib
from contracts import records
from contracts.errors import UserInputError
from preprocess import builder, images, plan
from preprocess import synthetic_data as synthetic
from preprocess.config import BuildConfig
from tests.conftest import REPO

HEADER = synthetic.DATA_ENTRY_HEADER + "\n"


def read_records(output_dir: str) -> dict[str, list[dict]]:
    """split -> records (plain dicts) in shard order, read with TensorFlow."""
    manifest = json.load(open(os.path.join(output_dir, "manifest.json")))
    out = {}
    for split, info in manifest["splits"].items():
        paths = [os.path.join(output_dir, s) for s in info["shards"]]
        out[split] = [records.example_to_dict(r.numpy()) for r in tf.data.TFRecordDataset(paths)]
    return out


def pixels(record: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(record["image"])))


@pytest.fixture(scope="module")
def synthetic_data(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("synthetic"))
    synthetic.generate(synthetic.SyntheticConfig(output_dir=out, num_patients=24, source_size=128,
                                                 bbox_fraction=0.5, seed=3))
    return out


def config_for(data: str, out: str, **kw) -> BuildConfig:
    base = dict(data_entry_csv=os.path.join(data, "Data_Entry_2017_v2020.csv"),
                bbox_csv=os.path.join(data, "BBox_List_2017.csv"), image_dir=data,
                output_dir=out, image_size=32, workers=1, num_shards=3)
    base.update(kw)
    return BuildConfig(**base)


def test_round_trip_ids_labels_pixels_over_several_shards(synthetic_data, tmp_path):
    result = builder.build(config_for(synthetic_data, str(tmp_path), crop="none"))
    assert result.ok, result.summary
    got = read_records(str(tmp_path))
    assert len(result.manifest["splits"]["train"]["shards"]) == 3
    entries = {}
    for line in open(os.path.join(synthetic_data, "Data_Entry_2017_v2020.csv")).readlines()[1:]:
        cells = line.strip().split(",")
        entries[cells[0]] = cells
    seen = [r["image_id"] for rs in got.values() for r in rs]
    assert sorted(seen) == sorted(entries)  # every image exactly once
    expected_boxes = {}
    for cells in list(csv.reader(open(os.path.join(synthetic_data, "BBox_List_2017.csv"))))[1:]:
        finding = "Infiltration" if cells[1] == "Infiltrate" else cells[1]  # the bbox file's spelling
        expected_boxes.setdefault(cells[0], []).append((finding, *(float(v) for v in cells[2:6])))
    assert expected_boxes
    for record in (r for rs in got.values() for r in rs):  # every box, with its finding, in file order
        expected = expected_boxes.get(record["image_id"], [])
        assert [b.finding for b in record["boxes"]] == [e[0] for e in expected]
        np.testing.assert_allclose([b.xywh for b in record["boxes"]], [e[1:] for e in expected], rtol=1e-6)
    for record in got["train"][:10]:
        row = entries[record["image_id"]]
        assert record["label"] == int(row[1] != "No Finding")
        assert record["patient_id"] == row[3] and record["view_position"] == row[6]
        assert (record["age"], record["sex"]) == (int(row[4]), row[5])
        source = Image.open(os.path.join(synthetic_data, "images_001", "images", record["image_id"]))
        expected = source.resize((32, 32), Image.Resampling.BICUBIC, reducing_gap=images.REDUCING_GAP)
        np.testing.assert_array_equal(pixels(record), np.asarray(expected))
        assert record["image_size"] == 32 and record["image_format"] == "png"


def _record_offsets(data: bytes) -> list[int]:
    """Where each record of a TFRecord file starts, walked by its 8-byte little-endian lengths."""
    offsets, position = [], 0
    while position < len(data):
        offsets.append(position)
        position += struct.unpack_from("<Q", data, position)[0] + 16  # length, 2 CRCs
    return offsets


def test_the_manifest_keeps_shard_sizes_and_readers_refuse_a_cut_copy(synthetic_data, tmp_path):
    out = str(tmp_path / "built")
    manifest = builder.build(config_for(synthetic_data, out, crop="none")).manifest
    for info in manifest["splits"].values():
        assert info[manifest_lib.SHARD_BYTES] == {
            name: os.path.getsize(os.path.join(out, name)) for name in info["shards"]}
    path = os.path.join(out, manifest["splits"]["train"]["shards"][-1])
    with open(path, "rb") as f:
        data = f.read()
    whole = sum(1 for _ in tf.data.TFRecordDataset(path))
    cut = data[: _record_offsets(data)[-1] + 6]  # inside the last record's 12-byte header
    with open(path, "wb") as f:
        f.write(cut)
    # Why the sizes are kept: TensorFlow reads this copy without an error, one record short.
    assert sum(1 for _ in tf.data.TFRecordDataset(path)) == whole - 1
    manifest_lib.ShardFolder.open(out).split("val")  # the other splits' shards are whole
    with pytest.raises(UserInputError, match=re.escape(
            f"{path} is {len(cut):,} bytes but the builder wrote {len(data):,} (cut short): a damaged or partial copy")):
        manifest_lib.ShardFolder.open(out).split("train")
    # The fix the message gives, in the folder copied elsewhere: the build resumes there.
    moved = str(tmp_path / "moved")
    shutil.copytree(out, moved)
    assert builder.build(config_for(synthetic_data, moved, crop="none")).ok
    with open(os.path.join(moved, os.path.basename(path)), "rb") as f:
        assert f.read() == data  # made again, not kept as finished
    manifest_lib.ShardFolder.open(moved).split("train")
    # A manifest whose sizes are not byte counts is refused, not read as "no sizes".
    for nonsense in ("oops", [1, 2], {os.path.basename(path): "52997"}, {os.path.basename(path): -1}):
        manifest = json.load(open(os.path.join(moved, "manifest.json")))
        manifest["splits"]["train"][manifest_lib.SHARD_BYTES] = nonsense
        json.dump(manifest, open(os.path.join(moved, "manifest.json"), "w"))
        with pytest.raises(UserInputError, match="shard_bytes of split 'train' is not a map of shard name to byte count"):
            manifest_lib.ShardFolder.open(moved).split("train")


def test_grouped_split_has_no_patient_in_two_splits(synthetic_data, tmp_path):
    result = builder.build(config_for(synthetic_data, str(tmp_path), test_fraction=0.2))
    assert result.manifest["patient_overlap"] == 0
    got = read_records(str(tmp_path))
    patients = {split: {r["patient_id"] for r in rs} for split, rs in got.items()}
    assert set(patients) == {"train", "val", "test"}
    assert not patients["train"] & patients["val"] and not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]
    for split, info in result.manifest["splits"].items():
        assert info["records"] == len(got[split]) == info["normal"] + info["abnormal"]
        assert info["patients"] == len(patients[split])


def test_official_split_follows_the_lists(synthetic_data, tmp_path):
    cfg = config_for(synthetic_data, str(tmp_path), split_by="official",
                     train_val_list=os.path.join(synthetic_data, "train_val_list.txt"),
                     test_list=os.path.join(synthetic_data, "test_list.txt"))
    result = builder.build(cfg)
    got = read_records(str(tmp_path))
    test_names = set(open(cfg.test_list).read().split())
    assert {r["image_id"] for r in got["test"]} == test_names
    assert result.manifest["patient_overlap"] == 0


def test_crop_to_box_scaled_from_the_1024_frame(tmp_path):
    data = tmp_path / "data"
    (data / "img").mkdir(parents=True)
    source = np.random.default_rng(0).integers(0, 255, (256, 256), dtype=np.uint8)
    Image.fromarray(source).save(data / "img" / "a.png")
    Image.fromarray(source).save(data / "img" / "b.png")
    (data / "e.csv").write_text(HEADER + "a.png,Mass,0,1,50,M,PA,1,1,1,1\nb.png,Mass,0,2,50,M,PA,1,1,1,1\n")
    (data / "b.csv").write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                                "a.png,Mass,256,512,512,256\na.png,Mass,0,0,4,4\n"
                                "b.png,Mass,2000,2000,10,10\n")
    cfg = BuildConfig(data_entry_csv=str(data / "e.csv"), bbox_csv=str(data / "b.csv"),
                         image_dir=str(data), output_dir=str(tmp_path / "out"), split_by="all",
                         image_size=16, workers=1, crop="bbox")
    result = builder.build(cfg)
    got = {r["image_id"]: r for r in read_records(cfg.output_dir)["all"]}
    # a.png: union of the two boxes = (0, 0, 768, 768) in 1024 → (0, 0, 192, 192) in 256 px.
    assert got["a.png"]["crop_applied"] and got["a.png"]["box"] == [0, 0, 768, 768]
    assert got["a.png"]["boxes"] == [("Mass", 256, 512, 512, 256), ("Mass", 0, 0, 4, 4)]  # kept apart, with findings
    expected = Image.fromarray(source).resize((16, 16), Image.Resampling.BICUBIC, box=(0, 0, 192, 192),
                                              reducing_gap=images.REDUCING_GAP)
    np.testing.assert_array_equal(pixels(got["a.png"]), np.asarray(expected))
    # b.png: box outside the frame → written uncropped, listed under warnings.
    assert not got["b.png"]["crop_applied"]
    assert [w["image"] for w in result.manifest["warnings"]] == ["b.png"]
    assert "outside" in result.manifest["warnings"][0]["reason"]


def test_crop_region_clips_and_rejects():
    assert images.crop_region((-100, 900, 300, 300), 512, 512) == (0.0, 450.0, 100.0, 512.0)
    with pytest.raises(images.ImageError, match="outside"):
        images.crop_region((1100, 10, 50, 50), 1024, 1024)
    with pytest.raises(images.ImageError, match="degenerate"):
        images.crop_region((10, 10, 0, 50), 1024, 1024)


def test_real_sample_builds_with_the_right_counts(nih_sample, tmp_path):
    # The command a new user runs first: every default, boxes given. Uncropped, with a test split.
    done = subprocess.run(cli([f"--data_entry_csv={nih_sample}/Data_Entry_2017_v2020.csv.gz",
                               f"--bbox_csv={nih_sample}/BBox_List_2017.csv", f"--image_dir={nih_sample}",
                               f"--output_dir={tmp_path}", "--workers=2"], module=True),
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    m = json.load(open(tmp_path / "manifest.json"))
    assert not m["skipped"] and not m["warnings"]
    assert m["config"]["crop"] == "none" and m["config"]["split_by"] == "grouped"
    assert set(m["splits"]) == {"train", "val", "test"} and m["patient_overlap"] == 0
    assert sum(s["records"] for s in m["splits"].values()) == 116
    assert (sum(s["normal"] for s in m["splits"].values()), sum(s["abnormal"] for s in m["splits"].values())) == (55, 61)
    assert 0.1 < m["splits"]["test"]["records"] / 116 < 0.3  # about --test_fraction's default 0.2
    assert m["absent"] == 112_120 - 116
    assert len(open(tmp_path / "absent.txt").read().split()) == m["absent"]
    got = [r for rs in read_records(str(tmp_path)).values() for r in rs]
    assert not any(r["crop_applied"] for r in got) and sum(bool(r["boxes"]) for r in got) == 6  # kept, not cropped
    assert "zoomed in means abnormal" not in done.stderr
    rgba = [n for n in os.listdir(os.path.join(nih_sample, "images_001", "images"))
            + os.listdir(os.path.join(nih_sample, "images_002", "images"))
            if Image.open(next(os.path.join(nih_sample, d, "images", n)
                               for d in ("images_001", "images_002")
                               if os.path.exists(os.path.join(nih_sample, d, "images", n)))).mode == "RGBA"]
    assert len(rgba) == 3
    by_id = {r["image_id"]: r for r in got}
    for name in rgba:
        assert pixels(by_id[name]).shape == (224, 224)


def test_real_sample_crops_its_boxed_images_with_crop_bbox_and_says_why_not_to(nih_sample, tmp_path, caplog):
    cfg = BuildConfig(data_entry_csv=os.path.join(nih_sample, "Data_Entry_2017_v2020.csv.gz"),
                      bbox_csv=os.path.join(nih_sample, "BBox_List_2017.csv"), image_dir=nih_sample,
                      output_dir=str(tmp_path), split_by="all", workers=2, image_size=32, crop="bbox")
    result = builder.build(cfg)
    assert result.ok and result.manifest["splits"]["all"]["records"] == 116
    assert sum(r["crop_applied"] for r in read_records(str(tmp_path))["all"]) == 6
    shortcut = [r for r in caplog.records if "zoomed in means abnormal" in r.getMessage()]
    assert len(shortcut) == 1 and shortcut[0].levelname == "WARNING"


def save(image: Image.Image, path, fmt="PNG", **kw):
    image.save(path, format=fmt, **kw)


@pytest.fixture
def hostile_dir(tmp_path):
    """A folder with good images in every decodable mode and one file per bad-input kind."""
    d = tmp_path / "data" / "images_001" / "images"
    d.mkdir(parents=True)
    gray = np.random.default_rng(1).integers(0, 255, (128, 128), dtype=np.uint8)
    good = {
        "l.png": Image.fromarray(gray),
        "la.png": Image.fromarray(np.stack([gray, gray], -1), mode="LA"),
        "rgb.png": Image.fromarray(np.stack([gray] * 3, -1)),
        "rgba.png": Image.fromarray(np.stack([gray] * 3 + [np.full_like(gray, 7)], -1)),
        "p.png": Image.fromarray(gray).convert("P"),
        "i16.png": Image.fromarray(gray.astype(np.uint16) * 257),
    }
    for name, image in good.items():
        save(image, d / name)
    save(Image.fromarray(gray), d / "jpeg_named.png", fmt="JPEG", quality=95)
    buf = io.BytesIO()
    save(Image.fromarray(gray), buf)
    (d / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(300))
    (d / "empty.png").write_bytes(b"")
    (d / "text.png").write_bytes(b"hello, not an image")
    save(Image.fromarray(gray), d / "gif.png", fmt="GIF")
    save(Image.fromarray(gray).convert("CMYK"), d / "cmyk.jpg", fmt="JPEG")  # Pillow reads it; serving cannot
    save(Image.fromarray(np.zeros((400, 400), np.uint8)), d / "bomb.png")
    (d / "unlisted.png").write_bytes(buf.getvalue())
    names = list(good) + ["jpeg_named.png", "truncated.png", "corrupt.png", "empty.png", "text.png",
                          "gif.png", "bomb.png", "cmyk.jpg"]
    rows = [f"{n},{'No Finding' if i % 2 else 'Mass'},0,{i + 1},40,F,PA,1,1,1,1" for i, n in enumerate(names)]
    rows += ["absent.png,Mass,0,99,40,F,PA,1,1,1,1", "../outside.png,Mass,0,98,40,F,PA,1,1,1,1",
             "l.png,No Finding,0,1,40,F,PA,1,1,1,1",  # conflicts with the l.png row above
             "rgb.png,Mass,0,3,40,F,PA,1,1,1,1"]  # identical duplicate of rgb.png's row
    csv_path = tmp_path / "data" / "Data_Entry.csv"
    csv_path.write_text(HEADER + "\n".join(rows) + "\n")
    return tmp_path / "data", gray


def test_every_bad_input_is_skipped_with_its_reason(hostile_dir, tmp_path):
    data, gray = hostile_dir
    cfg = BuildConfig(data_entry_csv=str(data / "Data_Entry.csv"), image_dir=str(data),
                         output_dir=str(tmp_path / "out"), split_by="all", image_size=128, workers=1,
                         max_image_pixels=100_000)
    result = builder.build(cfg)
    m = result.manifest
    reasons = {s["image"]: s["reason"] for s in m["skipped"]}
    assert set(reasons) == {"truncated.png", "corrupt.png", "empty.png", "text.png", "gif.png",
                            "bomb.png", "cmyk.jpg", "../outside.png", "l.png"}
    assert "truncated" in reasons["truncated.png"]
    assert "empty file" in reasons["empty.png"]
    assert "GIF" in reasons["gif.png"]
    assert "decompression bomb" in reasons["bomb.png"]
    assert images.JPEG_FOUR_COMPONENTS in reasons["cmyk.jpg"]  # the served model's reason too (test_export)
    assert "conflicting duplicate" in reasons["l.png"]
    assert "plain file name" in reasons["../outside.png"]
    # unlisted: unlisted.png and the CSV itself, which lies under --image_dir here
    assert m["absent"] == 1 and m["unlisted"] == 2 and m["identical_duplicates"] == 1
    assert not result.ok and "FAILED" in result.summary and "max_skip_fraction" in result.summary
    got = {r["image_id"]: pixels(r) for r in read_records(cfg.output_dir)["all"]}
    assert set(got) == {"la.png", "rgb.png", "rgba.png", "p.png", "i16.png", "jpeg_named.png"}
    for name in ("la.png", "rgb.png", "rgba.png", "p.png", "i16.png"):
        np.testing.assert_array_equal(got[name], gray, err_msg=name)
    assert np.abs(got["jpeg_named.png"].astype(int) - gray).mean() < 6  # lossy source


def test_skip_fraction_within_limit_exits_zero(hostile_dir, tmp_path):
    data, _ = hostile_dir
    cfg = BuildConfig(data_entry_csv=str(data / "Data_Entry.csv"), image_dir=str(data),
                         output_dir=str(tmp_path / "out"), split_by="all", image_size=128, workers=1,
                         max_skip_fraction=0.9)
    assert builder.build(cfg).ok


def test_unlabeled_folder_becomes_eval_shards(hostile_dir, tmp_path):
    data, _ = hostile_dir
    (data / "notes.txt").write_text("not an image")
    cfg = BuildConfig(image_dir=str(data), output_dir=str(tmp_path / "out"), split_by="unlabeled",
                         image_size=32, workers=1, max_skip_fraction=1.0)
    m = builder.build(cfg).manifest
    got = read_records(cfg.output_dir)["eval"]
    assert {r["label"] for r in got} == {-1}
    assert "unlisted.png" in {r["image_id"] for r in got}
    assert m["unlisted"] == 2  # notes.txt and Data_Entry.csv


def test_rerun_with_other_flags_refuses_unless_overwrite(synthetic_data, tmp_path):
    builder.build(config_for(synthetic_data, str(tmp_path)))
    assert builder.build(config_for(synthetic_data, str(tmp_path), workers=2, max_skip_fraction=0.5)).ok
    with pytest.raises(UserInputError, match="flags differ: image_size"):
        builder.build(config_for(synthetic_data, str(tmp_path), image_size=16))
    result = builder.build(config_for(synthetic_data, str(tmp_path), image_size=16, overwrite=True))
    assert result.manifest["config"]["image_size"] == 16
    assert read_records(str(tmp_path))["train"][0]["image_size"] == 16


def test_a_folder_built_under_the_old_defaults_resumes_when_they_are_not_given(synthetic_data, tmp_path):
    out = tmp_path / "out"
    args = [f"--data_entry_csv={synthetic_data}/Data_Entry_2017_v2020.csv", f"--bbox_csv={synthetic_data}/BBox_List_2017.csv",
            f"--image_dir={synthetic_data}", f"--output_dir={out}", "--image_size=32", "--num_shards=2", "--workers=1"]
    old = subprocess.run(cli(args + ["--crop=bbox", "--test_fraction=0"], module=True), cwd=REPO,
                         capture_output=True, text=True, timeout=300)  # the defaults before crop none and a test split
    assert old.returncode == 0, old.stderr[-2000:]
    before = {n: os.stat(out / n).st_mtime_ns for n in os.listdir(out) if is_final_shard(n)}
    os.remove(out / sorted(before)[0])  # a shard lost: the rerun has something to complete
    again = subprocess.run(cli(args, module=True), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    m = json.load(open(out / "manifest.json"))
    assert (m["config"]["crop"], m["config"]["test_fraction"]) == ("bbox", 0.0) and set(m["splits"]) == {"train", "val"}
    assert "--crop=bbox --test_fraction=0.0" in again.stderr  # says what it kept
    assert again.stderr.count("zoomed in means abnormal") == 1  # still a bbox build, said once
    for name, mtime in list(before.items())[1:]:
        assert os.stat(out / name).st_mtime_ns == mtime, f"{name} was rebuilt"
    assert os.path.exists(out / sorted(before)[0])
    # A flag the user does give still counts: the one line names what completes the folder's build.
    other = subprocess.run(cli(args + ["--crop=none"], module=True), cwd=REPO, capture_output=True, text=True,
                           timeout=300)
    message = [line for line in other.stderr.splitlines() if "flags differ" in line]
    assert other.returncode == 1 and message and "flags differ: crop; pass --crop=bbox to complete" in message[0]
    with pytest.raises(UserInputError, match=r"flags differ: image_size, test_fraction; pass --image_size=32 --test_fraction=0.0"):
        builder.build(builder.keep_recorded(config_for(synthetic_data, str(out), num_shards=2, image_size=16,
                                                       test_fraction=0.2), given={"image_size", "test_fraction"}))
    replaced = builder.build(builder.keep_recorded(config_for(synthetic_data, str(out), overwrite=True), given=()))
    assert replaced.manifest["config"]["crop"] == "none" and "test" in replaced.manifest["splits"]


def test_a_rerun_over_records_of_an_older_format_rebuilds_them_without_overwrite(synthetic_data, tmp_path):
    out = str(tmp_path)
    builder.build(config_for(synthetic_data, out, crop="none"))
    stamp_path = os.path.join(out, builder.STATE_DIR, "build.json")
    stamp = json.load(open(stamp_path))
    old_shard = sorted(n for n in os.listdir(out) if n.endswith(".tfrecord"))[0]
    with open(os.path.join(out, old_shard), "wb") as f:  # stands for a shard without per-box findings
        f.write(b"")
    del stamp["schema_version"]  # as builders before schema 4 wrote it
    json.dump({**stamp, "plan": "digest of an older plan"}, open(stamp_path, "w"))
    result = builder.build(config_for(synthetic_data, out, crop="none"))
    assert result.ok and any(r["boxes"] for r in read_records(out)["train"])
    assert os.path.getsize(os.path.join(out, old_shard)) > 0  # rewritten, not kept as finished
    with pytest.raises(UserInputError, match="flags differ: image_size"):  # other flags still refuse
        builder.build(config_for(synthetic_data, out, crop="none", image_size=16))


def test_a_rerun_in_a_folder_that_recorded_the_old_split_field_keeps_its_shards(synthetic_data, tmp_path):
    out = str(tmp_path)
    builder.build(config_for(synthetic_data, out, crop="none"))
    stamp_path = os.path.join(out, builder.STATE_DIR, "build.json")
    stamp = json.load(open(stamp_path))
    stamp["config"]["split"] = stamp["config"].pop("split_by")  # as builders before --split_by wrote it
    json.dump(stamp, open(stamp_path, "w"))
    finished = {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in os.listdir(out) if is_final_shard(n)}
    assert builder.build(config_for(synthetic_data, out, crop="none")).ok  # the same command, no --overwrite
    assert {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in finished} == finished  # reused, not rebuilt
    with pytest.raises(UserInputError, match="flags differ: split_by"):  # another split mode still refuses
        builder.build(config_for(synthetic_data, out, crop="none", split_by="all"))


def is_final_shard(name: str) -> bool:
    return name.endswith(".tfrecord") and not name.startswith(".")  # not a shard still being written


def shard_bytes(out: str) -> dict[str, bytes]:
    return {n: open(os.path.join(out, n), "rb").read() for n in sorted(os.listdir(out)) if is_final_shard(n)}


def test_output_is_identical_whatever_the_worker_count(synthetic_data, tmp_path):
    builder.build(config_for(synthetic_data, str(tmp_path / "one"), workers=1, num_shards=4))
    builder.build(config_for(synthetic_data, str(tmp_path / "two"), workers=2, num_shards=4))
    one, two = shard_bytes(str(tmp_path / "one")), shard_bytes(str(tmp_path / "two"))
    assert len(one) >= 4 and one == two


def test_default_shard_count_never_depends_on_workers():
    cfg = BuildConfig(image_dir=".", output_dir=".", workers=7)
    assert plan.shard_counts({"train": 78_000, "val": 19_000}, cfg) == {"train": 18, "val": 4}  # 78k x ~30 KB / 128 MB
    assert plan.shard_counts({"train": 300, "val": 30}, cfg) == {"train": 16, "val": 2}
    assert plan.shard_counts({"train": 5}, cfg) == {"train": 5}


def test_the_test_share_defaults_by_split_mode_and_a_grouped_build_must_leave_one_for_train():
    assert BuildConfig(image_dir=".", output_dir=".").test_fraction == 0.2
    assert BuildConfig(image_dir=".", output_dir=".", split_by="official").test_fraction == 0.0  # from the lists
    assert BuildConfig(image_dir=".", output_dir=".", test_fraction=0.0).test_fraction == 0.0  # asked for
    with pytest.raises(UserInputError, match=r"--val_fraction=0.85 \+ --test_fraction=0.2 must leave a share for train"):
        plan._check_fractions(BuildConfig(image_dir=".", output_dir=".", val_fraction=0.85))


def cli(args: list[str], module: bool) -> list[str]:
    entry = ["-m", "preprocess.build_tfrecords"] if module else [os.path.join("preprocess", "build_tfrecords.py")]
    return [sys.executable, *entry, *args]


@pytest.mark.slow
def test_kill_and_resume_gives_the_same_record_set(tmp_path):
    # Larger sources than the shared fixture, so each shard takes long enough to kill mid-build.
    synthetic_data = str(tmp_path / "data")
    synthetic.generate(synthetic.SyntheticConfig(output_dir=synthetic_data, num_patients=16,
                                                 source_size=512, seed=5))
    args = [f"--data_entry_csv={synthetic_data}/Data_Entry_2017_v2020.csv",
            f"--bbox_csv={synthetic_data}/BBox_List_2017.csv", f"--image_dir={synthetic_data}",
            "--image_size=32", "--num_shards=8", "--workers=1"]
    reference = tmp_path / "reference"
    done = subprocess.run(cli(args + [f"--output_dir={reference}"], module=True), cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "built:" in done.stdout

    out = tmp_path / "killed"
    proc = subprocess.Popen(cli(args + [f"--output_dir={out}"], module=False), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len([n for n in os.listdir(out) if is_final_shard(n) and not n.startswith(".")]
                                         if out.exists() else []) < 3:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {n: os.stat(out / n).st_mtime_ns for n in os.listdir(out) if is_final_shard(n) and not n.startswith(".")}
    total = len(shard_bytes(str(reference)))
    assert 0 < len(finished) < total, "the kill should land mid-build"
    again = subprocess.run(cli(args + [f"--output_dir={out}"], module=False), cwd=REPO,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    for name, mtime in finished.items():
        assert os.stat(out / name).st_mtime_ns == mtime, f"{name} was rewritten"
    assert shard_bytes(str(out)) == shard_bytes(str(reference))
    assert not os.listdir(out / ".build" / "tmp") if (out / ".build" / "tmp").exists() else True


def test_cli_exit_code_and_message_on_bad_input(hostile_dir, tmp_path):
    data, _ = hostile_dir
    done = subprocess.run(cli([f"--data_entry_csv={data}/Data_Entry.csv", f"--image_dir={data}",
                               f"--output_dir={tmp_path / 'out'}", "--split_by=all", "--image_size=32"],
                              module=True), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "FAILED" in done.stdout and "max_skip_fraction" in done.stdout
    missing = subprocess.run(cli([f"--image_dir={data}", f"--output_dir={tmp_path / 'o2'}"], module=True),
                             cwd=REPO, capture_output=True, text=True, timeout=300)
    assert missing.returncode != 0 and "--data_entry_csv" in missing.stderr
    shutil.rmtree(tmp_path / "out")


def test_stored_png_decodes_identically_in_pillow_and_tensorflow():
    gray = np.random.default_rng(2).integers(0, 256, (31, 17), dtype=np.uint8)
    encoded = images.encode_png_gray(gray)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(encoded))), gray)
    np.testing.assert_array_equal(tf.io.decode_png(encoded, channels=1).numpy()[..., 0], gray)


def test_jpeg_output_honours_the_quality_flag(synthetic_data, tmp_path):
    sizes = {}
    for quality in (30, 95):
        out = str(tmp_path / f"q{quality}")
        result = builder.build(config_for(synthetic_data, out, image_format="jpeg", jpeg_quality=quality,
                                     crop="none", split_by="all"))
        assert result.ok
        got = read_records(out)["all"]
        assert {r["image_format"] for r in got} == {"jpeg"}
        assert all(r["image"][:2] == b"\xff\xd8" for r in got)  # JPEG magic
        assert tf.io.decode_image(got[0]["image"], channels=1).shape == (32, 32, 1)
        sizes[quality] = sum(len(r["image"]) for r in got)
    assert sizes[30] < sizes[95]


def test_same_name_in_two_folders(tmp_path):
    data = tmp_path / "data"
    for folder in ("images_001", "images_002"):
        (data / folder).mkdir(parents=True)
    gray = np.random.default_rng(4).integers(0, 255, (128, 128), dtype=np.uint8)
    for folder in ("images_001", "images_002"):  # byte-identical copies: one image
        save(Image.fromarray(gray), data / folder / "same.png")
    save(Image.fromarray(gray), data / "images_001" / "differ.png")
    save(Image.fromarray(255 - gray), data / "images_002" / "differ.png")
    (data / "e.csv").write_text(HEADER + "same.png,Mass,0,1,50,M,PA,1,1,1,1\n"
                                "differ.png,Mass,0,2,50,M,PA,1,1,1,1\n")
    cfg = BuildConfig(data_entry_csv=str(data / "e.csv"), image_dir=str(data),
                         output_dir=str(tmp_path / "out"), split_by="all", image_size=128, workers=1,
                         max_skip_fraction=1.0)
    m = builder.build(cfg).manifest
    assert [r["image_id"] for r in read_records(cfg.output_dir)["all"]] == ["same.png"]
    assert [s["image"] for s in m["skipped"]] == ["differ.png"]
    assert "2 different files named differ.png" in m["skipped"][0]["reason"]
    # Without a CSV nothing names them: both are kept, each keyed by its path under the folder.
    unlabeled = BuildConfig(image_dir=str(data), output_dir=str(tmp_path / "unlabeled"), split_by="unlabeled",
                            image_size=128, workers=1)
    assert builder.build(unlabeled).manifest["skipped"] == []
    stored = {r["image_id"]: pixels(r) for r in read_records(unlabeled.output_dir)["eval"]}
    assert sorted(stored) == ["images_001/differ.png", "images_002/differ.png", "same.png"]
    np.testing.assert_array_equal(stored["images_002/differ.png"], 255 - stored["images_001/differ.png"])
    np.testing.assert_array_equal(stored["images_001/differ.png"], gray)  # 128 px: stored as they are
    # One file named as --image_dir is a folder of that one image.
    single = BuildConfig(image_dir=str(data / "images_002" / "differ.png"), output_dir=str(tmp_path / "one"),
                         split_by="unlabeled", image_size=128, workers=1)
    builder.build(single)
    assert [r["image_id"] for r in read_records(single.output_dir)["eval"]] == ["differ.png"]


def test_official_split_reports_names_in_both_or_neither_list(synthetic_data, tmp_path):
    names = sorted(os.listdir(os.path.join(synthetic_data, "images_001", "images")))
    (tmp_path / "tv.txt").write_text("\n".join(names[2:]) + "\n")
    (tmp_path / "test.txt").write_text("\n".join(names[1:4]) + "\n")
    cfg = config_for(synthetic_data, str(tmp_path / "out"), split_by="official", max_skip_fraction=1.0,
                     train_val_list=str(tmp_path / "tv.txt"), test_list=str(tmp_path / "test.txt"))
    reasons = {s["image"]: s["reason"] for s in builder.build(cfg).manifest["skipped"]}
    assert "neither" in reasons[names[0]]
    assert "both" in reasons[names[2]] and "both" in reasons[names[3]]
    assert names[1] not in reasons


def test_seed_changes_the_split_and_same_seed_repeats_it(synthetic_data, tmp_path):
    def train_ids(seed, name):
        out = str(tmp_path / name)
        builder.build(config_for(synthetic_data, out, seed=seed, crop="none"))
        return sorted(r["image_id"] for r in read_records(out)["train"])

    assert train_ids(0, "a") == train_ids(0, "b")
    assert train_ids(0, "a2") != train_ids(7, "c")


def test_synthetic_generator_honours_its_settings_and_seed(tmp_path):
    def make(name, **kw):
        out = str(tmp_path / name)
        counts = synthetic.generate(synthetic.SyntheticConfig(output_dir=out, num_patients=12,
                                                              source_size=32, **kw))
        return out, counts

    _, counts = make("one_each", max_images_per_patient=1, abnormal_fraction=0.0, label_noise=0.0)
    assert counts == {"images": 12, "abnormal": 0, "boxes": 0, "patients": 12, "flipped": 0}
    _, counts = make("no_boxes", abnormal_fraction=1.0, bbox_fraction=0.0, label_noise=0.0)
    assert counts["abnormal"] == counts["images"] and counts["boxes"] == 0
    a, _ = make("a", seed=5)
    b, _ = make("b", seed=5)
    for name in ("Data_Entry_2017_v2020.csv", "BBox_List_2017.csv", "test_list.txt"):
        assert open(os.path.join(a, name)).read() == open(os.path.join(b, name)).read()
    images = sorted(os.listdir(os.path.join(a, "images_001", "images")))
    assert all(open(os.path.join(a, "images_001", "images", n), "rb").read()
               == open(os.path.join(b, "images_001", "images", n), "rb").read() for n in images)


def test_symlinked_image_folders_are_followed_once_and_cycles_end(tmp_path):
    # Clusters link image folders in: images_001 -> /mnt/... A link back up must not loop.
    real = tmp_path / "mnt" / "images_001" / "images"
    real.mkdir(parents=True)
    gray = np.random.default_rng(2).integers(0, 255, (128, 128), dtype=np.uint8)
    for i in range(3):
        save(Image.fromarray(gray + i), real / f"0000000{i}_000.png")
    top = tmp_path / "data"
    top.mkdir()
    (top / "images_001").symlink_to(real.parent, target_is_directory=True)
    (real / "loop").symlink_to(top, target_is_directory=True)  # a cycle through the link
    (top / "again").symlink_to(real, target_is_directory=True)  # a second way to the same folder
    cfg = BuildConfig(image_dir=str(top), output_dir=str(tmp_path / "out"), split_by="unlabeled", image_size=32,
                      workers=1)
    result = builder.build(cfg)
    assert result.ok, result.summary
    ids = sorted(r["image_id"] for r in read_records(cfg.output_dir)["eval"])
    assert ids == sorted(f"0000000{i}_000.png" for i in range(3))


def test_a_rerun_removes_stale_temporary_files_of_a_killed_build(synthetic_data, tmp_path):
    from contracts.atomic import TEMP_PREFIX

    out = str(tmp_path / "out")
    cfg = config_for(synthetic_data, out, crop="none")
    assert builder.build(cfg).ok
    stale = os.path.join(out, f"{TEMP_PREFIX}99999-train-00000-of-00003.tfrecord")
    with open(stale, "wb") as f:
        f.write(b"half a shard")
    assert builder.build(cfg).ok
    assert not os.path.exists(stale)
