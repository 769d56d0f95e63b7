"""`predict.py --images`: raw PNG, JPEG and DICOM files scored in one command with the builder's
decoding, unreadable files listed with their reason, no temporary folder left; `--ensemble`."""

import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pandas as pd
import pytest
from PIL import Image

import models
from contracts import ensemble_file, run_folder
from contracts.prediction_files import write_predictions
from preprocess import images as images_lib
from tests.dicom_factory import write_dicom

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 32


def _save_model(model_dir: str, seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = models.build_model("tiny_test", SIZE, weights="none")
    os.makedirs(model_dir)
    model.save(os.path.join(model_dir, run_folder.MODEL))
    with open(os.path.join(model_dir, run_folder.CONFIG), "w") as f:
        json.dump({"backbone": "tiny_test", "image_size": SIZE, "data_dir": "/nonexistent"}, f)
    return model


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    folder = root / "studies"
    (folder / "series1").mkdir(parents=True)
    (folder / "series2").mkdir()
    rng = np.random.default_rng(3)
    pixels = {k: rng.integers(0, 256, (128, 144), dtype=np.uint8) for k in ("a", "b", "c")}
    Image.fromarray(pixels["a"]).save(folder / "a.png")
    Image.fromarray(pixels["b"]).save(folder / "b.jpg", quality=95)
    write_dicom(str(folder / "series1" / "1.dcm"), pixels["a"])  # the PNG's pixels as DICOM
    write_dicom(str(folder / "series2" / "1.dcm"), pixels["c"], photometric="MONOCHROME1")
    data = (folder / "series1" / "1.dcm").read_bytes()
    (folder / "broken.dcm").write_bytes(data[: len(data) // 2])
    bare = write_dicom(str(folder / "bare.dcm"), pixels["c"])
    bare.preamble = None  # the same data set without the Part 10 header: DICOM by name only
    bare.save_as(folder / "bare.dcm", enforce_file_format=False)
    (folder / "readme.txt").write_text("not an image")
    runs = [str(root / f"run{seed}") for seed in (0, 1)]
    built = [_save_model(run, seed) for seed, run in enumerate(runs)]
    return {"root": root, "folder": str(folder), "pixels": pixels, "runs": runs, "models": built}


def _predict(setting, tmp_path, *args):
    env = dict(os.environ, TMPDIR=str(tmp_path / "tmp"))
    os.makedirs(env["TMPDIR"])
    done = subprocess.run([sys.executable, "predict.py", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert not os.listdir(env["TMPDIR"]), "the temporary shard folder was left behind"
    return done


def _expected(model: keras.Model, gray: np.ndarray) -> float:
    """The model on the builder's resize of `gray`, computed here without the pipeline."""
    resized = np.asarray(Image.fromarray(gray).resize((SIZE, SIZE), Image.Resampling.BICUBIC,
                                                       reducing_gap=images_lib.REDUCING_GAP), np.float32)
    rgb = np.repeat(resized[None, :, :, None], 3, axis=-1)
    return float(model(rgb, training=False).numpy()[0, 1])


def test_a_mixed_folder_is_scored_in_one_command(setting, tmp_path):
    output = str(tmp_path / "preds" / "new.csv")
    done = _predict(setting, tmp_path, f"--model_dir={setting['runs'][0]}", f"--images={setting['folder']}",
                    f"--output={output}")
    assert done.returncode == 0, done.stderr[-2000:]
    frame = pd.read_csv(output).set_index("image_id")
    assert sorted(frame.index) == ["a.png", "b.jpg", "series1/1.dcm", "series2/1.dcm"]
    model, pixels = setting["models"][0], setting["pixels"]
    assert frame.loc["a.png", "p_abnormal"] == pytest.approx(_expected(model, pixels["a"]), abs=1e-5)
    # The DICOM twin of the PNG scores the same; the MONOCHROME1 file is scored inverted.
    assert frame.loc["series1/1.dcm", "p_abnormal"] == pytest.approx(frame.loc["a.png", "p_abnormal"], abs=1e-6)
    assert frame.loc["series2/1.dcm", "p_abnormal"] == pytest.approx(_expected(model, 255 - pixels["c"]), abs=1e-5)
    with open(output[:-4] + ".json") as f:
        sidecar = json.load(f)
    reasons = {s["image"]: s["reason"] for s in sidecar["skipped"]}
    assert sorted(reasons) == ["bare.dcm", "broken.dcm"]
    assert "truncated" in reasons["broken.dcm"] and "not a DICOM Part 10 file" in reasons["bare.dcm"]
    assert sidecar["images"] == setting["folder"] and "2 file(s) skipped" in done.stdout
    assert sidecar["ignored_files"] == 1 and "1 other file(s) ignored" in done.stdout  # readme.txt


def test_an_ensemble_file_blends_the_members_with_its_weights(setting, tmp_path):
    runs = setting["runs"]
    names = ["tiny_test#1", "tiny_test#2"]
    ensemble = str(tmp_path / "submission.probabilities.json")
    write_predictions(ensemble[:-5] + ".csv", np.array(["x"]), np.array([0.5]), None, sidecar={
        "backbone": "ensemble", "schema_version": ensemble_file.SCHEMA_VERSION, "threshold": 0.4,
        "inputs": ensemble_file.member_records(names, [{"model_dir": r} for r in runs], ["a", "b"], [0.25, 0.75], [1.0, 1.0])})
    output = str(tmp_path / "blend.csv")
    done = _predict(setting, tmp_path, *[f"--model_dir={r}" for r in runs], f"--ensemble={ensemble}",
                    f"--images={os.path.join(setting['folder'], '*.png')}", f"--output={output}")
    assert done.returncode == 0, done.stderr[-2000:]
    blended = pd.read_csv(output).set_index("image_id")["p_abnormal"]
    members = [_expected(m, setting["pixels"]["a"]) for m in setting["models"]]
    assert list(blended.index) == ["a.png"]
    assert blended["a.png"] == pytest.approx(0.25 * members[0] + 0.75 * members[1], abs=1e-5)
    # The members' own files go beside it, so --output holds the blend alone.
    members = sorted(n for n in os.listdir(tmp_path) if n.startswith("blend.tiny_test") and n.endswith(".csv"))
    assert len(members) == 2
    # The blend's sidecar says what its members' say of the raw files.
    with open(output[:-4] + ".json") as f, open(os.path.join(tmp_path, members[0][:-4] + ".json")) as g:
        blend, member = json.load(f), json.load(g)
    for key in ("images", "skipped", "ignored_files"):
        assert blend[key] == member[key], key


def test_a_folder_without_a_readable_image_is_one_line(setting, tmp_path):
    empty = tmp_path / "nothing"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    done = _predict(setting, tmp_path, f"--model_dir={setting['runs'][0]}", f"--images={empty}",
                    f"--output={tmp_path / 'p.csv'}")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    line = next(x for x in done.stderr.splitlines() if x.startswith("predict.py: "))
    assert f"--images={empty}: no readable PNG, JPEG or DICOM image" in line
    assert not os.path.exists(tmp_path / "p.csv")


def test_a_labels_csv_keyed_by_id_or_sop_uid_labels_the_files_and_brings_a_report(setting, tmp_path):
    """--labels_csv labels the files; --other_labels_csv, another reading of them, rescores them."""
    import pydicom

    folder = setting["folder"]
    uid = str(pydicom.dcmread(os.path.join(folder, "series2", "1.dcm"), stop_before_pixels=True).SOPInstanceUID)
    labels_csv = tmp_path / "labels.csv"
    labels_csv.write_text(f"image_id,label\na.png,0\nb.jpg,1\nseries1/1.dcm,0\n{uid},1\n")
    panel_csv = tmp_path / "panel.csv"
    panel_csv.write_text("image_id,label\na.png,1\nb.jpg,1\nelsewhere.png,0\n")
    output = str(tmp_path / "scored.csv")
    done = _predict(setting, tmp_path, f"--model_dir={setting['runs'][0]}", f"--images={folder}",
                    f"--labels_csv={labels_csv}", f"--other_labels_csv={panel_csv}", f"--output={output}")
    assert done.returncode == 0, done.stderr[-2000:]
    frame = pd.read_csv(output).set_index("image_id")
    assert frame["label"].to_dict() == {"a.png": 0, "b.jpg": 1, "series1/1.dcm": 0, "series2/1.dcm": 1}
    with open(tmp_path / "scored_report" / "metrics.json") as f:
        metrics = json.load(f)
    from sklearn.metrics import roc_auc_score

    (only,) = metrics.values()
    assert only["auroc"] == pytest.approx(roc_auc_score(frame["label"], frame["p_abnormal"]))
    with open(tmp_path / "scored_report" / "other_labels.json") as f:
        other = json.load(f)
    assert (other["shared"], other["only_in_labels_csv"]) == (2, 1)
    # The report's PNG plots may not land among the studies: the next run would score them.
    inside = os.path.join(folder, "scored.csv")
    done = _predict(setting, tmp_path / "again", f"--model_dir={setting['runs'][0]}", f"--images={folder}",
                    f"--labels_csv={labels_csv}", f"--output={inside}")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"--report_dir={os.path.join(folder, 'scored_report')} is inside --images={folder}" in done.stderr
    assert not os.path.exists(inside)


def test_sigterm_removes_the_temporary_shard_folder(setting, tmp_path):
    temp = tmp_path / "tmp"
    temp.mkdir()
    proc = subprocess.Popen([sys.executable, "predict.py", f"--model_dir={setting['runs'][0]}",
                             f"--images={setting['folder']}", f"--output={tmp_path / 'p.csv'}"],
                            cwd=REPO, env=dict(os.environ, TMPDIR=str(temp)), stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not os.listdir(temp) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert os.listdir(temp), "predict.py ended before its temporary shard folder appeared"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith("predict.py: stopped by SIGTERM")  # the last word
    assert os.listdir(temp) == [] and not os.path.exists(tmp_path / "p.csv")


def test_an_output_over_a_model_folders_own_file_is_refused_and_the_file_kept(setting, tmp_path):
    run = setting["runs"][0]
    config = os.path.join(run, run_folder.CONFIG)
    with open(config, "rb") as f:
        before = f.read()
    done = _predict(setting, tmp_path, f"--model_dir={run}", f"--images={setting['folder']}",
                    f"--output={os.path.join(run, 'config.csv')}")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("predict.py: ")]
    assert f"would overwrite {config}, which --model_dir={run} holds" in line
    with open(config, "rb") as f:
        assert f.read() == before
    assert not os.path.exists(os.path.join(run, "config.csv"))


def _broken_copy(setting, tmp_path) -> str:
    """A copy of the second run whose model.keras is cut in half."""
    import shutil

    broken = str(tmp_path / "broken")
    shutil.copytree(setting["runs"][1], broken)
    model = os.path.join(broken, run_folder.MODEL)
    with open(model, "rb") as f:
        data = f.read()
    with open(model, "wb") as f:
        f.write(data[: len(data) // 2])
    return broken


def test_a_broken_model_among_several_fails_before_any_predicting_and_writes_nothing(setting, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    broken = _broken_copy(setting, tmp_path)
    done = _predict(setting, tmp_path, f"--model_dir={setting['runs'][0]}", f"--model_dir={broken}",
                    f"--images={os.path.join(setting['folder'], '*.png')}", f"--output={out / 'mp.csv'}")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("predict.py: ")]
    assert f"{broken}/model.keras: not a whole .keras archive" in line
    assert "tiny_test.run0:" not in done.stderr, "the first model predicted before the second was loaded"
    assert os.listdir(out) == []


def test_a_failure_while_writing_leaves_none_of_the_runs_files_and_puts_back_the_old_ones(setting, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    old = out / "mp.tiny_test.run0.csv"  # an earlier run's file, which this run replaces
    old.write_text("image_id,p_abnormal\nold.png,0.25\n")
    # A folder where the second model's .npy goes: every model predicts, then writing it fails.
    (out / "mp.tiny_test.run1.npy").mkdir()
    done = _predict(setting, tmp_path, *[f"--model_dir={r}" for r in setting["runs"]],
                    f"--images={os.path.join(setting['folder'], '*.png')}", f"--output={out / 'mp.csv'}")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "mp.tiny_test.run1.npy" in [x for x in done.stderr.splitlines() if x.startswith("predict.py: ")][0]
    assert sorted(os.listdir(out)) == ["mp.tiny_test.run0.csv", "mp.tiny_test.run1.npy"]
    assert old.read_text() == "image_id,p_abnormal\nold.png,0.25\n"
