"""Training-step throughput per backbone, fed by the real input pipeline and by one batch in memory.

    .venv/bin/python bench/train_bench.py [--data_dir=SHARDS] [--image_size=64] \
        [--backbones=efficientnet_b3,resnet50,densenet121] [--global_batch_size=16] \
        [--precisions=auto,float32,mixed] [--jit=off,on] [--steps=10] [--repeats=3] [--json_out=FILE]

For each backbone and each (precision, XLA) variant, on the same device and strategy:
  in_memory_img_s   the step fed one constant batch (the compute's own ceiling)
  pipeline_img_s    the same step fed by `make_train_dataset` over the shards
  input_only_img_s  the input pipeline alone, no step (what it can deliver)
  ratio             pipeline / in_memory; the target is >= 0.95 (input never the bottleneck)
  cpu_s_per_image   process CPU seconds per image in each mode: on a small CPU machine the pipeline
                    and the step share the same cores, and this shows how much the decode takes
                    from the step.
  cpu_ratio         in-memory / pipeline CPU seconds per image: the ratio a CPU-bound machine would
                    reach if nothing else ran on it (wall-clock timings on a shared machine are not).
"mixed" is mixed_float16 on a GPU and mixed_bfloat16 on a CPU. Without --data_dir, synthetic shards
(tests/shard_factory.py, the real record format) are written to a temporary folder. The top-level
JSON keys are the backbones; each holds the first variant's figures (the default training
precision, XLA off) and a "variants" list with all of them.
"""

from __future__ import annotations

import json
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
from pipeline import input_pipeline  # noqa: E402
from training import distribute  # noqa: E402
from training import step as step_lib  # noqa: E402

_DATA_DIR = flags.DEFINE_string("data_dir", None,
                                "Shard folder; default: synthetic shards in a temporary folder.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 64, "Side of the synthetic shards (ignored with --data_dir).")
_RECORDS = flags.DEFINE_integer("records", 512, "Train records in the synthetic shards.")
_BACKBONES = flags.DEFINE_list("backbones", list(models.BACKBONES), "Backbones to time.")
_BATCH = flags.DEFINE_integer("global_batch_size", 16, "Images per step.")
_PRECISIONS = flags.DEFINE_list("precisions", ["auto", "float32", "mixed"],
                                "float32 | mixed_float16 | mixed_bfloat16 | auto | mixed (see above); "
                                "names that resolve to the same policy are timed once.")
_JIT = flags.DEFINE_list("jit", ["off", "on"], "XLA settings to time: off, on.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per measurement (after --warmup).")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps first (tracing, XLA compilation, autotune).")
_REPEATS = flags.DEFINE_integer("repeats", 3,
                                "Timings per mode, in-memory and pipeline alternating; the best counts "
                                "(on a shared machine, other work only ever slows a timing down).")
_STRATEGY = flags.DEFINE_enum("strategy", "auto", list(distribute.STRATEGIES), "As train.py's --strategy.")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Write the figures here as JSON.")


def _precisions(names: list[str]) -> list[str]:
    gpu = bool(tf.config.list_physical_devices("GPU"))
    resolved = []
    for name in names:
        if name == "mixed":
            name = "mixed_float16" if gpu else "mixed_bfloat16"
        elif name == "auto":
            name = "mixed_float16" if gpu else "float32"
        if name not in resolved:
            resolved.append(name)
    return resolved


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


def _variant(strategy, backbone: str, precision: str, jit: bool, data_dir: str,
             image_size: int) -> dict:
    precision = distribute.resolve_precision(precision)
    batch, steps = _BATCH.value, _STEPS.value
    spec = models.get_backbone(backbone)
    with strategy.scope():
        model = models.build_model(backbone, image_size, weights="none")
        optimizer = step_lib.make_optimizer(spec.optimizer, spec.learning_rate, precision)
        optimizer.build(model.trainable_variables)
    step = step_lib.make_train_step(strategy, model, optimizer, global_batch_size=batch, jit_compile=jit)
    pipeline = strategy.distribute_datasets_from_function(
        lambda context: input_pipeline.make_train_dataset(
            data_dir, "train", batch, image_size, input_context=context).map(step_lib.without_ids))
    constant = step_lib.without_ids(next(iter(input_pipeline.make_train_dataset(
        data_dir, "train", batch, image_size))))
    in_memory = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensors(constant).repeat())
    figures = {"precision": precision, "jit_compile": jit, "image_size": image_size,
               "global_batch_size": batch}
    iterators = {"in_memory": iter(in_memory), "pipeline": iter(pipeline)}
    for iterator in iterators.values():
        for _ in range(_WARMUP.value):
            step(iterator)
    timings = {name: [] for name in iterators}
    for _ in range(_REPEATS.value):
        for name, iterator in iterators.items():
            timings[name].append(_timed(step, iterator, steps, batch))
    for name, runs in timings.items():
        best = max(runs, key=lambda t: t["img_s"])
        figures[f"{name}_img_s"] = best["img_s"]
        figures[f"{name}_cpu_s_per_image"] = best["cpu_s_per_image"]
    timing = _input_only(strategy, pipeline, steps * 4, batch)
    figures["input_only_img_s"] = timing["img_s"]
    figures["input_only_cpu_s_per_image"] = timing["cpu_s_per_image"]
    figures["ratio"] = figures["pipeline_img_s"] / figures["in_memory_img_s"]
    figures["cpu_ratio"] = figures["in_memory_cpu_s_per_image"] / figures["pipeline_cpu_s_per_image"]
    keras.backend.clear_session(free_memory=True)
    return figures


def _report(results: dict) -> None:
    for backbone, entry in results.items():
        for v in entry["variants"]:
            print(f"{backbone:16s} {v['precision']:15s} xla={'on ' if v['jit_compile'] else 'off'} "
                  f"in_memory {v['in_memory_img_s']:8.1f} img/s  pipeline {v['pipeline_img_s']:8.1f} img/s  "
                  f"ratio {v['ratio']:.3f} (cpu {v['cpu_ratio']:.3f})  input_only {v['input_only_img_s']:8.1f} img/s  "
                  f"cpu ms/img {1000 * v['in_memory_cpu_s_per_image']:.1f} / "
                  f"{1000 * v['pipeline_cpu_s_per_image']:.1f} / {1000 * v['input_only_cpu_s_per_image']:.1f}")


def main(argv: list[str]) -> None:
    del argv
    strategy = distribute.resolve_strategy(_STRATEGY.value)
    with tempfile.TemporaryDirectory() as scratch:
        data_dir = _DATA_DIR.value or _synthetic_shards(scratch, _IMAGE_SIZE.value, _RECORDS.value)
        image_size = int(manifest_lib.load_manifest(data_dir)["config"]["image_size"])
        logging.info("devices: %s; %d replica(s)", tf.config.list_logical_devices(),
                     strategy.num_replicas_in_sync)
        results = {}
        for backbone in _BACKBONES.value:
            variants = [_variant(strategy, backbone, p, j == "on", data_dir, image_size)
                        for p in _precisions(_PRECISIONS.value) for j in _JIT.value]
            results[backbone] = {**variants[0], "variants": variants}
            _report({backbone: results[backbone]})
    if _JSON_OUT.value:
        with open(_JSON_OUT.value, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    app.run(main)
