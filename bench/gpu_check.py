"""The one GPU check a user runs once and sends back: the machine, then what this project does on it.

    bench/gpu_check.sh [--json_out=runs/gpu_check.json] [--smoke]

1. The machine: `nvidia-smi`, TensorFlow's version, build and visible devices. Without a GPU it
   stops with one line on stderr and exit status 1 (unless --smoke).
2. `bench/train_bench.py` on one GPU: every backbone at 224 px under mixed_float16, XLA off with
   both transfers (uint8 gray and float32 RGB to the device) and XLA on with uint8, each at the
   largest global batch of 256/128/64 that fits; pipeline-fed against in-memory images/s.
3. `bench/pipeline_bench.py` with all host cores on synthetic radiographs it generates itself.
4. `bench/predict_bench.py`: predict.py's batch prediction with one backbone, both transfers.
5. With N > 1 GPUs: the same training step under MirroredStrategy over all of them, and the scaling
   efficiency N-GPU img/s / (N x 1-GPU img/s).
Every part runs in its own process (device memory starts empty; a failed part does not stop the
others). One JSON holds everything (`--json_out`); a table prints the training figures beside
NVIDIA's published A100 TensorFlow figures for scale, and the last line names the file to attach
to an issue. `--smoke` runs the same parts on the CPU at 32 px with a few steps under
mixed_bfloat16 (XLA for one backbone, mirrored over two logical CPU devices): it checks the script,
its figures mean nothing.
The exit status is 1 when a part failed (its error is in the JSON).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from absl import app, flags  # noqa: E402

from contracts import cli  # noqa: E402
from contracts.atomic import write_json  # noqa: E402
from models import registry  # noqa: E402

DEFAULT_JSON = os.path.join(REPO, "runs", "gpu_check.json")
SCHEMA_VERSION = 1
# NVIDIA's published A100 TensorFlow training throughput (NVIDIA DeepLearningExamples performance
# tables), for scale only: other models, sizes and batch sizes than this project's rows.
NVIDIA_A100 = (
    {"model": "EfficientNet-B0", "setting": "AMP", "img_s": 3454, "near": "efficientnet_b3"},
    {"model": "EfficientNet-B4", "setting": "380 px, AMP", "img_s": 470, "near": "efficientnet_b3"},
    {"model": "ResNet-50", "setting": "AMP+XLA", "img_s": 2375, "near": "resnet50"},
)
RATIO_TARGET = 0.95  # pipeline-fed / in-memory: below it, the input held the step back

_SMOKE = flags.DEFINE_bool("smoke", False, "Check the script on a CPU: 32 px, a few steps, no GPU needed.")
_JSON_OUT = flags.DEFINE_string("json_out", DEFAULT_JSON, "Where the one JSON of every figure goes.")
_BACKBONES = flags.DEFINE_list("backbones", list(registry.BACKBONES),
                               "Backbones to time (registry names; the tests time the test backbone).")


@dataclasses.dataclass(frozen=True)
class Plan:
    """What each part runs: the GPU check, or its smoke version."""

    image_size: int
    batch_sizes: tuple[int, ...]  # largest first: each variant runs at the largest that fits
    precision: str
    train: tuple[str, ...]  # train_bench flags besides the variant's
    xla_all: bool  # every backbone also with XLA, or only the reference backbone
    pipeline: tuple[str, ...]
    predict: tuple[str, ...]
    logical_cpus: int  # > 1: mirror over logical CPU devices (smoke) instead of GPUs


GPU_PLAN = Plan(
    image_size=224, batch_sizes=(256, 128, 64), precision="mixed_float16",
    train=("--records=1024", "--steps=20", "--warmup=5", "--repeats=2", "--heads=binary"), xla_all=True,
    pipeline=("--num_images=4096", "--batch_size=256", "--seconds=8"),
    predict=("--records=4096", "--global_batch_size=256", "--repeats=2"), logical_cpus=1)
SMOKE_PLAN = Plan(  # mixed_bfloat16: a CPU's mixed precision (float16 is emulated there, and slow)
    image_size=32, batch_sizes=(16, 8), precision="mixed_bfloat16",
    train=("--records=32", "--steps=1", "--warmup=1", "--repeats=1", "--heads=binary"), xla_all=False,
    pipeline=("--num_images=32", "--batch_size=8", "--seconds=0.2", "--warmup=1", "--source_size=128"),
    predict=("--records=16", "--global_batch_size=8", "--repeats=1"), logical_cpus=2)
# Scaling, prediction and the smoke run's XLA use one backbone: ResNet50, whose NVIDIA figure is of the
# same model (and which compiles fastest); the first of --backbones when it is not among them.
REFERENCE_BACKBONE = "resnet50"


def _nvidia_smi() -> str | None:
    try:
        done = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        return None


def environment() -> dict:
    """The machine and TensorFlow as this process sees them (no op runs, no device memory is taken)."""
    import keras
    import tensorflow as tf

    build = tf.sysconfig.get_build_info()
    gpus = tf.config.list_physical_devices("GPU")
    return {
        "nvidia_smi": _nvidia_smi(), "tensorflow": tf.__version__, "keras": keras.__version__,
        "python": platform.python_version(), "built_with_cuda": tf.test.is_built_with_cuda(),
        "cuda_build": build.get("cuda_version"), "cudnn_build": build.get("cudnn_version"),
        "devices": [d.name for d in tf.config.list_physical_devices()],
        "gpus": [tf.config.experimental.get_device_details(g) for g in gpus],
        "cpu": _cpu_model(), "cpu_count": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }


def no_gpu_line(env: dict) -> str:
    """The one line that says why the check cannot run."""
    why = ("nvidia-smi works, so this TensorFlow cannot use the GPU: install it with its CUDA libraries "
           "(make install GPU=1, or pip install -e '.[gpu]')" if env["nvidia_smi"] else
           "nvidia-smi did not run: no NVIDIA driver on this machine")
    return (f"gpu_check: TensorFlow {env['tensorflow']} sees no GPU ({why}); nothing was measured. "
            "bench/gpu_check.sh --smoke checks the script itself on a CPU.")


class Runner:
    """Runs the parts in child processes; keeps their JSON and their failures."""

    def __init__(self, scratch: str, single_device_env: dict[str, str]):
        self.scratch, self.single_env, self.failures, self.seconds = scratch, single_device_env, [], {}

    def run(self, name: str, script: str, args: list[str], env: dict[str, str] | None = None) -> dict | None:
        """Runs `bench/<script> <args> --json_out=...`; returns its JSON, or None when it failed."""
        out = os.path.join(self.scratch, f"{name}.json")
        print(f"\n== {name}", flush=True)
        start = time.perf_counter()
        with open(os.path.join(self.scratch, f"{name}.stderr"), "w+") as err:
            done = subprocess.run([sys.executable, os.path.join(REPO, "bench", script), *args, f"--json_out={out}"],
                                  cwd=REPO, env={**os.environ, **(self.single_env if env is None else env)},
                                  stderr=err)
            err.seek(0)
            tail = err.read().splitlines()[-25:]
        self.seconds[name] = round(time.perf_counter() - start, 1)
        if done.returncode != 0 or not os.path.exists(out):
            self.failures.append({"part": name, "exit_status": done.returncode, "stderr_tail": tail})
            print(f"{name} FAILED (exit status {done.returncode}):\n" + "\n".join(tail[-8:]), flush=True)
            return None
        with open(out) as f:
            return json.load(f)


def _variants(results: dict | None) -> list[dict]:
    return [v for entry in (results or {}).values() for v in entry["variants"]]


def reference_backbone(backbones: list[str]) -> str:
    return REFERENCE_BACKBONE if REFERENCE_BACKBONE in backbones else backbones[0]


def run_training(runner: Runner, plan: Plan, backbones: list[str]) -> dict[str, list[dict]]:
    """train_bench per backbone: XLA off with both transfers, then XLA on with uint8 (from the batch
    that fitted). Returns backbone -> its variants."""
    common = [f"--image_size={plan.image_size}", f"--precisions={plan.precision}", "--strategy=default",
              *plan.train]
    train = {}
    for backbone in backbones:
        sizes = list(plan.batch_sizes)
        result = runner.run(f"train-{backbone}", "train_bench.py", [
            *common, f"--backbones={backbone}", "--jit=off", "--transfers=uint8,float32",
            f"--global_batch_size={','.join(map(str, sizes))}"])
        train[backbone] = _variants(result)
        fitted = [v["global_batch_size"] for v in train[backbone] if "global_batch_size" in v]
        if plan.xla_all or backbone == reference_backbone(backbones):
            sizes = [s for s in sizes if not fitted or s <= min(fitted)]
            result = runner.run(f"train-{backbone}-xla", "train_bench.py", [
                *common, f"--backbones={backbone}", "--jit=on", "--transfers=uint8",
                f"--global_batch_size={','.join(map(str, sizes))}"])
            train[backbone] += _variants(result)
    return train


def _uint8_no_xla(variants: list[dict]) -> dict | None:
    return next((v for v in variants if v["transfer"] == "uint8" and not v["jit_compile"] and "error" not in v),
                None)


def run_scaling(runner: Runner, plan: Plan, train: dict[str, list[dict]], replicas: int) -> dict | None:
    """MirroredStrategy over every GPU (or logical CPU device) against the one-device run."""
    backbone = reference_backbone(list(train))
    single = _uint8_no_xla(train[backbone])
    if single is None:
        return {"backbone": backbone, "replicas": replicas,
                "error": "not run: the one-device run (XLA off, uint8) has no figure to compare with"}
    batch = replicas * single["global_batch_size"]  # the same batch per replica as on one device
    result = runner.run("scaling", "train_bench.py", [
        f"--image_size={plan.image_size}", f"--precisions={plan.precision}", "--strategy=mirrored",
        f"--logical_cpus={plan.logical_cpus}", *plan.train, f"--backbones={backbone}", "--jit=off",
        "--transfers=uint8", f"--global_batch_size={batch}"], env={})
    multi = next(iter(_variants(result)), None)
    if multi is None or "error" in multi:
        return {"backbone": backbone, "replicas": replicas, "error": (multi or {}).get("error", "failed")}
    return {"backbone": backbone, "replicas": multi["replicas"], "global_batch_size": batch,
            "one_device": single, "all_devices": multi,
            "efficiency": multi["pipeline_img_s"] / (multi["replicas"] * single["pipeline_img_s"]),
            "in_memory_efficiency": multi["in_memory_img_s"] / (multi["replicas"] * single["in_memory_img_s"])}


def _row(backbone: str, v: dict) -> str:
    head = f"{backbone:16s} {'on' if v['jit_compile'] else 'off':4s} {v['transfer']:8s}"
    if "error" in v:
        return f"{head} {v['error']}"
    flag = " !" if v["ratio"] < RATIO_TARGET else "  "
    return (f"{head} {v['global_batch_size']:5d} {v['in_memory_img_s']:11,.1f} {v['pipeline_img_s']:11,.1f} "
            f"{v['ratio']:6.3f}{flag}")


def print_table(report: dict) -> None:
    """The training rows beside NVIDIA's figures, then transfer, input, prediction and scaling."""
    env, plan = report["environment"], report["plan"]
    gpus = ", ".join(g.get("device_name", "GPU") for g in env["gpus"]) or "no GPU"
    print(f"\n{'SMOKE RUN on the CPU: checks the code paths, the figures mean nothing. ' if report['smoke'] else ''}"
          f"{gpus}; TensorFlow {env['tensorflow']}; {plan['image_size']} px, {plan['precision']}")
    print(f"{'backbone':16s} {'XLA':4s} {'transfer':8s} {'batch':>5s} {'in-memory':>11s} {'pipeline':>11s} "
          f"{'ratio':>6s}    NVIDIA A100, published (img/s, for scale)")
    for backbone, variants in report["train"].items():
        nvidia = "; ".join(f"{n['model']} {n['setting']} {n['img_s']:,}" for n in NVIDIA_A100 if n["near"] == backbone)
        for index, v in enumerate(variants):
            print(_row(backbone, v) + ("  " + nvidia if index == 0 and nvidia else ""))
    print(f"img/s; ratio = pipeline-fed / in-memory, ! below {RATIO_TARGET} (the input held the step back)")
    print("NVIDIA's published A100 TensorFlow training figures, other models and sizes, for scale: "
          + "; ".join(f"{n['model']} {n['setting']} {n['img_s']:,} img/s" for n in NVIDIA_A100))
    for backbone, variants in report["train"].items():
        by = {v["transfer"]: v for v in variants if not v["jit_compile"] and "error" not in v}
        if {"uint8", "float32"} <= set(by):
            u, f = by["uint8"], by["float32"]
            print(f"transfer {backbone}: uint8 / float32 pipeline-fed {u['pipeline_img_s'] / f['pipeline_img_s']:.3f}x; "
                  f"{u['bytes_per_batch']:,} against {f['bytes_per_batch']:,} bytes per batch")
    _print_parts(report)


def _rate(img_s: float | None) -> str:
    return "n/a" if img_s is None else f"{img_s:,.1f}"


def _print_parts(report: dict) -> None:
    p, pred, s = report["pipeline"], report["predict"], report["scaling"]
    if p:
        print(f"input pipeline, {p['cores']} cores, {p['image_size']} px, batch {p['batch_size']}: "
              f"{p['pipeline_img_s']:,.0f} img/s float32, {p['pipeline_uint8_gray_img_s']:,.0f} img/s uint8 "
              f"(decode-only {p['decode_only_img_s']:,.0f}; the reference's Sequence {p['seed_style_img_s']:,.0f})")
    if pred:
        rates = ", ".join(f"{t} {_rate(f['img_s'])} img/s ({f['pass_img_s']:,.1f} over a whole pass of "
                          f"{pred['records']:,})" for t, f in pred["transfers"].items())
        print(f"predict {pred['backbone']} {pred['precision']}, batch {pred['batch_size']}: {rates}")
    if s and "error" not in s:
        print(f"scaling {s['backbone']} over {s['replicas']} devices: {s['all_devices']['pipeline_img_s']:,.1f} "
              f"against {s['one_device']['pipeline_img_s']:,.1f} img/s on one: efficiency {s['efficiency']:.3f}")
    elif s:
        print(f"scaling {s['backbone']} over {s['replicas']} devices: {s['error']}")


def _single_device_env(gpu_count: int) -> dict[str, str]:
    # Single-device parts see only the first GPU, so that auto strategies and the bench's figures are
    # one GPU's even on a many-GPU machine.
    if gpu_count == 0:
        return {}
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    return {"CUDA_VISIBLE_DEVICES": visible.split(",")[0] if visible.strip() else "0"}


def _check_backbones(names: list[str]) -> None:
    if not names:
        sys.exit("gpu_check: --backbones is empty; name at least one, e.g. resnet50")
    for name in names:
        try:
            registry.get_backbone(name)
        except ValueError as error:
            sys.exit(f"gpu_check: --backbones: {error}")


def main(argv: list[str]) -> None:
    del argv
    start = time.perf_counter()
    _check_backbones(_BACKBONES.value)
    # TensorFlow's start-up INFO lines off, as in every tool (the parts inherit it); errors stay.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if flags.FLAGS["verbosity"].value > 0 else cli.QUIET_TF_LOG_LEVEL)
    env = environment()
    print(env["nvidia_smi"] or "nvidia-smi: not found or failed")
    print(f"TensorFlow {env['tensorflow']} (Keras {env['keras']}), built with CUDA {env['cuda_build']} / "
          f"cuDNN {env['cudnn_build']}; devices: {', '.join(env['devices'])}")
    if not env["gpus"] and not _SMOKE.value:
        sys.exit(no_gpu_line(env))
    plan = SMOKE_PLAN if _SMOKE.value else GPU_PLAN
    replicas = plan.logical_cpus if _SMOKE.value else len(env["gpus"])
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as scratch:
        runner = Runner(scratch, _single_device_env(len(env["gpus"])))
        train = run_training(runner, plan, _BACKBONES.value)
        scaling = run_scaling(runner, plan, train, replicas) if replicas > 1 else None
        pipeline = runner.run("pipeline", "pipeline_bench.py", [
            "--nih_dir=", f"--image_size={plan.image_size}", *plan.pipeline])
        predict = runner.run("predict", "predict_bench.py", [
            f"--backbone={reference_backbone(_BACKBONES.value)}", f"--image_size={plan.image_size}", f"--precision={plan.precision}",
            "--transfers=uint8,float32", "--strategy=default", *plan.predict])
    report = {"schema_version": SCHEMA_VERSION, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
              "smoke": _SMOKE.value, "environment": env, "plan": dataclasses.asdict(plan), "train": train,
              "scaling": scaling, "pipeline": pipeline, "predict": predict, "nvidia_a100": list(NVIDIA_A100),
              "failures": runner.failures, "seconds": {**runner.seconds, "total": time.perf_counter() - start}}
    os.makedirs(os.path.dirname(os.path.abspath(_JSON_OUT.value)), exist_ok=True)
    write_json(_JSON_OUT.value, report)
    print_table(report)
    print(f"\n{len(runner.failures)} part(s) failed." if runner.failures else "")
    print(f"Attach {os.path.abspath(_JSON_OUT.value)} to an issue: it holds every figure above and this "
          f"machine's GPUs, driver and TensorFlow build ({report['seconds']['total']:.0f} s).")
    if runner.failures:
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
