"""The builder on Apache Beam (DirectRunner): the same records, skips and manifest as the local builder.

Beam's start-up is slow, so each data set is built once per runner for the whole module. Beam is
part of the dev extra (`make install`); without it these tests fail with the builder's message.
"""

import hashlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from contracts import records, storage
from contracts.errors import UserInputError
from preprocess import builder, synthetic_data, units
from preprocess.config import BuildConfig
from preprocess.plan import WorkItem, WorkUnit
from tests.conftest import REPO

BAD_FILES = ("truncated.png", "empty.png", "text.png")
ROW = "{name},Mass,0,{patient},40,F,PA,64,64,0.143,0.143"
COUNTS = ("records", "normal", "abnormal", "patients", "shards")


def record_set(output_dir: str) -> set[tuple]:
    """(image id, split, label, sha256 of the stored image bytes) of every record, read from the
    shard files the manifest lists with TensorFlow's own reader (any filesystem it knows)."""
    manifest = json.loads(storage.read_bytes(storage.join(output_dir, "manifest.json")))
    found = set()
    for split, info in manifest["splits"].items():
        paths = [storage.join(output_dir, name) for name in info["shards"]]
        for serialized in tf.data.TFRecordDataset(paths):
            record = records.example_to_dict(serialized.numpy())
            found.add((record["image_id"], split, record["label"], hashlib.sha256(record["image"]).hexdigest()))
    return found


def skipped_set(manifest: dict) -> set[tuple]:
    return {(s["image"], s["reason"]) for s in manifest["skipped"]}


def assert_same_build(local: builder.BuildResult, beam: builder.BuildResult, local_dir: str, beam_dir: str):
    local_records = record_set(local_dir)
    assert local_records and record_set(beam_dir) == local_records
    assert skipped_set(beam.manifest) == skipped_set(local.manifest)
    for key in ("absent", "unlisted", "present_rows", "warnings", "patient_overlap"):
        assert beam.manifest[key] == local.manifest[key], key
    assert {s: {k: v[k] for k in COUNTS} for s, v in beam.manifest["splits"].items()} == \
        {s: {k: v[k] for k in COUNTS} for s, v in local.manifest["splits"].items()}
    absent = [storage.read_bytes(storage.join(d, builder.ABSENT)) for d in (local_dir, beam_dir)]
    assert absent[0] == absent[1]
    assert beam.ok == local.ok


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    """A small synthetic NIH-format set with three bad image files and one absent row."""
    out = str(tmp_path_factory.mktemp("beam_data"))
    synthetic_data.generate(synthetic_data.SyntheticConfig(output_dir=out, num_patients=10, source_size=64,
                                                 bbox_fraction=0.5, seed=3))
    folder = os.path.join(out, "images_001", "images")
    buffer = io.BytesIO()
    Image.fromarray(np.full((64, 64), 90, np.uint8)).save(buffer, format="PNG")
    contents = {"truncated.png": buffer.getvalue()[:40], "empty.png": b"", "text.png": b"not an image"}
    for name, content in contents.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(content)
    rows = [ROW.format(name=name, patient=900 + i) for i, name in enumerate(BAD_FILES + ("absent.png",))]
    with open(os.path.join(out, "Data_Entry_2017_v2020.csv"), "a") as f:
        f.write("\n".join(rows) + "\n")
    return out


def config_for(data: str, out: str, **overrides) -> BuildConfig:
    fields = dict(data_entry_csv=storage.join(data, "Data_Entry_2017_v2020.csv"),
                  bbox_csv=storage.join(data, "BBox_List_2017.csv"), image_dir=data, output_dir=out,
                  split_by="grouped", val_fraction=0.2, test_fraction=0.2, image_size=32, num_shards=3,
                  max_skip_fraction=1.0, crop="bbox",  # bbox: both runners must crop the boxed images alike
                  min_image_side=64)  # the synthetic 64 px sources stand in for films
    fields.update(overrides)
    return BuildConfig(**fields)


@pytest.fixture(scope="module")
def builds(data, tmp_path_factory):
    """The synthetic set built once by each runner: {runner: (result, output folder)}."""
    out = tmp_path_factory.mktemp("beam_builds")
    local = builder.build(config_for(data, str(out / "local"), workers=1))
    beam = builder.build(config_for(data, str(out / "beam"), runner="beam"))
    return {"local": (local, str(out / "local")), "beam": (beam, str(out / "beam"))}


def test_beam_and_local_builds_give_the_same_records_skips_and_manifest(builds):
    (local, local_dir), (beam, beam_dir) = builds["local"], builds["beam"]
    assert {image for image, _ in skipped_set(local.manifest)} == set(BAD_FILES)
    assert set(local.manifest["splits"]) == {"train", "val", "test"} and local.manifest["absent"] == 1
    assert_same_build(local, beam, local_dir, beam_dir)
    # The same plan through the same writer: the shard files are the same bytes, under the same names.
    for split, info in local.manifest["splits"].items():
        assert beam.manifest["splits"][split]["shards"] == info["shards"]
        for name in info["shards"]:
            assert storage.read_bytes(os.path.join(beam_dir, name)) == storage.read_bytes(os.path.join(local_dir, name))
    assert beam.manifest["config"]["runner"] == "beam" and local.manifest["config"]["runner"] == "local"


def test_real_sample_builds_the_same_on_beam_and_locally(nih_sample, tmp_path):
    common = dict(data_entry_csv=os.path.join(nih_sample, "Data_Entry_2017_v2020.csv.gz"),
                  bbox_csv=os.path.join(nih_sample, "BBox_List_2017.csv"), image_dir=nih_sample,
                  split_by="grouped", val_fraction=0.2, test_fraction=0.1, image_size=32, num_shards=2)
    local = builder.build(BuildConfig(output_dir=str(tmp_path / "local"), workers=1, **common))
    beam = builder.build(BuildConfig(output_dir=str(tmp_path / "beam"), runner="beam", **common))
    assert sum(s["records"] for s in local.manifest["splits"].values()) == 116
    assert local.manifest["absent"] == 112_120 - 116
    assert_same_build(local, beam, str(tmp_path / "local"), str(tmp_path / "beam"))


def _copy_tree(source: str, target: str) -> None:
    for root, _, files in os.walk(source):
        folder = storage.join(target, *os.path.relpath(root, source).split(os.sep)) if root != source else target
        tf.io.gfile.makedirs(folder)
        for name in files:
            tf.io.gfile.copy(os.path.join(root, name), storage.join(folder, name), overwrite=True)


def test_bucket_urls_are_listed_read_and_written_through_tf_io_gfile(data, builds):
    # TensorFlow's in-memory ram:// filesystem stands in for gs://: the same tf.io.gfile calls.
    local, local_dir = builds["local"]
    _copy_tree(data, "ram://beam-test/data")
    for runner, extra in (("beam", {}), ("local", {"workers": 1})):
        out = f"ram://beam-test/{runner}-out"
        result = builder.build(config_for("ram://beam-test/data", out, runner=runner, **extra))
        assert_same_build(local, result, local_dir, out)
        assert not any(name.startswith(".partial-") for name in tf.io.gfile.listdir(out))


def test_runner_flags_that_would_be_ignored_are_refused(data, tmp_path):
    with pytest.raises(UserInputError, match="--beam_pipeline_args configures --runner=beam"):
        builder.build(config_for(data, str(tmp_path / "a"), beam_pipeline_args="--direct_num_workers=2"))
    with pytest.raises(UserInputError, match="drop --workers"):
        builder.build(config_for(data, str(tmp_path / "b"), runner="beam", workers=2))
    with pytest.raises(UserInputError, match="no_such_option"):
        builder.build(config_for(data, str(tmp_path / "c"), runner="beam", beam_pipeline_args="--no_such_option=1"))
    assert not os.path.exists(tmp_path / "c")  # refused before anything was written


def test_cli_on_beam_fails_in_one_line_when_too_many_images_are_skipped(data, tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "preprocess.build_tfrecords", "--runner=beam",
         f"--data_entry_csv={data}/Data_Entry_2017_v2020.csv", f"--image_dir={data}", f"--output_dir={out}",
         "--image_size=32", "--max_skip_fraction=0.01", "--min_image_side=64"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "FAILED" in done.stdout and "max_skip_fraction" in done.stdout
    assert "Traceback" not in done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert {s["image"] for s in manifest["skipped"]} == set(BAD_FILES)


def test_either_runner_finishes_a_build_the_other_started(data, builds, tmp_path):
    # One runner's shards count as done for the other: the resume state is the builder's own.
    local, local_dir = builds["local"]
    out = str(tmp_path / "out")
    assert builder.build(config_for(data, out, workers=1)).ok
    missing = local.manifest["splits"]["train"]["shards"][1]
    kept = {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in os.listdir(out) if n.endswith(".tfrecord")}
    os.remove(os.path.join(out, missing))
    result = builder.build(config_for(data, out, runner="beam"))
    assert_same_build(local, result, local_dir, out)
    for name, mtime in kept.items():
        assert name == missing or os.stat(os.path.join(out, name)).st_mtime_ns == mtime, f"{name} was rewritten"


def test_an_image_gone_from_a_bucket_is_skipped_naming_it():
    # tf.io.gfile's errors become OSErrors, so a vanished object is a skip, not a crashed pipeline.
    settings = WorkUnit("eval-00000-of-00001.tfrecord", (), 32, "png", 95, 1_000_000)
    name, encoded, _, _, error = units.process_item(WorkItem("gone.png", "ram://beam-test/gone.png", None), settings)
    assert (name, encoded) == ("gone.png", None) and "ram://beam-test/gone.png" in error
    with pytest.raises(FileNotFoundError):
        storage.read_bytes("ram://beam-test/gone.png")


def test_a_failing_worker_is_one_line_naming_the_error(data, tmp_path, monkeypatch):
    def disk_full(config, unit, *args):
        raise OSError(28, "No space left on device", unit.shard)

    monkeypatch.setattr(units, "finish_unit", disk_full)
    with pytest.raises(UserInputError, match=r"Beam pipeline failed: OSError: \[Errno 28\] No space left") as caught:
        builder.build(config_for(data, str(tmp_path / "out"), runner="beam"))
    assert "\n" not in str(caught.value)
