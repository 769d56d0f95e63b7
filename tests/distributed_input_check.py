"""Feeds the input pipeline through a tf.distribute strategy in a fresh process; prints a JSON report.

`tests/test_input_pipeline.py` runs it in a subprocess: logical CPU devices and
MultiWorkerMirroredStrategy must be set up before TensorFlow initialises its runtime, which
a pytest process shared with other tests has long done.

Usage: python tests/distributed_input_check.py {mirrored|multi_worker} DATA_DIR
  mirrored: MirroredStrategy over two logical CPU devices of this process.
  multi_worker: MultiWorkerMirroredStrategy, one worker of the cluster in TF_CONFIG.
The folder must hold a "train" split of 40 and a "val" split of 32x32 images.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402

from contracts.manifest import ShardFolder  # noqa: E402
from pipeline import input_pipeline  # noqa: E402

IMAGE_SIZE = 32
GLOBAL_BATCH = 4
TRAIN_STEPS = 10  # one epoch of the 40 training records at global batch 4


def make_strategy(kind: str) -> tf.distribute.Strategy:
    if kind == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    if kind == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"strategy must be 'mirrored' or 'multi_worker', got {kind!r}")


def _local(strategy, values) -> list:
    return [v.numpy() for v in strategy.experimental_local_results(values)]


def train_report(strategy, data_dir: str) -> dict:
    """Runs one epoch of distributed steps that count and list what each replica received."""
    dataset = strategy.distribute_datasets_from_function(
        lambda context: input_pipeline.make_train_dataset(
            # Deterministic, so that the first TRAIN_STEPS steps are exactly one epoch.
            ShardFolder.open(data_dir), "train", GLOBAL_BATCH, input_pipeline.StreamOptions(deterministic=True),
            input_context=context
        )
    )

    @tf.function
    def step(batch):
        def replica_fn(b):
            return tf.shape(b["image"])[0], b["image_id"], tf.reduce_max(b["image"])

        sizes, ids, peak = strategy.run(replica_fn, args=(batch,))
        # A cross-replica (and, with several workers, cross-worker) reduction, as a train step has.
        return sizes, ids, peak, strategy.reduce(tf.distribute.ReduceOp.SUM, sizes, axis=None)

    iterator = iter(dataset)
    report = {"train_batch_sizes": [], "train_ids": [], "train_global_counts": []}
    for _ in range(TRAIN_STEPS):
        sizes, ids, peak, total = step(next(iterator))
        if max(_local(strategy, peak)) > 255.0:
            raise AssertionError("pixels above 255 reached a replica")
        report["train_batch_sizes"].append([int(s) for s in _local(strategy, sizes)])
        report["train_ids"] += [i.decode() for batch in _local(strategy, ids) for i in batch]
        report["train_global_counts"].append(int(total))
    return report


def eval_ids(strategy, data_dir: str) -> list[str]:
    """Returns the ids every local replica received, step by step, replica by replica."""
    dataset = strategy.distribute_datasets_from_function(
        lambda context: input_pipeline.make_eval_dataset(
            ShardFolder.open(data_dir), "val", GLOBAL_BATCH, input_context=context
        )
    )
    ids = []
    for batch in dataset:
        per_replica = strategy.run(lambda b: b["image_id"], args=(batch,))
        ids += [i.decode() for local in _local(strategy, per_replica) for i in local]
    return ids


def main(argv: list[str]) -> None:
    kind, data_dir = argv[1], argv[2]
    strategy = make_strategy(kind)
    report = {"replicas": strategy.num_replicas_in_sync}
    report.update(train_report(strategy, data_dir))
    report["eval_ids"] = eval_ids(strategy, data_dir)
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv)
