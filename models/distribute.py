"""The tf.distribute strategy, the Keras precision policy and the image transfer. Call
`resolve_strategy` before any other TensorFlow op: multi-worker set-up precedes TensorFlow's start."""

from __future__ import annotations

import json
import os
import random

import keras
import tensorflow as tf

from contracts.errors import UserInputError
from models.registry import PRECISIONS, STRATEGIES
from pipeline import options


def tf_config_workers() -> int:
    raw = os.environ.get("TF_CONFIG", "")
    if not raw.strip():
        return 0
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"TF_CONFIG is not valid JSON ({err}); fix or unset the environment variable") from err
    return len(config.get("cluster", {}).get("worker", []))


def _gpus() -> int:
    return len(tf.config.list_physical_devices("GPU"))


def resolve_strategy(name: str) -> tf.distribute.Strategy:
    """The `STRATEGIES` strategy `name`; "mirrored" without a GPU uses the logical CPU devices."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; valid: {', '.join(STRATEGIES)}")
    if name == "auto":
        name = "multi_worker" if tf_config_workers() > 1 else "mirrored" if _gpus() > 1 else "default"
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored":
        cpus = None if _gpus() else [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=cpus)
    return tf.distribute.get_strategy()


def hardware_warnings(requested_strategy: str, requested_precision: str,
                      strategy: tf.distribute.Strategy) -> list[str]:
    if _gpus():
        return []
    warnings = []
    if requested_precision == "mixed_float16":
        warnings.append("precision=mixed_float16 but TensorFlow sees no GPU: float16 on a CPU is "
                        "slower than float32; use precision=float32 or mixed_bfloat16 here")
    if requested_strategy == "mirrored":
        warnings.append(f"strategy=mirrored but TensorFlow sees no GPU: mirroring over "
                        f"{strategy.num_replicas_in_sync} logical CPU device(s) of this host")
    return warnings


def strategy_name(strategy: tf.distribute.Strategy) -> str:
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return "multi_worker"
    if isinstance(strategy, tf.distribute.MirroredStrategy):
        return "mirrored"
    return "default"


def per_replica_batch(global_batch_size: int, strategy: tf.distribute.Strategy, setting: str) -> int:
    replicas = strategy.num_replicas_in_sync
    if global_batch_size % replicas:
        raise UserInputError(f"{setting}={global_batch_size} does not split evenly over {replicas} replicas; "
                         f"pass a multiple of {replicas}")
    return global_batch_size // replicas


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    return bool(strategy.extended.should_checkpoint)


def adopt_chief_values(strategy: tf.distribute.Strategy, values: dict[str, float]) -> dict[str, float]:
    """The chief's `values` on every worker, so that their decisions (and collectives) agree."""
    if strategy_name(strategy) != "multi_worker":
        return values
    names = sorted(values)
    local = tf.constant([values[n] for n in names], tf.float64)

    def replica_fn(local):
        context = tf.distribute.get_replica_context()
        mine = tf.where(tf.equal(context.replica_id_in_sync_group, 0), local, tf.zeros_like(local))
        return context.all_reduce(tf.distribute.ReduceOp.SUM, mine)

    agreed = strategy.experimental_local_results(strategy.run(replica_fn, args=(local,)))[0].numpy()
    return dict(zip(names, (float(v) for v in agreed)))


def service_job_name(strategy: tf.distribute.Strategy) -> str:
    """A new tf.data service job name, the same on all workers (52 bits: exact in a float64)."""
    drawn = adopt_chief_values(strategy, {"job": float(random.SystemRandom().getrandbits(52))})
    return f"cxr-train-{int(drawn['job']):013x}"


def resolve_precision(name: str) -> str:
    """Sets and returns Keras' global dtype policy ("auto": mixed_float16 with a GPU, else float32)."""
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; valid: {', '.join(PRECISIONS)}")
    if name == "auto":
        name = "mixed_float16" if _gpus() else "float32"
    keras.mixed_precision.set_global_policy(name)
    return name


def resolve_transfer(name: str) -> str:
    return options.resolve_transfer(name, _gpus() > 0)
