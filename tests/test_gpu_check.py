"""bench/gpu_check.sh, the script users with a GPU run once and send back: it must be right the first time.

Its `--smoke` mode runs every part on the CPU; the figures it gives are checked against the raw
timings they are computed from. Speed targets live in the benches, not here.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from contracts.labels import FINDINGS
from models import registry
from tests import bench_scripts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "bench", "gpu_check.sh")
SMOKE_TIMEOUT_S = 600


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, timeout=SMOKE_TIMEOUT_S,
                          env={**os.environ, "PYTHON": sys.executable, **env})


def test_without_a_gpu_it_fails_in_one_line_and_measures_nothing(tmp_path):
    out = tmp_path / "check.json"
    done = _run([f"--json_out={out}"], CUDA_VISIBLE_DEVICES="", PATH=os.path.dirname(sys.executable) + ":/bin")
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("gpu_check: TensorFlow ") and "sees no GPU" in last and "no NVIDIA driver" in last
    assert "Traceback" not in done.stderr and not out.exists()


def _make_install(venv, path: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-s", "install", f"VENV={venv}", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PATH": path})


def test_make_install_names_gpu_1_where_nvidia_smi_works_and_gpu_1_adds_the_cuda_extra(tmp_path):
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / ".installed").touch()  # installed and up to date: only the hint can print
    paths = {}
    for name, status in (("gpu", 0), ("no_driver", 9)):  # a working and a failing nvidia-smi
        (tmp_path / name).mkdir()
        (tmp_path / name / "nvidia-smi").write_text(f"#!/bin/sh\nexit {status}\n")
        (tmp_path / name / "nvidia-smi").chmod(0o755)
        paths[name] = f"{tmp_path / name}:{os.environ['PATH']}"
    with_gpu = paths["gpu"]
    hint = _make_install(venv, with_gpu).stdout.strip().splitlines()
    assert len(hint) == 1 and "make install GPU=1" in hint[0]
    assert _make_install(venv, paths["no_driver"]).stdout.strip() == ""
    (venv / ".installed-gpu").touch()  # a GPU=1 venv keeps GPU=1 for later targets
    assert _make_install(venv, with_gpu).stdout.strip() == ""
    planned = subprocess.run(["make", "-n", "install", "GPU=1", f"VENV={tmp_path / 'new'}"], cwd=REPO,
                             capture_output=True, text=True, timeout=60).stdout
    assert "pip install --quiet -c constraints.txt -e '.[gpu]'" in planned  # the user's install: no dev extra


@pytest.fixture(scope="module")
def train_bench():
    with bench_scripts.loaded("train_bench") as module:  # its flags leave absl's FLAGS with this module
        yield module


def _raising(error: Exception):
    def run(batch):
        raise error

    return run


def test_out_of_memory_steps_down_to_the_largest_batch_that_fits(train_bench):
    tried = []

    def run(batch):
        tried.append(batch)
        if batch > 64:
            raise tf.errors.ResourceExhaustedError(None, None, f"OOM when allocating tensor for batch {batch}")
        return {"global_batch_size": batch}

    assert train_bench.largest_fitting(run, [256, 128, 64, 32]) == (64, {"global_batch_size": 64}, [256, 128])
    assert tried == [256, 128, 64]
    cudnn = tf.errors.UnknownError(None, None, "CUDNN_STATUS_ALLOC_FAILED in convolution")
    assert train_bench.is_out_of_memory(cudnn)
    with pytest.raises(train_bench.NothingFits, match="256, 128"):
        train_bench.largest_fitting(_raising(cudnn), [256, 128])
    with pytest.raises(tf.errors.InvalidArgumentError):  # not memory: raised as it is
        train_bench.largest_fitting(_raising(tf.errors.InvalidArgumentError(None, None, "bad shape")), [256])


def test_the_findings_step_has_the_findings_head_and_loss_and_its_batch_known_findings(train_bench,
                                                                                          monkeypatch):
    made = {}
    monkeypatch.setattr(train_bench.step_lib, "make_train_step",
                        lambda strategy, model, optimizer, **kwargs: (model, kwargs["findings"]))
    strategy = tf.distribute.get_strategy()
    for head in ("binary", "findings"):
        made[head], _ = train_bench._make_step(strategy, "tiny_test", head, 32, "float32", global_batch_size=4)
    assert made["binary"][0].output.shape[-1] == 2 and made["binary"][1] is None
    model, loss = made["findings"]
    assert model.output.shape[-1] == 2 + len(FINDINGS) and isinstance(loss, train_bench.step_lib.FindingsLoss)
    assert len(loss.pos_weights) == len(FINDINGS) and loss.weight > 0
    batch = train_bench._with_known_findings({"label": tf.zeros([64], tf.int32),
                                              "findings": tf.zeros([64, len(FINDINGS)], tf.int32),
                                              "findings_known": tf.zeros([64], tf.int32)})
    findings = batch["findings"].numpy()
    # All known (unknown ones are masked out of the loss) and multi-hot at about NIH's rate of findings.
    assert (batch["findings_known"].numpy() == 1).all() and set(np.unique(findings)) == {0, 1}
    assert 0.2 < findings.sum(axis=1).mean() < 2.0


@pytest.mark.slow
def test_the_findings_row_is_timed_in_turn_with_the_binary_row_and_its_ratio_adds_up(tmp_path):
    out = tmp_path / "train.json"
    done = subprocess.run([sys.executable, os.path.join(REPO, "bench", "train_bench.py"), "--backbones=tiny_test",
                           "--image_size=32", "--records=32", "--steps=1", "--warmup=1", "--repeats=3",
                           "--precisions=float32", "--jit=off", f"--json_out={out}"],
                          capture_output=True, text=True, timeout=SMOKE_TIMEOUT_S, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    binary, findings = json.loads(out.read_text())["tiny_test"]["variants"]
    assert (binary["head"], findings["head"]) == ("binary", "findings") and "step_ratio" not in binary
    units = registry.get_backbone("tiny_test").head.dense_units
    assert findings["trainable_parameters"] - binary["trainable_parameters"] == (units + 1) * len(FINDINGS)
    for mode, prefix in (("in_memory", ""), ("pipeline", "pipeline_")):
        # Step time is 1 / img/s: findings / binary time is binary / findings img/s, pair by pair.
        wall = np.array(binary[f"{mode}_img_s_runs"]) / np.array(findings[f"{mode}_img_s_runs"])
        cpu = (np.array(findings[f"{mode}_cpu_s_per_image_runs"])
               / np.array(binary[f"{mode}_cpu_s_per_image_runs"]))
        assert len(wall) == len(cpu) == 3  # one pair of timings per repeat
        for name, ratios in (("step_ratio", wall), ("step_cpu_ratio", cpu)):
            assert findings[prefix + name] == pytest.approx(np.median(ratios))
            assert findings[f"{prefix}{name}_spread"] == pytest.approx([ratios.min(), ratios.max()])
        for row in (binary, findings):
            assert row[f"{mode}_img_s"] == max(row[f"{mode}_img_s_runs"])
    assert f"in memory {findings['step_ratio']:.3f}" in done.stdout.splitlines()[-1]


@pytest.mark.slow
def test_the_smoke_run_goes_through_every_part_and_its_figures_add_up(tmp_path):
    # The test backbone: the three real ones take about ten minutes here (each trains, XLA compiles
    # and predicts in its own process), and the script's parts and the benches' code are the same
    # for every backbone. The front before the augmentation under XLA is test_transfer.py's.
    out = tmp_path / "check.json"
    done = _run(["--smoke", "--backbones=tiny_test", f"--json_out={out}"])
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    report = json.loads(out.read_text())
    assert report["smoke"] and report["failures"] == [] and not report["environment"]["gpus"]
    size = report["plan"]["image_size"]
    assert list(report["train"]) == ["tiny_test"]
    for variants in report["train"].values():
        # XLA off with both transfers; XLA on with uint8, for the one backbone the smoke compiles.
        assert sorted((v["jit_compile"], v["transfer"]) for v in variants) == [
            (False, "float32"), (False, "uint8"), (True, "uint8")]
        for v in variants:
            assert v["precision"] == report["plan"]["precision"] == "mixed_bfloat16"
            assert v["global_batch_size"] == max(report["plan"]["batch_sizes"])
            pixels = v["global_batch_size"] * size * size
            assert v["bytes_per_batch"] == pixels * (1 if v["transfer"] == "uint8" else 3 * 4)
            assert v["ratio"] == pytest.approx(v["pipeline_img_s"] / v["in_memory_img_s"])
    scaling = report["scaling"]
    assert scaling["replicas"] == 2 and scaling["all_devices"]["replicas"] == 2
    assert scaling["efficiency"] == pytest.approx(
        scaling["all_devices"]["pipeline_img_s"] / (2 * scaling["one_device"]["pipeline_img_s"]))
    pipeline = report["pipeline"]
    batch = pipeline["batch_size"]
    assert pipeline["pipeline_bytes_per_batch"] == batch * size * size * 12
    assert pipeline["pipeline_uint8_gray_bytes_per_batch"] == batch * size * size
    assert pipeline["pipeline_uint8_front_img_s"] > 0 and "synthetic" in pipeline["source"]
    assert set(report["predict"]["transfers"]) == {"uint8", "float32"}
    assert "ResNet-50 AMP+XLA 2,375 img/s" in done.stdout and "SMOKE RUN" in done.stdout
    assert done.stdout.strip().splitlines()[-1].startswith(f"Attach {out} to an issue")
