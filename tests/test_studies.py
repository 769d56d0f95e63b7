"""Study-level answers: each record's study (DICOM StudyInstanceUID, NIH patient_follow-up, else the file),
the studies file beside a prediction file (max probability, triage and label rules), skipped files in
their study, and shards from before study ids: no studies file, one line why."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image

from contracts import ensemble_file, records
from contracts.manifest import MANIFEST, STUDY_ID_SINCE
from contracts.prediction_files import write_predictions
from contracts.study_ids import study_id
from evaluation import studies
from tests.dicom_factory import write_dicom
from tests.test_predict_images import SIZE, _save_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDY_A, STUDY_B, STUDY_GONE = "1.2.826.0.1.3680043.8.498.100", "1.2.826.0.1.3680043.8.498.200", \
    "1.2.826.0.1.3680043.8.498.300"


def _predict(tmp, *args) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "predict.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, TMPDIR=str(tmp)))
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def _studies_csv(path) -> pd.DataFrame:
    return pd.read_csv(studies.studies_path(str(path)), dtype={"study_id": str}, keep_default_na=False,
                       na_values={"p_abnormal": [""]}).set_index("study_id")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A folder of DICOMs (two share a study, one has another; two without pixels: one in that other
    study, one alone), NIH-named PNGs, other files and one unreadable PNG, predicted by one tiny model."""
    root = tmp_path_factory.mktemp("studies")
    folder = root / "export"
    (folder / "x").mkdir(parents=True)
    rng = np.random.default_rng(7)
    noise = lambda: rng.integers(0, 256, (160, 192), dtype=np.uint8)  # noqa: E731  (big and varied)
    for name, study in (("a.dcm", STUDY_A), ("b.dcm", STUDY_A), ("c.dcm", STUDY_B)):
        write_dicom(str(folder / name), noise(), overrides={"StudyInstanceUID": study})
    for name, study in (("no_pixels.dcm", STUDY_B), ("gone.dcm", STUDY_GONE)):
        write_dicom(str(folder / name), noise(), pixel_data=False, overrides={"StudyInstanceUID": study})
    for name in ("00000013_005.png", "00000013_006.png", "scan.png"):
        Image.fromarray(noise()).save(folder / name)
    Image.fromarray(noise()).save(folder / "x" / "photo.jpg", quality=95)
    (folder / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    runs = [str(root / f"run{seed}") for seed in (0, 1)]
    for seed, run in enumerate(runs):
        _save_model(run, seed)
    output = root / "out" / "preds.csv"
    done = _predict(root, f"--model_dir={runs[0]}", f"--images={folder}", f"--output={output}")
    return {"root": root, "folder": folder, "runs": runs, "output": output, "stdout": done.stdout,
            "images": pd.read_csv(output, dtype={"study_id": str}).set_index("image_id"),
            "studies": _studies_csv(output)}


def test_study_ids_come_from_the_dicom_study_uid_the_nih_name_or_the_file(world):
    """Catches: the builder ignoring StudyInstanceUID (each DICOM its own study), or NIH names kept whole."""
    uid = {n: str(pydicom.dcmread(world["folder"] / n, stop_before_pixels=True).StudyInstanceUID)
           for n in ("a.dcm", "b.dcm", "c.dcm")}
    assert world["images"]["study_id"].to_dict() == {
        **uid, "00000013_005.png": "00000013_005", "00000013_006.png": "00000013_006",
        "scan.png": "scan.png", "photo.jpg": "photo.jpg"}
    assert uid["a.dcm"] == uid["b.dcm"] != uid["c.dcm"]
    assert (study_id("images_001/images/00000001_002.png"), study_id("00000001_002.jpg"),
            study_id("scan.png", "1.2.3")) == ("00000001_002", "00000001_002.jpg", "1.2.3")


def test_the_study_probability_is_the_max_over_its_used_images(world):
    """Catches: another rule than the maximum (the mean), or a study's images miscounted."""
    images, table = world["images"], world["studies"]
    by_study = images.groupby("study_id")
    used = table[table["images_used"] > 0]
    assert used["p_abnormal"].to_dict() == by_study["p_abnormal"].max().to_dict()
    assert used["images_used"].to_dict() == by_study.size().to_dict()
    assert {s: sorted(v.split(" | ")) for s, v in used["used"].items()} == {
        s: sorted(group.index) for s, group in by_study}
    assert len(table) == 8 and table.loc[STUDY_A, "images_used"] == 2
    assert "8 studies -> " + str(studies.studies_path(str(world["output"]))) in world["stdout"]
    with open(str(world["output"])[:-4] + ".json") as f:
        assert json.load(f)["studies"] == studies.sidecar_record(str(world["output"]))


def test_skipped_files_join_their_study_or_stand_alone_without_a_probability(world):
    """Catches: a skipped DICOM whose header reads not joining its StudyInstanceUID, or an all-skipped
    study dropped, given a probability or cleared."""
    table = world["studies"]
    row = table.loc[STUDY_B]
    assert (row["images_used"], row["images_skipped"]) == (1, 1)
    assert row["skipped"].startswith("no_pixels.dcm: ")
    for study, name in ((STUDY_GONE, "gone.dcm"), ("bad.png", "bad.png")):
        row = table.loc[study]
        assert np.isnan(row["p_abnormal"]) and (row["images_used"], row["images_skipped"]) == (0, 1)
        assert row["triage"] == "review" and row["used"] == "" and row["skipped"].startswith(f"{name}: ")
    with open(str(world["output"])[:-4] + ".json") as f:
        reasons = {s["image"]: s["reason"] for s in json.load(f)["skipped"]}
    assert table.loc[STUDY_GONE, "skipped"] == f"gone.dcm: {reasons['gone.dcm']}"


def _independent(rows: list[tuple]) -> dict:
    """study -> (triage, label) by the documented rules, with plain loops."""
    found = {}
    for study in {r[0] for r in rows}:
        groups = [r[2] for r in rows if r[0] == study]
        labels = [r[3] for r in rows if r[0] == study]
        triage = ("prioritized" if "prioritized" in groups else
                  "cleared" if all(g == "cleared" for g in groups) else "review")
        label = 1 if 1 in labels else 0 if all(v == 0 for v in labels) else -1
        found[study] = (triage, label)
    return found


def test_the_triage_and_label_rules_match_an_independent_recomputation():
    """Catches: a study cleared when only some images are cleared, not prioritized when one image is, or
    labelled normal with an unknown image."""
    rng = np.random.default_rng(11)
    count = 400
    rows = [(f"s{rng.integers(0, 120)}", f"i{k}.png", str(rng.choice(["cleared", "review", "prioritized"],
                                                                       p=[0.7, 0.2, 0.1])),
             int(rng.choice([0, 1, -1], p=[0.8, 0.1, 0.1]))) for k in range(count)]
    study, ids, groups, labels = (list(column) for column in zip(*rows))
    table = studies.study_table(ids, study, rng.random(count), groups, np.array(labels)).set_index("study_id")
    expected = _independent(rows)
    assert {s: (r["triage"], r["label"]) for s, r in table.iterrows()} == expected
    kinds = {value for value in expected.values()}
    assert {t for t, _ in kinds} == {"cleared", "review", "prioritized"} and {v for _, v in kinds} == {-1, 0, 1}


def test_the_shared_dicoms_are_one_study_and_nih_files_one_each(shared_dicom, nih_sample, tmp_path):
    """Catches: the two real files of one StudyInstanceUID split, or NIH follow-ups of one patient merged."""
    folder = tmp_path / "real"
    shutil.copytree(shared_dicom, folder)
    nih = ["00000001_000.png", "00000001_002.png"]
    for name in nih:
        shutil.copy(os.path.join(nih_sample, "images_001", "images", name), folder)
    output = tmp_path / "real.csv"
    _predict(tmp_path, f"--model_dir={_tiny_run(tmp_path)}", f"--images={folder}", f"--output={output}")
    table = _studies_csv(output)
    uid = str(pydicom.dcmread(os.path.join(shared_dicom, "siim_chest_pa.dcm"),
                              stop_before_pixels=True).StudyInstanceUID)
    assert table["images_used"].to_dict() == {uid: 2, "00000001_000": 1, "00000001_002": 1}
    assert set(table.loc[uid, "used"].split(" | ")) == set(os.listdir(shared_dicom))


def _tiny_run(tmp_path) -> str:
    run = str(tmp_path / "run")
    _save_model(run, 0)
    return run


def test_with_an_ensemble_the_blend_alone_has_a_studies_file(world, tmp_path):
    """Catches: the blend's studies file missing, or its rows another file's probabilities."""
    runs, names = world["runs"], ["tiny_test#1", "tiny_test#2"]
    ensemble = str(tmp_path / "submission.probabilities.json")
    write_predictions(ensemble[:-5] + ".csv", np.array(["x"]), np.array([0.5]), None, sidecar={
        "backbone": "ensemble", "schema_version": ensemble_file.SCHEMA_VERSION, "threshold": 0.4,
        "inputs": ensemble_file.member_records(names, [{"model_dir": r} for r in runs], ["a", "b"],
                                               [0.25, 0.75], [1.0, 1.0])})
    output = tmp_path / "blend.csv"
    _predict(tmp_path, *[f"--model_dir={r}" for r in runs], f"--ensemble={ensemble}",
             f"--images={world['folder'] / '*.png'}", f"--output={output}")
    blend = pd.read_csv(output, dtype={"study_id": str})
    table = _studies_csv(output)
    assert table["p_abnormal"].dropna().to_dict() == blend.groupby("study_id")["p_abnormal"].max().to_dict()
    assert table.loc["bad.png", "images_skipped"] == 1
    assert sorted(n for n in os.listdir(tmp_path) if n.endswith(studies.SUFFIX)) == ["blend.studies.csv"]


def test_shards_built_before_study_ids_give_no_studies_file_and_say_why(world, tmp_path):
    """Catches: a folder whose manifest predates study ids read as if its records carried them."""
    from evaluation import prediction
    from evaluation.settings import PredictConfig
    from preprocess import builder
    from preprocess.config import BuildConfig

    shards = str(tmp_path / "shards")
    builder.build(BuildConfig(image_dir=str(world["folder"] / "*.png"), output_dir=shards, split_by="unlabeled",
                              image_size=SIZE, crop="none", workers=1, max_skip_fraction=1.0))
    config = dict(model_dir=[world["runs"][0]], data_dir=shards, global_batch_size=4, progress=False)
    result = prediction.run_prediction(PredictConfig(**config, output=str(tmp_path / "new.csv")))
    assert _studies_csv(tmp_path / "new.csv")["images_used"].to_dict() == {
        "00000013_005": 1, "00000013_006": 1, "scan.png": 1}
    with open(os.path.join(shards, MANIFEST)) as f:
        manifest = json.load(f)
    with open(os.path.join(shards, MANIFEST), "w") as f:
        json.dump({**manifest, "schema_version": STUDY_ID_SINCE - 1}, f)
    old = str(tmp_path / "old.csv")
    result = prediction.run_prediction(PredictConfig(**config, output=old))
    assert not os.path.exists(studies.studies_path(old)) and "study_id" not in pd.read_csv(old).columns
    said = prediction.summary(result).splitlines()
    (line,) = [x for x in said if x.startswith("no studies file:")]
    assert f"schema {STUDY_ID_SINCE - 1}" in line and not [x for x in said if " studies -> " in x]
    with open(old[:-4] + ".json") as f:
        assert json.load(f)["studies"] == {"why": line}
    # A record written before the field reads as study unknown.
    example = records.make_example(records.Record(b"", "png", SIZE, "a.png", 0, [0] * 14, study_id="s"))
    del example.features.feature[records.STUDY_ID]
    assert records.example_to_dict(example.SerializeToString())["study_id"] == ""
    assert records.parse_example(example.SerializeToString())[records.STUDY_ID].numpy() == b""


def test_a_run_that_writes_no_studies_file_removes_a_stale_one_only_when_it_writes(world, tmp_path, monkeypatch):
    """Catches: an earlier run's studies file left beside new predictions it does not describe (one model,
    the --ensemble members or the blend), or removed by a run that then fails before writing."""
    from contracts.run_folder import RunFolder
    from evaluation import ensemble_apply, prediction, preflight
    from evaluation.settings import PredictConfig
    from preprocess import builder
    from preprocess.config import BuildConfig

    shards = str(tmp_path / "shards")  # records without study ids: no studies file for their predictions
    builder.build(BuildConfig(image_dir=str(world["folder"] / "*.png"), output_dir=shards, split_by="unlabeled",
                              image_size=SIZE, crop="none", workers=1, max_skip_fraction=1.0))
    with open(os.path.join(shards, MANIFEST)) as f:
        manifest = json.load(f)
    with open(os.path.join(shards, MANIFEST), "w") as f:
        json.dump({**manifest, "schema_version": STUDY_ID_SINCE - 1}, f)
    output = str(tmp_path / "preds.csv")
    for path in (output, studies.studies_path(output)):  # an earlier run's files
        shutil.copy(studies.studies_path(str(world["output"])) if path.endswith(studies.SUFFIX)
                    else world["output"], path)
    with open(studies.studies_path(output)) as f:
        stale = f.read()
    config = PredictConfig(model_dir=(world["runs"][0],), data_dir=shards, output=output, global_batch_size=4,
                           progress=False)
    with monkeypatch.context() as patched:  # a run failing as it writes keeps the old files
        patched.setattr(prediction, "write_predictions", lambda *a, **k: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            prediction.run_prediction(config)
    with open(studies.studies_path(output)) as f:
        assert f.read() == stale
    prediction.run_prediction(config)
    assert not os.path.exists(studies.studies_path(output)) and "study_id" not in pd.read_csv(output).columns
    # --ensemble: neither the members nor the blend keep a studies file of an earlier run.
    runs = world["runs"]
    ensemble = str(tmp_path / "submission.probabilities.json")
    write_predictions(ensemble[:-5] + ".csv", np.array(["x"]), np.array([0.5]), None, sidecar={
        "backbone": "ensemble", "schema_version": ensemble_file.SCHEMA_VERSION, "threshold": 0.4,
        "inputs": ensemble_file.member_records(["tiny_test#1", "tiny_test#2"], [{"model_dir": r} for r in runs],
                                               ["a", "b"], [0.25, 0.75], [1.0, 1.0])})
    members = preflight.output_paths(output, preflight.model_names([RunFolder.open(r) for r in runs]),
                                     per_model=True)
    for path in [output, *members.values()]:
        shutil.copy(studies.studies_path(str(world["output"])), studies.studies_path(path))
    prediction.run_prediction(PredictConfig(model_dir=tuple(runs), ensemble=ensemble, data_dir=shards,
                                            output=output, global_batch_size=4, progress=False))
    assert all(os.path.isfile(path) for path in members.values())
    ensemble_apply.apply_ensemble(ensemble, runs, list(members.values()), output)
    assert sorted(n for n in os.listdir(tmp_path) if n.endswith(studies.SUFFIX)) == []
