"""Every entry point against every bad input: exit status 1, one line `<tool>: <what and the fix>`,
no traceback, and nothing left behind by the failed run.

Tests run as root, where permissions do not stop writes: an unusable output location is one whose
parent is a file. Most cases fail before TensorFlow loads (a second each); the corrupt-shard cases
load it, since only reading the records finds the damage.
"""

import glob
import gzip
import os
import shutil
import subprocess
import sys

import pytest

from contracts.atomic import TEMP_PREFIX
from tests.shard_factory import write_shards

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 32
TOOL_TIMEOUT_S = 300
SCRIPTS = {"build": os.path.join("preprocess", "build_tfrecords.py"), "synthetic": os.path.join("preprocess", "synthetic.py"),
           "train": "train.py", "predict": "predict.py", "ensemble": "ensemble.py", "export": "export.py",
           "explain": "explain.py", "demo": "demo.py"}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, str]:
    """Good inputs (shards, a trained run, its predictions) and one damaged copy per kind."""
    from training.config import TrainConfig
    from training.loop import run_training

    root = tmp_path_factory.mktemp("world")
    w = {name: str(root / name) for name in ("shards", "run", "truncated", "bad_json", "escaping",
                                             "elsewhere", "empty_images", "no_files", "a_file")}
    write_shards(w["shards"], {"train": 16, "val": 8, "test": 8}, image_size=SIZE)
    run_training(TrainConfig(backbone="tiny_test", data_dir=w["shards"], weights="none", epochs=1,
                             global_batch_size=8, precision="float32", strategy="default", model_dir=w["run"]))
    w["val_predictions"] = os.path.join(w["run"], "val_predictions.csv")
    _damaged_runs(w, root)
    for damaged in ("truncated", "bad_json", "escaping"):
        shutil.copytree(w["shards"], w[damaged])
    for split in ("train", "test"):
        shard = os.path.join(w["truncated"], f"{split}-00001-of-00002.tfrecord")
        with open(shard, "rb") as f:
            data = f.read()
        with open(shard, "wb") as f:
            # Cut inside a record's data: TensorFlow reports it (a cut inside the 12-byte header of
            # the last record reads as a clean end of file).
            f.write(data[: len(data) // 2 + 40])
    with open(os.path.join(w["bad_json"], "manifest.json"), "w") as f:
        f.write("{not json")
    # A manifest entry that points into another folder: the test split would read val's records.
    os.makedirs(w["elsewhere"])
    shutil.copy(os.path.join(w["shards"], "val-00000-of-00002.tfrecord"), w["elsewhere"])
    with open(os.path.join(w["escaping"], "manifest.json")) as f:
        text = f.read()
    with open(os.path.join(w["escaping"], "manifest.json"), "w") as f:
        f.write(text.replace('"test-00000-of-00002.tfrecord"', '"../elsewhere/val-00000-of-00002.tfrecord"'))
    os.makedirs(w["empty_images"])
    os.makedirs(w["no_files"])
    w["csv"] = os.path.join(w["no_files"], "Data_Entry_2017_v2020.csv")
    with open(w["csv"], "w") as f:
        f.write("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
                "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n"
                "00000001_000.png,No Finding,0,1,58,M,PA,1024,1024,0.143,0.143\n")
    with open(w["a_file"], "w") as f:
        f.write("a file where a folder is expected\n")
    header = open(w["csv"], "rb").read().splitlines(keepends=True)[0]
    for name, data in (("header_only.csv", header), ("partial.csv.gz", gzip.compress(header * 50)[:40]),
                       ("latin1.csv", header + "caf\xe9.png,No Finding,0,1,58,M,PA,1,1,1,1\n".encode("latin-1"))):
        w[name] = os.path.join(w["no_files"], name)
        with open(w[name], "wb") as f:
            f.write(data)
    return w


def _damaged_runs(w: dict[str, str], root) -> None:
    """Copies of the run whose model.keras has bytes flipped, is cut in half, or takes another size."""
    import models

    model = os.path.join(w["run"], "model.keras")
    with open(model, "rb") as f:
        data = f.read()
    middle = len(data) // 2
    damaged = {"run_flipped": data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + 16]) + data[middle + 16:],
               "run_cut": data[:middle], "run_other_size": None}
    for name, content in damaged.items():
        w[name] = str(root / name)
        shutil.copytree(w["run"], w[name], ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
        if content is None:  # config.json says SIZE; this model.keras takes twice that
            models.build_model("tiny_test", 2 * SIZE, weights="none").save(os.path.join(w[name], "model.keras"))
            continue
        with open(os.path.join(w[name], "model.keras"), "wb") as f:
            f.write(content)


def _run(tool: str, *args: str, cwd: str = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.join(REPO, SCRIPTS[tool]), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=TOOL_TIMEOUT_S)


def _assert_one_line_failure(done: subprocess.CompletedProcess, tool: str, *fragments: str) -> str:
    """Exit 1, no traceback, exactly one line of the tool's own, holding every fragment."""
    name = os.path.basename(SCRIPTS[tool])
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    own = [line for line in done.stderr.splitlines() if line.startswith(f"{name}: ")]
    assert len(own) == 1, done.stderr[-2000:]
    for fragment in fragments:
        assert fragment in own[0], own[0]
    return own[0]


def _nothing_written(*paths: str) -> None:
    for path in paths:
        assert not os.path.exists(path), f"{path} was left behind"
        folder = os.path.dirname(path)
        if os.path.isdir(folder):
            assert not glob.glob(os.path.join(folder, TEMP_PREFIX + "*")), os.listdir(folder)


# (case id, tool, argv from the world, fragments of the one line, outputs that must not exist)
CASES = [
    ("build-no-image-dir", "build", lambda w: ["--output_dir={out}/shards"], ["--image_dir is required"], ["{out}/shards"]),
    ("build-output-under-a-file", "build", lambda w: [f"--image_dir={w['empty_images']}", "--split_by=unlabeled",
                                                      f"--output_dir={w['a_file']}/shards"],
     ["--output_dir=", "is a file, not a folder"], []),
    ("build-unlabeled-empty-folder", "build", lambda w: [f"--image_dir={w['empty_images']}", "--split_by=unlabeled",
                                                         "--output_dir={out}/shards"],
     ["no PNG, JPEG or DICOM file under --image_dir="], ["{out}/shards"]),
    ("build-no-csv-row-has-a-file", "build", lambda w: [f"--image_dir={w['no_files']}", f"--data_entry_csv={w['csv']}",
                                                        "--split_by=all", "--output_dir={out}/shards"],
     ["no usable images", "1 of 1 CSV rows have no file"], ["{out}/shards"]),
    ("build-header-only-csv", "build", lambda w: [f"--image_dir={w['no_files']}", f"--data_entry_csv={w['header_only.csv']}",
                                                  "--split_by=all", "--output_dir={out}/shards"],
     ["header_only.csv has a header but no rows"], ["{out}/shards"]),
    ("build-truncated-gzip-csv", "build", lambda w: [f"--image_dir={w['no_files']}", f"--data_entry_csv={w['partial.csv.gz']}",
                                                     "--split_by=all", "--output_dir={out}/shards"],
     ["partial.csv.gz: truncated or corrupt gzip file", "download it again"], ["{out}/shards"]),
    ("build-latin1-csv", "build", lambda w: [f"--image_dir={w['no_files']}", f"--data_entry_csv={w['latin1.csv']}",
                                             "--split_by=all", "--output_dir={out}/shards"],
     ["latin1.csv: not UTF-8 text (byte 0xe9", "save it as a UTF-8 CSV"], ["{out}/shards"]),
    ("build-data-entry-as-bbox-csv", "build", lambda w: [f"--image_dir={w['no_files']}", f"--data_entry_csv={w['csv']}",
                                                         f"--bbox_csv={w['csv']}", "--split_by=all", "--output_dir={out}/shards"],
     ["not NIH's BBox_List CSV", "pass BBox_List_2017.csv as --bbox_csv"], ["{out}/shards"]),
    ("build-nan-skip-fraction", "build", lambda w: [f"--image_dir={w['empty_images']}", "--split_by=unlabeled",
                                                    "--max_skip_fraction=nan", "--output_dir={out}/shards"],
     ["--max_skip_fraction=nan must be in [0, 1]"], ["{out}/shards"]),
    ("build-stray-argument", "build", lambda w: [f"--image_dir={w['empty_images']}", "--output_dir={out}/s", "extra"],
     ["unexpected arguments 'extra'"], ["{out}/s"]),
    ("synthetic-stray-argument", "synthetic", lambda w: ["--output_dir={out}/syn", "extra"],
     ["unexpected arguments 'extra'"], ["{out}/syn"]),
    ("train-no-manifest", "train", lambda w: ["--backbone=resnet50", f"--data_dir={w['empty_images']}",
                                              "--model_dir={out}/run"], ["manifest.json not found"], ["{out}/run"]),
    ("train-manifest-not-json", "train", lambda w: ["--backbone=resnet50", f"--data_dir={w['bad_json']}",
                                                    "--model_dir={out}/run"], ["is not valid JSON"], ["{out}/run"]),
    ("train-manifest-escapes-the-folder", "train", lambda w: ["--backbone=resnet50", f"--data_dir={w['escaping']}",
                                                              "--val_split=test", "--model_dir={out}/run"],
     ["lists shard '../elsewhere/val-00000-of-00002.tfrecord'", "rebuild"], ["{out}/run"]),
    ("train-model-dir-under-a-file", "train", lambda w: ["--backbone=resnet50", f"--data_dir={w['shards']}",
                                                         f"--model_dir={w['a_file']}/run"],
     ["--model_dir=", "is a file, not a folder"], []),
    ("train-stray-argument", "train", lambda w: ["--backbone=resnet50", f"--data_dir={w['shards']}",
                                                 "--model_dir={out}/run", "extra"],
     ["unexpected arguments 'extra'"], ["{out}/run"]),
    ("predict-manifest-not-json", "predict", lambda w: [f"--model_dir={w['run']}", f"--data_dir={w['bad_json']}",
                                                        "--split=test", "--output={out}/p.csv"],
     ["is not valid JSON"], ["{out}/p.csv", "{out}/p_report"]),
    ("predict-manifest-escapes-the-folder", "predict", lambda w: [f"--model_dir={w['run']}", f"--data_dir={w['escaping']}",
                                                                  "--split=test", "--output={out}/p.csv"],
     ["lists shard '../elsewhere/val-00000-of-00002.tfrecord'", "shards must be file names inside"],
     ["{out}/p.csv"]),
    ("predict-output-under-a-file", "predict", lambda w: [f"--model_dir={w['run']}", f"--data_dir={w['shards']}",
                                                          "--split=test", f"--output={w['a_file']}/p.csv"],
     ["--output=", "is a file, not a folder"], []),
    ("predict-report-under-a-file", "predict", lambda w: [f"--model_dir={w['run']}", f"--data_dir={w['shards']}",
                                                          "--split=test", "--output={out}/p.csv",
                                                          f"--report_dir={w['a_file']}/report"],
     ["--report_dir=", "is a file, not a folder"], ["{out}/p.csv"]),
    ("predict-not-a-run-folder", "predict", lambda w: [f"--model_dir={w['shards']}", f"--data_dir={w['shards']}",
                                                       "--split=test", "--output={out}/p.csv"],
     ["config.json not found", "is not a folder written by train.py"], ["{out}/p.csv"]),
    ("predict-comma-separated-model-dirs", "predict", lambda w: [f"--model_dir={w['run']},{w['run']}",
                                                                 f"--data_dir={w['shards']}", "--split=test",
                                                                 "--output={out}/p.csv"],
     ["is not a folder written by train.py", "give --model_dir once per model", "not a comma-separated list"],
     ["{out}/p.csv"]),
    ("predict-output-is-a-folder", "predict", lambda w: [f"--model_dir={w['run']}", f"--data_dir={w['shards']}",
                                                        "--split=test", "--output={out}"],
     ["--output=", "is a folder; give a file name in it"], []),
    ("predict-stray-argument", "predict", lambda w: [f"--model_dir={w['run']}", f"--data_dir={w['shards']}",
                                                     "--output={out}/p.csv", "extra"],
     ["unexpected arguments 'extra'"], ["{out}/p.csv"]),
    ("ensemble-output-under-a-file", "ensemble", lambda w: [f"--predictions={w['val_predictions']}",
                                                            f"--output={w['a_file']}/submission.csv"],
     ["--output=", "is a file, not a folder"], []),
    ("ensemble-missing-predictions", "ensemble", lambda w: ["--predictions={out}/absent.csv", "--output={out}/s.csv"],
     ["absent.csv not found"], ["{out}/s.csv"]),
    ("ensemble-stray-argument", "ensemble", lambda w: [f"--predictions={w['val_predictions']}",
                                                       "--output={out}/s.csv", "extra_arg"],
     ["unexpected arguments 'extra_arg'"], ["{out}/s.csv"]),
    ("export-dir-under-a-file", "export", lambda w: [f"--model_dir={w['run']}", f"--export_dir={w['a_file']}/served"],
     ["--export_dir=", "is a file, not a folder"], []),
    ("export-stray-argument", "export", lambda w: [f"--model_dir={w['run']}", "--export_dir={out}/served", "extra"],
     ["unexpected arguments 'extra'"], ["{out}/served"]),
    ("demo-output-under-a-file", "demo", lambda w: [f"--output_dir={w['a_file']}/demo"],
     ["--output_dir=", "is a file, not a folder"], []),
    ("demo-stray-argument", "demo", lambda w: ["--output_dir={out}/demo", "extra"],
     ["unexpected arguments 'extra'"], ["{out}/demo"]),
]


# Said through load_classifier, in process: the tools print any UserInputError as their one line
# (the cases above), and each of these costs a TensorFlow start-up as a command.
DAMAGED_MODELS = [
    ("run_flipped", ["run_flipped/model.keras: damaged", "fails its CRC-32 check", "retrain", "restore the run folder"]),
    ("run_cut", ["run_cut/model.keras: not a whole .keras archive", "truncated or damaged", "restore the run folder"]),
    ("run_other_size", [f"model.keras takes {2 * SIZE}x{2 * SIZE} px images", f"config.json says image_size {SIZE}"]),
]


@pytest.mark.parametrize("run, fragments", DAMAGED_MODELS, ids=[d[0] for d in DAMAGED_MODELS])
def test_a_damaged_or_mismatched_model_is_refused_in_one_line(world, run, fragments):
    from contracts.errors import UserInputError
    from models.saved import load_classifier

    with pytest.raises(UserInputError) as refused:
        load_classifier(world[run])
    message = str(refused.value)
    assert "\n" not in message and all(f in message for f in fragments), message


# A command of the old names (each script's RENAMED, given to cli.run), whole as a user would type
# it: the old name fails in one line naming the new one, before anything runs. Listed here, not read
# from the tables, so that an entry dropped from one fails too.
OLD_NAMES = [
    ("ensemble", ["--predictions=a.csv", "--predictions=b.csv", "--output={out}/s.csv", "--weights=0.6,0.4"],
     "--weights is now --blend_weight (repeat it, one per --predictions"),
    ("ensemble", ["--predictions=a.csv", "--output={out}/s.csv", "--labels_csv=panel.csv"],
     "--labels_csv is now --other_labels_csv"),
    ("predict", ["--model_dir=run", "--data_dir=shards", "--output={out}/p.csv", "--batch_size=8"],
     "--batch_size is now --global_batch_size"),
    ("explain", ["--model_dir=run", "--data_dir=shards", "--output_dir={out}/x", "--batch_size", "8"],
     "--batch_size is now --global_batch_size"),
    ("demo", ["--data_dir=/data/nih", "--weights=none"], "--data_dir is now --nih_dir"),
    ("build", ["--image_dir=nih", "--output_dir={out}/shards", "--split=grouped"], "--split is now --split_by"),
    # Not renamed but narrowed: predict.py's --labels_csv labels --images files only.
    ("predict", ["--model_dir=run", "--data_dir=shards", "--output={out}/p.csv", "--labels_csv=panel.csv"],
     "--labels_csv labels --images files; to rescore a shard split against another reading of its images, "
     "pass --other_labels_csv"),
    # Several values are given by repeating a flag; joined by commas they name nothing.
    ("ensemble", ["--predictions=a.csv,b.csv", "--output={out}/s.csv"],
     "--predictions=a.csv,b.csv names no file; give --predictions once per file (--predictions=A --predictions=B)"),
    ("ensemble", ["--predictions=a.csv", "--fit_on=a.csv,b.csv", "--output={out}/s.csv"],
     "--fit_on=a.csv,b.csv names no file; give --fit_on once per file"),
    ("ensemble", ["--predictions=a.csv", "--output={out}/s.csv", "--blend_weight=0.6,0.4"],
     "--blend_weight: '0.6,0.4' is not a number; pass one number per --blend_weight, repeated"),
    ("demo", ["--backbones=resnet50,densenet121"],
     "give --backbones once per value (--backbones=resnet50 --backbones=densenet121), not a comma-separated list"),
]


@pytest.mark.parametrize("tool, argv, fragment", OLD_NAMES, ids=[f"{t}-{a[-1]}" for t, a, _ in OLD_NAMES])
def test_an_old_flag_name_or_a_comma_list_fails_in_one_line_naming_the_fix(tmp_path, tool, argv, fragment):
    done = _run(tool, *[a.replace("{out}", str(tmp_path)) for a in argv], cwd=str(tmp_path))
    _assert_one_line_failure(done, tool, fragment)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("case, tool, argv, fragments, outputs", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_1(world, tmp_path, case, tool, argv, fragments, outputs):
    out = str(tmp_path)
    done = _run(tool, *[a.replace("{out}", out) for a in argv(world)])
    _assert_one_line_failure(done, tool, *fragments)
    _nothing_written(*[o.replace("{out}", out) for o in outputs])


def test_a_truncated_shard_at_predict_names_the_shard_and_writes_nothing(world, tmp_path):
    done = _run("predict", f"--model_dir={world['run']}", f"--data_dir={world['truncated']}", "--split=test",
                f"--output={tmp_path}/p.csv")
    line = _assert_one_line_failure(done, "predict", "test-00001-of-00002.tfrecord is truncated or corrupt",
                                    "recopy the folder or rebuild it")
    assert "function_node" not in line
    _nothing_written(f"{tmp_path}/p.csv", f"{tmp_path}/p.npy", f"{tmp_path}/p.json")
    assert os.listdir(tmp_path) == []


def test_a_truncated_shard_at_train_names_the_shard_and_keeps_no_partial_output(world, tmp_path):
    model_dir = str(tmp_path / "run")
    done = _run("train", "--backbone=resnet50", f"--data_dir={world['truncated']}", "--val_split=val",
                f"--model_dir={model_dir}", "--weights=none", f"--image_size={SIZE}", "--global_batch_size=8",
                "--epochs=1", "--strategy=default", "--precision=float32")
    _assert_one_line_failure(done, "train", "train-00001-of-00002.tfrecord is truncated or corrupt")
    _nothing_written(os.path.join(model_dir, "model.keras"), os.path.join(model_dir, "val_predictions.csv"))


def _clash_inputs(world, tmp_path) -> dict[str, str]:
    """Copies of the run and the shards (a failing check must not damage the shared world), a
    symlink to the run, a labels CSV and an ensemble file whose one member is the run copy."""
    from contracts import ensemble_file
    from contracts.prediction_files import write_predictions

    c = {"run": str(tmp_path / "run"), "shards": str(tmp_path / "shards"), "alias": str(tmp_path / "alias"),
         "labels": str(tmp_path / "labels.csv"), "ens": str(tmp_path / "sub.probabilities.json")}
    shutil.copytree(world["run"], c["run"], ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
    shutil.copytree(world["shards"], c["shards"])
    os.symlink(c["run"], c["alias"])
    with open(c["labels"], "w") as f:
        f.write("image_id,label\nx.png,1\n")
    write_predictions(c["ens"][:-5] + ".csv", ["x.png"], [0.5], None, sidecar={
        "backbone": "ensemble", "threshold": 0.5,
        "inputs": ensemble_file.member_records(["tiny_test"], [{"model_dir": c["run"]}], ["p.csv"], [1.0], [1.0])})
    return c


def _predict_clash(*extra: str):
    return lambda c: [f"--model_dir={c['run']}", f"--data_dir={c['shards']}", "--split=test", *extra]


# (case id, argv from the copies, fragments of the one line, inputs whose bytes must stay)
CLASHES = [
    ("output-is-the-runs-val-predictions", _predict_clash("--output={run}/val_predictions.csv"),
     ["--output={run}/val_predictions.csv would overwrite", "--model_dir={run} holds", "choose another --output"],
     ["{run}/val_predictions.csv", "{run}/val_predictions.json"]),
    ("sidecar-is-the-runs-config", _predict_clash("--output={run}/config.csv"),
     ["would overwrite {run}/config.json", "train.py's config.json"], ["{run}/config.json"]),
    ("output-through-a-symlink-to-the-run", _predict_clash("--output={alias}/./val_predictions.csv"),
     ["would overwrite {alias}/./val_predictions.csv"], ["{run}/val_predictions.csv"]),
    ("sidecar-is-the-manifest", _predict_clash("--output={shards}/manifest.csv"),
     ["would overwrite {shards}/manifest.json", "--data_dir={shards} holds (its manifest)"],
     ["{shards}/manifest.json"]),
    ("output-is-the-labels-csv", _predict_clash("--other_labels_csv={labels}", "--output={labels}"),
     ["would overwrite {labels}, which --other_labels_csv reads"], ["{labels}"]),
    ("blend-sidecar-is-the-ensemble-file", _predict_clash("--ensemble={ens}", "--output={ens_csv}"),
     ["would overwrite {ens}, which --ensemble reads"], ["{ens}"]),
]


@pytest.mark.parametrize("case, argv, fragments, kept", CLASHES, ids=[c[0] for c in CLASHES])
def test_a_predict_output_that_would_replace_an_input_is_refused_and_the_input_kept(world, tmp_path, case, argv,
                                                                                     fragments, kept):
    c = _clash_inputs(world, tmp_path)
    c["ens_csv"] = c["ens"][:-5] + ".csv"

    def fill(text: str) -> str:
        return text.format(**c)

    before = {}
    for path in map(fill, kept):
        with open(path, "rb") as f:
            before[path] = f.read()
    done = _run("predict", *[fill(a) for a in argv(c)])
    _assert_one_line_failure(done, "predict", *map(fill, fragments))
    for path, data in before.items():
        with open(path, "rb") as f:
            assert f.read() == data, f"{path} was overwritten"
    for folder in (c["run"], c["shards"], str(tmp_path)):
        assert not glob.glob(os.path.join(folder, TEMP_PREFIX + "*")), os.listdir(folder)
