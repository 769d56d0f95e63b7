"""ensemble.py as a user runs it: exit status 1 and a one-line message for bad input, files otherwise."""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from contracts.prediction_files import write_predictions

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IDS = [f"{i:08d}_000.png" for i in range(40)]


def _ensemble(*args):
    return subprocess.run([sys.executable, "ensemble.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture()
def two_models(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.arange(len(IDS)) % 2
    paths = []
    for backbone, noise in (("efficientnet_b3", 0.1), ("resnet50", 0.4)):
        probs = np.clip(0.25 + 0.5 * labels + rng.normal(0, noise, len(IDS)), 0, 1)
        path = str(tmp_path / f"{backbone}.csv")
        write_predictions(path, IDS, probs, labels, {"backbone": backbone, "crop": "bbox"})
        paths.append(path)
    return paths


def _rewrite(path, edit):
    frame = pd.read_csv(path, dtype={"image_id": str})
    edit(frame)
    frame.to_csv(path, index=False)


def _set_probability(frame, row, value):
    frame["p_abnormal"] = frame["p_abnormal"].astype(object)
    frame.loc[row, "p_abnormal"] = value


@pytest.mark.parametrize("edit, message", [
    (lambda f: f.drop(index=[3, 7], inplace=True),
     r"resnet50\.csv: different image ids .*00000003_000\.png, 00000007_000\.png"),
    (lambda f: f.loc.__setitem__((5, "image_id"), IDS[6]),
     r"resnet50\.csv: 1 duplicate image_id.*00000006_000\.png"),
    (lambda f: _set_probability(f, 9, "nan"), r"resnet50\.csv: p_abnormal is missing, NaN.*00000009_000\.png"),
    (lambda f: _set_probability(f, 2, 7.0), r"resnet50\.csv: p_abnormal outside \[0, 1\].*00000002_000\.png"),
], ids=["different-ids", "duplicate-id", "nan", "out-of-range"])
def test_bad_input_exits_1_with_a_one_line_message(tmp_path, two_models, edit, message):
    _rewrite(two_models[1], edit)
    result = _ensemble(*[f"--predictions={p}" for p in two_models], f"--output={tmp_path / 'sub.csv'}")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith("ensemble.py: ")
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "sub.csv").exists()


def test_missing_sidecar_exits_1_asking_for_weights(tmp_path, two_models):
    os.remove(two_models[0][:-4] + ".json")
    result = _ensemble(*[f"--predictions={p}" for p in two_models], f"--output={tmp_path / 'sub.csv'}")
    assert result.returncode == 1
    assert "efficientnet_b3.csv: no sidecar" in result.stderr and "--blend_weight" in result.stderr


def test_cli_writes_submission_probabilities_and_report(tmp_path, two_models):
    output = tmp_path / "out" / "submission.csv"
    result = _ensemble(*[f"--predictions={p}" for p in two_models], f"--output={output}", "--bootstrap=50",
                       "--submission_id_column=Image Index", "--submission_label_column=Abnormal")
    assert result.returncode == 0, result.stderr
    submission = pd.read_csv(output, dtype={"Image Index": str})
    assert list(submission.columns) == ["Image Index", "Abnormal"]
    assert sorted(submission["Image Index"]) == IDS and set(submission["Abnormal"]) <= {0, 1}
    # Reference weights of the two backbones, renormalised: 0.6 / 0.1 -> 6/7 and 1/7.
    sidecar = json.loads((tmp_path / "out" / "submission.probabilities.json").read_text())
    assert sidecar["weights"] == pytest.approx({"efficientnet_b3": 6 / 7, "resnet50": 1 / 7})
    assert sidecar["threshold"] == 0.6 and sidecar["crop"] == "bbox"
    report = tmp_path / "out" / "submission_report"
    metrics = json.loads((report / "metrics.json").read_text())
    assert set(metrics) == {"efficientnet_b3", "resnet50", "ensemble"}
    assert metrics["ensemble"]["crop"] == "bbox" and metrics["ensemble"]["threshold"] == 0.6
    assert (report / "roc.png").stat().st_size > 0 and (report / "precision_recall.png").stat().st_size > 0
    assert "AUROC" in result.stdout and "ensemble" in result.stdout


def test_cli_fit_on_prints_the_criterion_and_chosen_values(tmp_path, two_models):
    result = _ensemble(*[f"--predictions={p}" for p in two_models], f"--output={tmp_path / 'sub.csv'}",
                       *[f"--fit_on={p}" for p in two_models], "--fit_step=0.1", "--bootstrap=0")
    assert result.returncode == 0, result.stderr
    assert "weights and threshold chosen on 40 validation records by max balanced accuracy" in result.stdout
    # Fitted on the very files it scores: allowed, and said.
    assert "--fit_on shares 40 of its 40 images with --predictions" in result.stderr
    sidecar = json.loads((tmp_path / "sub.probabilities.json").read_text())
    assert sidecar["fit"]["fitted_weights"] and sidecar["fit"]["fitted_threshold"]
    assert sidecar["weights"]["efficientnet_b3"] > sidecar["weights"]["resnet50"]
    assert f"weights: efficientnet_b3 {sidecar['weights']['efficientnet_b3']:.3f}" in result.stdout


def _previous_blend(tmp_path, two_models):
    """An earlier ensemble's blend (old.probabilities.csv + .json) given as a member."""
    frame = pd.read_csv(two_models[1], dtype={"image_id": str})
    path = str(tmp_path / "old.probabilities.csv")
    write_predictions(path, frame["image_id"], frame["p_abnormal"], frame["label"], {"backbone": "ensemble"})
    return [two_models[0], path]


# Each case: --predictions, extra flags, --output, a fragment of the one line, inputs that must keep their bytes.
@pytest.mark.parametrize("members, extra, output, fragment, kept", [
    (lambda t, m: m, [], lambda t, m: m[1], "which --predictions reads;", lambda t, m: [m[1], m[1][:-4] + ".json"]),
    (lambda t, m: m, [], lambda t, m: str(t / "alias" / "." / os.path.basename(m[1])),
     "which --predictions reads;", lambda t, m: [m[1]]),
    (_previous_blend, [], lambda t, m: str(t / "old.csv"), "old.probabilities.csv, which --predictions reads",
     lambda t, m: [str(t / "old.probabilities.csv"), str(t / "old.probabilities.json")]),
    (lambda t, m: m, ["--fit_on={fit}"], lambda t, m: str(t / "val" / "resnet50.csv"),
     "which --fit_on reads", lambda t, m: [str(t / "val" / "resnet50.csv")]),
], ids=["output-is-a-member", "output-is-a-member-through-a-symlink", "blend-is-a-member", "output-is-a-fit-on-file"])
def test_an_output_that_would_replace_an_input_is_refused_and_the_input_kept(tmp_path, two_models, members, extra,
                                                                             output, fragment, kept):
    (tmp_path / "val").mkdir()
    fit = []
    for path in two_models:
        fit.append(str(tmp_path / "val" / os.path.basename(path)))
        shutil.copy(path, fit[-1])
    os.symlink(tmp_path, tmp_path / "alias")
    files, target = members(tmp_path, two_models), output(tmp_path, two_models)
    before = {path: pathlib.Path(path).read_bytes() for path in kept(tmp_path, two_models)}
    result = _ensemble(*[f"--predictions={p}" for p in files], f"--output={target}",
                       *[e.format(fit=path) for e in extra for path in fit])
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"ensemble.py: --output={target} would overwrite") and fragment in line, line
    assert "choose another --output" in line
    for path, data in before.items():
        assert pathlib.Path(path).read_bytes() == data, f"{path} was overwritten"
