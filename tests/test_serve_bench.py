"""bench/serve_bench.py: its networks row is fed what serving_default decodes, and one run's figures add up.

Speed targets live in the bench, not here.
"""

import glob
import io
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from contracts import run_folder
from models.heads import POOL_LAYER
from serving import exporter
from serving.config import ExportConfig
from tests import bench_scripts
from tests.shard_factory import write_shards
from training.config import TrainConfig
from training.loop import run_training

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "bench", "serve_bench.py")
SIZE = 32


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A one-model export of the test backbone, and four PNGs of several sizes and modes to send it."""
    root = tmp_path_factory.mktemp("serve_bench")
    data_dir = str(root / "shards")
    written = write_shards(data_dir, {"train": 16, "val": 8}, image_size=SIZE)
    run = str(root / "run")
    run_training(TrainConfig(backbone="tiny_test", data_dir=data_dir, weights="none", global_batch_size=8,
                             epochs=1, precision="float32", strategy="default", seed=0, model_dir=run))
    # One epoch leaves the outputs almost flat (their range was 5e-6 in one run, under the test's guard):
    # the head's batch norm standardised on the training images makes them depend on the pixels.
    path = os.path.join(run, run_folder.MODEL)
    model = keras.models.load_model(path)
    pixels = np.stack([np.repeat(r["pixels"][..., None], 3, -1) for r in written["train"]]).astype("float32")
    pooled = keras.Model(model.input, model.get_layer(POOL_LAYER).output)(pixels).numpy()
    gamma, beta, _, _ = model.get_layer("head_bn").get_weights()
    model.get_layer("head_bn").set_weights([gamma, beta, pooled.mean(0), pooled.var(0)])
    model.save(path)
    exporter.run_export(ExportConfig([run], str(root / "served")))
    rng = np.random.default_rng(0)
    for i, (shape, mode) in enumerate([((100, 100), "L"), ((90, 70, 3), "RGB"), ((40, 40), "L"),
                                       ((300, 300, 4), "RGBA")]):
        pixels = rng.integers(0, 256, shape, dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels, mode).save(buffer, "PNG")
        (root / f"image{i}.png").write_bytes(buffer.getvalue())
    return {"export_dir": str(root / "served"), "images": str(root / "image*.png")}


@pytest.fixture(scope="module")
def serve_bench():
    with bench_scripts.loaded("serve_bench") as module:  # its flags leave absl's FLAGS with this module
        yield module


def test_the_networks_row_gets_the_pixels_serving_default_decodes(served, serve_bench):
    serve, pixels_signature = serve_bench.load_signatures(served["export_dir"])
    with open(os.path.join(served["export_dir"], "export.json")) as f:
        info = json.load(f)
    decode = serve_bench.decoder(info["image_size"], info["max_image_pixels"])
    data = tf.constant([open(p, "rb").read() for p in sorted(glob.glob(served["images"]))])
    from_bytes = serve(image_bytes=data)
    from_pixels = pixels_signature(pixels=tf.constant(serve_bench.pixels_of(decode(data))))
    assert sorted(from_bytes) == sorted(from_pixels)
    assert np.ptp(from_bytes["p_abnormal"].numpy()) > 1e-5  # the outputs depend on the pixels
    for name, value in from_bytes.items():
        if name in ("implausible", "triage"):  # small test files: the bytes' size rule has no pixel twin
            continue
        np.testing.assert_allclose(from_pixels[name].numpy(), value.numpy(), rtol=1e-6, atol=1e-7, err_msg=name)


def test_machine_reads_the_cpu_model_and_avx512_from_cpuinfo(serve_bench):
    cpu = "processor\t: {}\nmodel name\t: Xeon X\nflags\t\t: fpu sse avx2 {}\n\n"
    assert serve_bench.machine(cpu.format(0, "avx512f avx512bw") + cpu.format(1, "avx512f avx512bw")) == {
        "cpu_model": "Xeon X", "cores": os.cpu_count(), "avx512": True}
    assert not serve_bench.machine(cpu.format(0, "avx512_bf16"))["avx512"]  # no foundation, no AVX-512


def test_one_run_prints_every_row_and_its_figures_add_up(served, tmp_path):
    out = tmp_path / "serve.json"
    done = subprocess.run([sys.executable, SCRIPT, f"--export_dir={served['export_dir']}",
                           f"--images={served['images']}", "--batch1_requests=3", "--batch64_batches=1",
                           "--rounds=2", "--warmup=1", f"--json_out={out}"],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    f = json.loads(out.read_text())
    rates = {}
    for row in ("decode", "networks", "end_to_end"):
        timed = f["timed"][row]
        assert timed["images"] == 2 * 1 * 64  # rounds x batches x 64
        rates[row] = timed["images"] / timed["seconds"]
        assert f[f"{row}_img_s"] == pytest.approx(rates[row])
    lower = min(("decode", "networks"), key=rates.get)
    assert f["lower_ceiling"] == lower and f["target_ratio"] == 0.7
    assert f["ratio"] == pytest.approx(rates["end_to_end"] / rates[lower])
    assert f["meets_target"] == (f["ratio"] >= 0.7)
    assert 0 < f["batch1_p50_ms"] <= f["batch1_p95_ms"] and f["images"] == 4
    with open("/proc/cpuinfo") as cpuinfo:
        text = cpuinfo.read()
    assert f["machine"]["cores"] == os.cpu_count() and f["machine"]["cpu_model"] in text
    assert f["machine"]["avx512"] == (" avx512f" in text)
    assert all(len(f["load_average"][k]) == 3 and min(f["load_average"][k]) >= 0 for k in ("before", "after"))
    assert f"end to end / {lower} {f['ratio']:.2f} (target 0.7)" in done.stdout
