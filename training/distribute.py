"""Choosing the tf.distribute strategy, the Keras precision policy and the image transfer, for training
and prediction.

Call `resolve_strategy` before any other TensorFlow op of the process: MultiWorkerMirroredStrategy
must configure the collective runtime before it starts, and splitting the CPU into logical devices
(the Mirrored tests) is only possible before then too.
"""

from __future__ import annotations

import json
import os
import random

import keras
import tensorflow as tf

from pipeline import options
from training import config as config_lib

STRATEGIES = config_lib.STRATEGIES
PRECISIONS = config_lib.PRECISIONS


def tf_config_workers() -> int:
    """Returns how many workers `TF_CONFIG` names (0 when it is unset or names none).

    Raises:
      ValueError: `TF_CONFIG` is not valid JSON.
    """
    raw = os.environ.get("TF_CONFIG", "")
    if not raw.strip():
        return 0
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"TF_CONFIG is not valid JSON ({err}); fix or unset the environment variable") from err
    return len(config.get("cluster", {}).get("worker", []))


def _mirrored_devices() -> list[str] | None:
    # With no GPU, MirroredStrategy() would take CPU:0 alone; taking every logical CPU device
    # lets one host (and the tests) mirror over CPU splits.
    if tf.config.list_logical_devices("GPU"):
        return None
    return [d.name for d in tf.config.list_logical_devices("CPU")]


def resolve_strategy(name: str) -> tf.distribute.Strategy:
    """Builds the distribution strategy called `name`.

    Args:
      name: "auto" (MultiWorkerMirrored when TF_CONFIG names several workers, Mirrored when more
        than one GPU is visible, else the default strategy), "default", "mirrored" (every local
        GPU, or every logical CPU device when there is no GPU) or "multi_worker" (configured by
        TF_CONFIG).

    Returns:
      The strategy. Build models, optimizers and metrics inside `strategy.scope()`.

    Raises:
      ValueError: an unknown name, listing the valid ones.
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; valid: {', '.join(STRATEGIES)}")
    if name == "auto":
        if tf_config_workers() > 1:
            name = "multi_worker"
        elif len(tf.config.list_physical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "default"
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices=_mirrored_devices())
    return tf.distribute.get_strategy()


def hardware_warnings(requested_strategy: str, requested_precision: str,
                      strategy: tf.distribute.Strategy) -> list[str]:
    """One line per setting the user asked for that this machine cannot honour as meant.

    Args:
      requested_strategy, requested_precision: the flags as given (before "auto" is resolved).
      strategy: the strategy built from them.
    """
    if tf.config.list_physical_devices("GPU"):
        return []
    warnings = []
    if requested_precision == "mixed_float16":
        warnings.append("--precision=mixed_float16 but TensorFlow sees no GPU: float16 on a CPU is "
                        "slower than float32; use --precision=float32 or mixed_bfloat16 here")
    if requested_strategy == "mirrored":
        warnings.append(f"--strategy=mirrored but TensorFlow sees no GPU: mirroring over "
                        f"{strategy.num_replicas_in_sync} logical CPU device(s) of this host")
    return warnings


def strategy_name(strategy: tf.distribute.Strategy) -> str:
    """Returns "multi_worker", "mirrored" or "default" for a strategy built by `resolve_strategy`."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return "multi_worker"
    if isinstance(strategy, tf.distribute.MirroredStrategy):
        return "mirrored"
    return "default"


def per_replica_batch(global_batch_size: int, strategy: tf.distribute.Strategy, flag: str) -> int:
    """Returns each replica's share of a global batch.

    Raises:
      ValueError: the batch does not split evenly over the replicas (the message names `flag`).
    """
    replicas = strategy.num_replicas_in_sync
    if global_batch_size % replicas:
        raise ValueError(f"--{flag}={global_batch_size} does not split evenly over {replicas} replicas; "
                         f"pass a multiple of {replicas}")
    return global_batch_size // replicas


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes outputs: always outside multi-worker runs, else the chief only.

    Under MultiWorkerMirroredStrategy the chief is worker 0 (or the task typed "chief").
    """
    return bool(strategy.extended.should_checkpoint)


def adopt_chief_values(strategy: tf.distribute.Strategy, values: dict[str, float]) -> dict[str, float]:
    """Returns the chief's (global replica 0's) `values` on every worker of a multi-worker run.

    Every worker scores the same validation split, but floating-point noise could still make one
    worker's early stopping fire and another's not, and then their collectives would hang; a name
    drawn at random must be one name. Outside multi-worker runs, `values` as they are.
    """
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
    """A tf.data service job name for this start of a run, the same on all its workers.

    All trainers must read one job, so each record goes to one of them; a restarted run needs a new
    name, since a finished job's name reads as an empty pass. The chief draws it (52 random bits,
    exact in the float64 the collective carries).
    """
    drawn = adopt_chief_values(strategy, {"job": float(random.SystemRandom().getrandbits(52))})
    return f"cxr-train-{int(drawn['job']):013x}"


def resolve_precision(name: str) -> str:
    """Sets Keras' global dtype policy from `name` and returns the resolved policy name.

    Args:
      name: "auto" (mixed_float16 when a GPU is visible, float32 otherwise), "float32",
        "mixed_float16" or "mixed_bfloat16".

    Returns:
      The policy now in force, e.g. "float32".

    Raises:
      ValueError: an unknown name, listing the valid ones.
    """
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; valid: {', '.join(PRECISIONS)}")
    if name == "auto":
        name = "mixed_float16" if tf.config.list_physical_devices("GPU") else "float32"
    keras.mixed_precision.set_global_policy(name)
    return name


def resolve_transfer(name: str) -> str:
    """Resolves `--transfer` for this machine: "auto" is uint8 when TensorFlow sees a GPU.

    Args:
      name: a `pipeline.options.TRANSFERS` name.

    Returns:
      `options.UINT8` or `options.FLOAT32` (without a GPU, "auto" is `options.CPU_TRANSFER`).

    Raises:
      ValueError: an unknown name, listing the valid ones.
    """
    return options.resolve_transfer(name, bool(tf.config.list_physical_devices("GPU")))
