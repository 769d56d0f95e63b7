"""Training-step throughput per backbone, fed by the real input pipeline and by one batch in memory.

    .venv/bin/python bench/train_bench.py [--data_dir=SHARDS] [--image_size=64] \
        [--backbones=efficientnet_b3,resnet50,densenet121] [--global_batch_size=16 | =256,128,64] \
        [--precisions=auto,float32,mixed] [--jit=off,on] [--transfers=auto | =uint8,float32] \
        [--heads=both | =binary | =findings] [--steps=10] [--repeats=3] [--strategy=auto] \
        [--logical_cpus=1] [--json_out=FILE]

For each backbone, each (precision, XLA, transfer) variant and each head (the binary classifier
alone, and with the findings head: train.py's --findings_weight > 0), on the same device and strategy:
  in_memory_img_s   the step fed one constant batch (the compute's own ceiling)
  pipeline_img_s    the same step fed by `make_train_dataset` over the shards
  input_only_img_s  the input pipeline alone, no step (what it can deliver)
  ratio             pipeline / in_memory; the target is >= 0.95 (input never the bottleneck)
  cpu_s_per_image   process CPU seconds per image in each mode: on a small CPU machine the pipeline
                    and the step share the same cores, and this shows how much the decode takes
                    from the step.
  cpu_ratio         in-memory / pipeline CPU seconds per image: the ratio a CPU-bound machine would
                    reach if nothing else ran on it (wall-clock timings on a shared machine are not).
  bytes_per_batch   bytes of one global batch of images as the pipeline hands it over: uint8 gray
                    (train.py --transfer=uint8, cast to float32 RGB by the model's front on the
                    device) or float32 RGB (--transfer=float32), 12x more.
  step_ratio        on the findings row with --heads=both: findings / binary step time, in memory
                    (pipeline_step_ratio: pipeline-fed), the median over --repeats of timings taken
                    in turn (binary, findings, findings, binary, ...), so that other work on a shared
                    machine slows both alike; the target is <= 1.05. *_spread: the lowest and highest
                    of them. step_cpu_ratio: the same by process CPU seconds, which other work on the
                    machine disturbs less.
"mixed" is mixed_float16 on a GPU and mixed_bfloat16 on a CPU. With several --global_batch_size
values, largest first, a variant runs at the largest one that fits in device memory (an
out-of-memory error steps down to the next; later variants of the backbone start from the one that
fitted); a variant that fits none is reported with its error. Without --data_dir, synthetic shards
(tests/shard_factory.py, the real record format) are written to a temporary folder. The top-level
JSON keys are the backbones; each holds the first variant's figures (the default training
precision, XLA off, the binary head) and a "variants" list with all of them.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402

import models  # noqa: E402
from contracts import manifest as manifest_lib  # noqa: E402
from contracts.atomic import write_json  # noqa: E402
from contracts.labels import FINDINGS  # noqa: E402
from models import distribute  # noqa: E402
from pipeline import input_pipeline, options  # noqa: E402
from training import step as step_lib  # noqa: E402
from training.config import TrainConfig  # noqa: E402

BINARY, WITH_FINDINGS = "binary", "findings"
HEADS = {BINARY: (BINARY,), WITH_FINDINGS: (WITH_FINDINGS,), "both": (BINARY, WITH_FINDINGS)}
# NIH's Data_Entry_2017: 0.72 findings per image; the constant batch draws each finding at this rate.
FINDING_RATE = 0.72 / len(FINDINGS)

_DATA_DIR = flags.DEFINE_string("data_dir", None,
                                "Shard folder; default: synthetic shards in a temporary folder.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 64, "Side of the synthetic shards (ignored with --data_dir).")
_RECORDS = flags.DEFINE_integer("records", 512, "Train records in the synthetic shards.")
_BACKBONES = flags.DEFINE_list("backbones", list(models.BACKBONES), "Backbones to time.")
_BATCH = flags.DEFINE_list("global_batch_size", ["16"],
                           "Images per step over all replicas; several, largest first: the largest "
                           "that fits in device memory (see above).")
_PRECISIONS = flags.DEFINE_list("precisions", ["auto", "float32", "mixed"],
                                "float32 | mixed_float16 | mixed_bfloat16 | auto | mixed (see above); "
                                "names that resolve to the same policy are timed once.")
_JIT = flags.DEFINE_list("jit", ["off", "on"], "XLA settings to time: off, on.")
_TRANSFERS = flags.DEFINE_list("transfers", ["auto"],
                               f"train.py's --transfer values to time: {', '.join(options.TRANSFERS)}; "
                               "names that resolve to the same transfer are timed once.")
_HEADS = flags.DEFINE_enum("heads", "both", list(HEADS),
                            "binary: the classifier alone; findings: with the findings head and its loss; "
                            "both: each, timed in turn, and their step-time ratio.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per measurement (after --warmup).")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps first (tracing, XLA compilation, autotune).")
_REPEATS = flags.DEFINE_integer("repeats", 3,
                                "Timings per mode and head, in turn; the best counts for img/s (on a "
                                "shared machine, other work only ever slows a timing down), the median "
                                "for step_ratio.")
_STRATEGY = flags.DEFINE_enum("strategy", "auto", list(distribute.STRATEGIES), "As train.py's --strategy.")
_LOGICAL_CPUS = flags.DEFINE_integer("logical_cpus", 1,
                                     "Split the CPU into this many logical devices first, so that "
                                     "--strategy=mirrored mirrors over them without a GPU (the "
                                     "multi-GPU path of bench/gpu_check.py --smoke).", lower_bound=1)
_JSON_OUT = flags.DEFINE_string("json_out", None, "Write the figures here as JSON (atomically).")

# How out-of-memory shows besides ResourceExhaustedError (cuDNN workspaces, copies to the device).
OUT_OF_MEMORY_MARKS = ("out of memory", "dst tensor is not initialized", "failed to allocate",
                       "cudnn_status_alloc_failed")


class NothingFits(Exception):
    """Every global batch size ran out of device memory."""


def is_out_of_memory(error: Exception) -> bool:
    """Whether a TensorFlow error says the device ran out of memory."""
    if isinstance(error, tf.errors.ResourceExhaustedError):
        return True
    return isinstance(error, tf.errors.OpError) and any(m in str(error).lower() for m in OUT_OF_MEMORY_MARKS)


def largest_fitting(run, sizes: list[int]) -> tuple[int, dict, list[int]]:
    """Calls `run(size)` for `sizes` in order (largest first) until one does not run out of memory.

    Returns:
      (the size that ran, what `run` returned, the sizes that ran out of memory before it).

    Raises:
      NothingFits: every size ran out of memory.
      Any other error of `run` as it is.
    """
    too_big = []
    for size in sizes:
        try:
            return size, run(size), too_big
        except tf.errors.OpError as error:
            if not is_out_of_memory(error):
                raise
            logging.warning("global batch %d does not fit in device memory: %s", size,
                            str(error).strip().splitlines()[0][:200])
            too_big.append(size)
            keras.backend.clear_session(free_memory=True)
    raise NothingFits(f"out of device memory at every global batch size ({', '.join(map(str, sizes))})")


def _resolved(names: list[str], resolve) -> list[str]:
    resolved = []
    for name in names:
        name = resolve(name)
        if name not in resolved:
            resolved.append(name)
    return resolved


def _precision_name(name: str) -> str:
    gpu = bool(tf.config.list_physical_devices("GPU"))
    if name == "mixed":
        return "mixed_float16" if gpu else "mixed_bfloat16"
    if name == "auto":
        return "mixed_float16" if gpu else "float32"
    return name


def _synthetic_shards(folder: str, image_size: int, records: int) -> str:
    from tests.shard_factory import write_shards

    write_shards(folder, {"train": records}, image_size=image_size, shards_per_split=8)
    return folder


def _timed(step, iterator, steps: int, batch: int) -> dict[str, float]:
    start, cpu = time.perf_counter(), time.process_time()
    result = None
    for _ in range(steps):
        result = step(iterator)
    # Reading the last loss waits for every queued step (they share the model's variables).
    float(result[0] if isinstance(result, tuple) else result)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"img_s": steps * batch / elapsed, "cpu_s_per_image": cpu / (steps * batch)}


def _input_only(strategy, dataset, steps: int, batch: int) -> dict[str, float]:
    iterator = iter(dataset)

    @tf.function
    def pull(it):
        return tf.reduce_sum(strategy.experimental_local_results(next(it)["label"])[0])

    for _ in range(_WARMUP.value):
        pull(iterator)
    return _timed(pull, iterator, steps, batch)


def _with_known_findings(batch: dict[str, tf.Tensor], seed: int = 0) -> dict[str, tf.Tensor]:
    # The synthetic shards' findings are unknown (masked out of the loss); the constant batch gets
    # NIH-like ones, all known, as a Data_Entry CSV gives them (the step costs the same either way).
    size = int(batch["label"].shape[0])
    findings = np.random.default_rng(seed).random((size, len(FINDINGS))) < FINDING_RATE
    return {**batch, "findings": tf.constant(findings, tf.int32), "findings_known": tf.ones([size], tf.int32)}


def _inputs(strategy, data_dir: str, batch: int, image_size: int, uint8: bool):
    """Returns (pipeline-fed, in-memory) distributed datasets and the bytes of one global batch."""
    shards, stream = manifest_lib.ShardFolder.open(data_dir), input_pipeline.StreamOptions(uint8_gray=uint8)
    pipeline = strategy.distribute_datasets_from_function(
        lambda context: input_pipeline.make_train_dataset(
            shards, "train", batch, stream, input_context=context).map(step_lib.without_ids))
    constant = _with_known_findings(step_lib.without_ids(next(iter(input_pipeline.make_train_dataset(
        shards, "train", batch, stream)))))
    in_memory = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensors(constant).repeat())
    images = constant["image"]
    return pipeline, in_memory, int(tf.size(images)) * images.dtype.size


def _findings_loss() -> step_lib.FindingsLoss:
    # train.py's defaults. NIH's prevalences put 11 of the 14 positive weights at the cap; their
    # values do not change the step's cost.
    defaults = {field.name: field.default for field in dataclasses.fields(TrainConfig)}
    return step_lib.FindingsLoss(defaults["findings_weight"],
                                 (defaults["finding_pos_weight_cap"],) * len(FINDINGS))


def _make_step(strategy, backbone: str, head: str, image_size: int, precision: str, **step_args):
    """(the training step of `backbone` with `head`, its trainable parameter count)."""
    spec, findings = models.get_backbone(backbone), head == WITH_FINDINGS
    with strategy.scope():
        model = models.build_model(backbone, image_size, weights="none", findings=findings)
        optimizer = step_lib.make_optimizer(spec.optimizer, spec.learning_rate, precision)
        optimizer.build(model.trainable_variables)
    step = step_lib.make_train_step(strategy, model, optimizer, findings=_findings_loss() if findings else None,
                                    **step_args)
    return step, sum(int(np.prod(v.shape)) for v in model.trainable_variables)


def step_ratios(binary: list[dict], findings: list[dict]) -> dict[str, float | list[float]]:
    """Findings / binary step time from timings taken in turn, by wall clock ("step_ratio") and by
    process CPU time ("step_cpu_ratio"): the median of the pairs, and their lowest and highest ("*_spread")."""
    pairs = list(zip(binary, findings, strict=True))
    ratios = {"step_ratio": [b["img_s"] / f["img_s"] for b, f in pairs],
              "step_cpu_ratio": [f["cpu_s_per_image"] / b["cpu_s_per_image"] for b, f in pairs]}
    figures = {}
    for name, values in ratios.items():
        figures[name], figures[f"{name}_spread"] = float(np.median(values)), [min(values), max(values)]
    return figures


def _figures(common: dict, runs: dict[str, list[dict]], input_only: dict[str, float]) -> dict:
    figures = dict(common)
    for name, timings in runs.items():
        best = max(timings, key=lambda t: t["img_s"])  # other work only ever slows a timing down
        figures[f"{name}_img_s"] = best["img_s"]
        figures[f"{name}_cpu_s_per_image"] = best["cpu_s_per_image"]
        figures[f"{name}_img_s_runs"] = [t["img_s"] for t in timings]
        figures[f"{name}_cpu_s_per_image_runs"] = [t["cpu_s_per_image"] for t in timings]
    figures["input_only_img_s"] = input_only["img_s"]
    figures["input_only_cpu_s_per_image"] = input_only["cpu_s_per_image"]
    figures["ratio"] = figures["pipeline_img_s"] / figures["in_memory_img_s"]
    figures["cpu_ratio"] = figures["in_memory_cpu_s_per_image"] / figures["pipeline_cpu_s_per_image"]
    return figures


def _variant(strategy, backbone: str, precision: str, jit: bool, transfer: str, data_dir: str,
             image_size: int, batch: int) -> list[dict]:
    """One figures dict per head of --heads, timed in turn on the same inputs."""
    precision = distribute.resolve_precision(precision)
    steps, uint8, heads = _STEPS.value, transfer == options.UINT8, HEADS[_HEADS.value]
    made = {head: _make_step(strategy, backbone, head, image_size, precision, global_batch_size=batch,
                             jit_compile=jit, uint8_input=uint8) for head in heads}
    pipeline, in_memory, batch_bytes = _inputs(strategy, data_dir, batch, image_size, uint8)
    common = {"precision": precision, "jit_compile": jit, "transfer": transfer, "image_size": image_size,
              "global_batch_size": batch, "bytes_per_batch": batch_bytes,
              "replicas": strategy.num_replicas_in_sync}
    iterators = {"in_memory": iter(in_memory), "pipeline": iter(pipeline)}  # both heads read them
    for step, _ in made.values():
        for iterator in iterators.values():
            for _ in range(_WARMUP.value):
                step(iterator)
    timings = {(head, mode): [] for head in heads for mode in iterators}
    for repeat in range(_REPEATS.value):
        for mode, iterator in iterators.items():
            # In turn, first one head then the other first (A B B A ...): drift in the machine's
            # load, and whatever the first timing after a switch pays, falls on both alike.
            for head in heads[::-1] if repeat % 2 else heads:
                timings[head, mode].append(_timed(made[head][0], iterator, steps, batch))
    input_only = _input_only(strategy, pipeline, steps * 4, batch)
    rows = [_figures({**common, "head": head, "trainable_parameters": made[head][1]},
                     {mode: timings[head, mode] for mode in iterators}, input_only) for head in heads]
    if len(heads) == 2:
        for mode, prefix in (("in_memory", ""), ("pipeline", "pipeline_")):
            ratios = step_ratios(timings[BINARY, mode], timings[WITH_FINDINGS, mode])
            rows[1].update({prefix + name: value for name, value in ratios.items()})
    keras.backend.clear_session(free_memory=True)
    return rows


def _backbone(strategy, backbone: str, data_dir: str, image_size: int) -> list[dict]:
    """Times every variant of one backbone, each at the largest global batch that fits."""
    sizes = sorted({int(b) for b in _BATCH.value}, reverse=True)
    variants = []
    for precision in _resolved(_PRECISIONS.value, _precision_name):
        for jit in [j == "on" for j in _JIT.value]:
            for transfer in _resolved(_TRANSFERS.value, distribute.resolve_transfer):
                run = functools.partial(_variant, strategy, backbone, precision, jit, transfer, data_dir,
                                        image_size)
                try:
                    batch, rows, too_big = largest_fitting(run, sizes)
                except NothingFits as error:
                    variants.append({"precision": precision, "jit_compile": jit, "head": _HEADS.value,
                                     "transfer": transfer, "image_size": image_size, "error": str(error)})
                    continue
                variants += [{**figures, "out_of_memory_at": too_big} for figures in rows]
                sizes = [s for s in sizes if s <= batch]  # a later variant never needs a larger batch
    return variants


def _ratio_text(v: dict) -> str:
    if "step_ratio" not in v:
        return ""
    text = "  findings/binary step time, median of " + str(len(v["in_memory_img_s_runs"]))
    for prefix, mode in (("", "in memory"), ("pipeline_", "pipeline-fed")):
        (low, high), (cpu_low, cpu_high) = v[f"{prefix}step_ratio_spread"], v[f"{prefix}step_cpu_ratio_spread"]
        text += (f"; {mode} {v[f'{prefix}step_ratio']:.3f} ({low:.3f}-{high:.3f}), "
                 f"cpu {v[f'{prefix}step_cpu_ratio']:.3f} ({cpu_low:.3f}-{cpu_high:.3f})")
    return text


def _report(results: dict) -> None:
    for backbone, entry in results.items():
        for v in entry["variants"]:
            head = (f"{backbone:16s} {v['precision']:15s} xla={'on ' if v['jit_compile'] else 'off'} "
                    f"{v['transfer']:7s} {v['head']:8s}")
            if "error" in v:
                print(f"{head} {v['error']}")
                continue
            print(f"{head} batch {v['global_batch_size']:4d} ({v['bytes_per_batch']:,} bytes)  "
                  f"in_memory {v['in_memory_img_s']:8.1f} img/s  pipeline {v['pipeline_img_s']:8.1f} img/s  "
                  f"ratio {v['ratio']:.3f} (cpu {v['cpu_ratio']:.3f})  input_only {v['input_only_img_s']:8.1f} img/s  "
                  f"cpu ms/img {1000 * v['in_memory_cpu_s_per_image']:.1f} / "
                  f"{1000 * v['pipeline_cpu_s_per_image']:.1f} / {1000 * v['input_only_cpu_s_per_image']:.1f}"
                  + _ratio_text(v))


def _split_cpu(count: int) -> None:
    if count > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)


def main(argv: list[str]) -> None:
    del argv
    _split_cpu(_LOGICAL_CPUS.value)
    strategy = distribute.resolve_strategy(_STRATEGY.value)
    with tempfile.TemporaryDirectory() as scratch:
        data_dir = _DATA_DIR.value or _synthetic_shards(scratch, _IMAGE_SIZE.value, _RECORDS.value)
        image_size = manifest_lib.ShardFolder.open(data_dir).image_size
        logging.info("devices: %s; %d replica(s)", tf.config.list_logical_devices(),
                     strategy.num_replicas_in_sync)
        results = {}
        for backbone in _BACKBONES.value:
            variants = _backbone(strategy, backbone, data_dir, image_size)
            results[backbone] = {**variants[0], "variants": variants}
            _report({backbone: results[backbone]})
    if _JSON_OUT.value:
        write_json(_JSON_OUT.value, results)


if __name__ == "__main__":
    app.run(main)
