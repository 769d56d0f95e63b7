"""The builder's calibration split (--calibration_fraction): by patient, near its share, refused where it
cannot be carved, absent by default, and read by predict.py only when named."""

import json
import os
import re
import subprocess
import sys

import pandas as pd
import pytest
import tensorflow as tf

from contracts import records, run_folder
from contracts.errors import UserInputError
from contracts.manifest import CALIBRATION_SPLIT, ShardFolder
from preprocess import builder, plan, splits
from preprocess import synthetic_data as synthetic
from preprocess.config import BuildConfig
from tests.conftest import REPO

SIZE = 16
MAX_IMAGES = 2  # per patient: a small patient keeps the greedy split's slack small


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("calibration_data"))
    synthetic.generate(synthetic.SyntheticConfig(output_dir=out, preset="easy", num_patients=600, source_size=16,
                                                 max_images_per_patient=MAX_IMAGES, seed=4))
    return out


def config_for(data: str, out: str, **kw) -> BuildConfig:
    base = dict(data_entry_csv=os.path.join(data, "Data_Entry_2017_v2020.csv"), image_dir=data, output_dir=out,
                image_size=SIZE, workers=1, num_shards=2, min_image_side=16)  # 16 px synthetic sources
    if kw.get("split_by") == "official":
        base.update(train_val_list=os.path.join(data, "train_val_list.txt"),
                    test_list=os.path.join(data, "test_list.txt"))
    return BuildConfig(**{**base, **kw})


def assignment(config: BuildConfig) -> dict[str, str]:
    """image -> split, as the plan assigns it (no image is read)."""
    assigned = plan.gather_and_assign(config)[3]
    return {s.entry.image: split for split, sources in assigned.items() for s in sources}


def entries(data: str) -> pd.DataFrame:
    """The CSV read with pandas: image, patient, label, and the patient's stratum (majority label)."""
    frame = pd.read_csv(os.path.join(data, "Data_Entry_2017_v2020.csv"))
    frame = pd.DataFrame({"image": frame["Image Index"], "patient": frame["Patient ID"],
                          "label": (frame["Finding Labels"] != "No Finding").astype(int)})
    frame["stratum"] = frame.groupby("patient")["label"].transform(lambda x: int(2 * x.sum() >= len(x)))
    return frame


def assert_near_shares(frame: pd.DataFrame, got: dict[str, str], shares: dict[str, float]) -> None:
    """Within each stratum every split holds its share of the images, give or take what a greedy fill
    of whole patients can miss by: below it, at most (splits - 1) times the largest patient."""
    frame = frame.assign(split=frame.image.map(got))
    for _, stratum in frame.groupby("stratum"):
        slack = (len(shares) - 1) * stratum.groupby("patient").size().max()
        for split, share in shares.items():
            count = int((stratum.split == split).sum())
            assert abs(count - share * len(stratum)) <= slack, (split, count, share * len(stratum), slack)


def assert_patient_disjoint(frame: pd.DataFrame, got: dict[str, str]) -> None:
    per_patient = frame.assign(split=frame.image.map(got)).groupby("patient")["split"].nunique()
    assert (per_patient == 1).all(), per_patient[per_patient > 1].head()


def test_grouped_calibration_is_a_fourth_share_by_patient(data, tmp_path):
    got = assignment(config_for(data, str(tmp_path), val_fraction=0.2, test_fraction=0.15,
                                calibration_fraction=0.25))
    frame = entries(data)
    assert sorted(got) == sorted(frame.image) and set(got.values()) == {"train", "val", "test", CALIBRATION_SPLIT}
    assert_patient_disjoint(frame, got)
    assert_near_shares(frame, got, {"train": 0.4, "val": 0.2, "test": 0.15, CALIBRATION_SPLIT: 0.25})


def test_official_calibration_comes_from_train_val_and_test_stays_nihs(data, tmp_path):
    got = assignment(config_for(data, str(tmp_path), split_by="official", val_fraction=0.2,
                                calibration_fraction=0.3))
    frame = entries(data)
    listed_test = set(open(os.path.join(data, "test_list.txt")).read().split())
    assert {image for image, split in got.items() if split == "test"} == listed_test
    assert_patient_disjoint(frame, got)
    pool = frame[~frame.image.isin(listed_test)]
    assert_near_shares(pool, got, {"train": 0.5, "val": 0.2, CALIBRATION_SPLIT: 0.3})


def test_the_same_seed_carves_the_same_split_and_another_seed_another(data, tmp_path):
    for split_by in ("grouped", "official"):
        first = assignment(config_for(data, str(tmp_path), split_by=split_by, calibration_fraction=0.2, seed=7))
        again = assignment(config_for(data, str(tmp_path), split_by=split_by, calibration_fraction=0.2, seed=7))
        other = assignment(config_for(data, str(tmp_path), split_by=split_by, calibration_fraction=0.2, seed=8))
        assert first == again and first != other


@pytest.mark.parametrize("split_by", ["grouped", "official"])
def test_by_default_nothing_is_carved_and_the_split_is_the_one_builds_made_before(data, tmp_path, split_by):
    config = config_for(data, str(tmp_path), split_by=split_by)
    got = assignment(config)
    frame = entries(data)
    items = list(zip(frame.image, frame.patient.astype(str), frame.label))  # the builder's key is text
    if split_by == "grouped":  # the call the builder made before --calibration_fraction existed
        before = splits.grouped_split(items, {"train": 1 - config.val_fraction - config.test_fraction,
                                              "val": config.val_fraction, "test": config.test_fraction}, config.seed)
    else:
        test = set(open(config.test_list).read().split())
        pool = [item for item in items if item[0] not in test]
        before = {**dict.fromkeys(test, "test"), **splits.grouped_split(
            pool, {"train": 1 - config.val_fraction, "val": config.val_fraction}, config.seed)}
    assert got == before


def test_a_folder_built_before_the_flag_resumes_without_rebuilding(data, tmp_path):
    out = str(tmp_path / "out")
    config = config_for(data, out)
    assert builder.build(config).ok
    stamp_path = os.path.join(out, builder.STATE_DIR, "build.json")
    stamp = json.load(open(stamp_path))
    del stamp["config"]["calibration_fraction"]  # as builders before --calibration_fraction wrote it
    json.dump(stamp, open(stamp_path, "w"))
    shards = {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in os.listdir(out) if n.endswith(".tfrecord")}
    assert len(shards) >= 3
    assert builder.build(config_for(data, out)).ok  # the same command, no --overwrite
    assert {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in shards} == shards  # reused, not rebuilt
    with pytest.raises(UserInputError, match="flags differ: calibration_fraction; pass --calibration_fraction=0.0"):
        builder.build(config_for(data, out, calibration_fraction=0.2))


def _build_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.join(REPO, "preprocess", "build_tfrecords.py"), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("flags, fragment", [
    (["--split_by=all", "--calibration_fraction=0.1"],
     "--calibration_fraction=0.1 splits labelled images by patient: use it with --split_by=grouped or official"),
    (["--val_fraction=0.3", "--test_fraction=0.3", "--calibration_fraction=0.4"],
     "--val_fraction=0.3 + --test_fraction=0.3 + --calibration_fraction=0.4 must leave a share for train"),
])
def test_a_calibration_share_that_cannot_be_carved_is_refused_in_one_line(data, tmp_path, flags, fragment):
    out = tmp_path / "shards"
    done = _build_cli(f"--data_entry_csv={data}/Data_Entry_2017_v2020.csv", f"--image_dir={data}",
                      f"--output_dir={out}", *flags)
    own = [line for line in done.stderr.splitlines() if line.startswith("build_tfrecords.py: ")]
    assert done.returncode == 1 and "Traceback" not in done.stderr and len(own) == 1, done.stderr[-2000:]
    assert fragment in own[0]
    assert not out.exists()


@pytest.mark.parametrize("kw, fragment", [
    (dict(split_by="unlabeled", calibration_fraction=0.1), "not unlabeled"),
    (dict(split_by="official", val_fraction=0.5, calibration_fraction=0.5),
     "--val_fraction=0.5 + --calibration_fraction=0.5 must leave a share for train"),
    (dict(calibration_fraction=-0.1), "--calibration_fraction=-0.1 must be in [0, 1)"),
])
def test_every_refusal_names_the_flags(kw, fragment):
    with pytest.raises(UserInputError, match=re.escape(fragment)):
        plan._check_fractions(BuildConfig(image_dir=".", output_dir=".", **kw))
    plan._check_fractions(BuildConfig(image_dir=".", output_dir=".", split_by="official", val_fraction=0.5,
                                      calibration_fraction=0.49))  # a share is left: accepted


@pytest.mark.parametrize("names, chosen", [
    (("train", "val", CALIBRATION_SPLIT), "val"), (("train", "val", "test", CALIBRATION_SPLIT), "test"),
    (("train", CALIBRATION_SPLIT), None), ((CALIBRATION_SPLIT,), None)])
def test_without_split_the_calibration_split_is_never_the_default(names, chosen):
    assert ShardFolder("shards", {"splits": dict.fromkeys(names, {})}, SIZE, None).default_split() == chosen


def _ids(shards: str, names: list[str]) -> set[str]:
    paths = [os.path.join(shards, name) for name in names]
    return {records.example_to_dict(r.numpy())["image_id"] for r in tf.data.TFRecordDataset(paths)}


def test_a_built_calibration_split_is_listed_and_predicted_when_named(data, tmp_path):
    import models

    shards = str(tmp_path / "shards")
    result = builder.build(config_for(data, shards, calibration_fraction=0.2))
    assert result.ok, result.summary
    manifest = result.manifest
    assert set(manifest["splits"]) == {"train", "val", "test", CALIBRATION_SPLIT} and manifest["patient_overlap"] == 0
    info = manifest["splits"][CALIBRATION_SPLIT]
    frame = entries(data).set_index("image")
    calibration_ids = _ids(shards, info["shards"])
    assert info["records"] == len(calibration_ids) == info["normal"] + info["abnormal"]
    assert info["abnormal"] == frame.label[sorted(calibration_ids)].sum()
    assert info["patients"] == frame.patient[sorted(calibration_ids)].nunique()
    assert info["findings_known"] == len(calibration_ids) and len(info["finding_positives"]) > 0
    folder = ShardFolder.open(shards)
    assert folder.default_split() == "test" and folder.split(CALIBRATION_SPLIT).records == len(calibration_ids)

    run = tmp_path / "run"
    run.mkdir()
    models.build_model("tiny_test", SIZE, weights="none").save(str(run / run_folder.MODEL))
    (run / run_folder.CONFIG).write_text(json.dumps({"backbone": "tiny_test", "image_size": SIZE, "data_dir": shards}))
    output = tmp_path / "calibration.csv"
    done = subprocess.run([sys.executable, os.path.join(REPO, "predict.py"), f"--model_dir={run}",
                           f"--data_dir={shards}", f"--split={CALIBRATION_SPLIT}", f"--output={output}",
                           "--bootstrap=0"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert set(pd.read_csv(output, dtype={"image_id": str}).image_id) == calibration_ids
    assert json.loads(output.with_suffix(".json").read_text())["split"] == CALIBRATION_SPLIT
