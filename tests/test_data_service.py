"""The training input through the tf.data service: a dispatcher and two workers in this process, on loopback."""

import collections
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from contracts import manifest as manifest_lib
from contracts import records
from contracts.errors import UserInputError
from pipeline import input_pipeline, service
from tests.conftest import REPO
from tests.shard_factory import write_shards
from training.config import TrainConfig, resolve_config
from training.loop import run_training

SIZE = 16
BATCH = 4
SPLITS = {"train": 45, "val": 9}  # 45: every pass ends in partial batches


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("service_shards"))
    written = write_shards(data_dir, SPLITS, image_size=SIZE, shards_per_split=4)
    return data_dir, written


@pytest.fixture(scope="module")
def cluster():
    """(dispatcher target "grpc://localhost:PORT", [two workers])."""
    dispatcher = service.start_dispatcher(0)
    workers = [service.start_worker(dispatcher.target, 0, "localhost:%port%") for _ in range(2)]
    yield dispatcher.target, workers
    for server in workers + [dispatcher]:
        server._stop()


def shard_records(data_dir: str, split: str) -> list[dict]:
    """Every record of `split`, read from the shard files the manifest lists, without the pipeline."""
    paths = list(manifest_lib.ShardFolder.open(data_dir).split(split).paths)
    return [records.example_to_dict(r.numpy()) for r in tf.data.TFRecordDataset(paths)]


def test_one_pass_gives_every_training_record_to_exactly_one_of_two_trainers(shards, cluster):
    data_dir, written = shards
    target, _ = cluster
    stream = input_pipeline.StreamOptions(seed=1, data_service=target, job_name="one-pass-test")
    folder = manifest_lib.ShardFolder.open(data_dir)
    trainers = [iter(input_pipeline.make_service_pass(folder, "train", BATCH, stream)) for _ in range(2)]
    seen, pixels = [], {r["image_id"]: r["pixels"] for r in written["train"]}
    stored = shard_records(data_dir, "train")
    labels = {r["image_id"]: r["label"] for r in stored}
    active = [0, 1]
    while active:  # the two trainers take turns, as synchronous replicas do
        for trainer in list(active):
            try:
                batch = next(trainers[trainer])
            except StopIteration:
                active.remove(trainer)
                continue
            for image_id, label, image in zip(batch["image_id"].numpy(), batch["label"].numpy(),
                                               batch["image"].numpy()):
                seen.append(image_id.decode())
                assert label == labels[seen[-1]]
                np.testing.assert_array_equal(image, np.repeat(pixels[seen[-1]][..., None], 3, -1))
    assert len(stored) == SPLITS["train"]
    assert collections.Counter(seen) == collections.Counter(r["image_id"] for r in stored)  # once each


def test_training_runs_through_the_service(shards, cluster, tmp_path):
    data_dir, _ = shards
    target, workers = cluster
    before = sum(w._num_tasks() for w in workers)
    config = TrainConfig(backbone="tiny_test", data_dir=data_dir, weights="none", global_batch_size=BATCH,
                         epochs=2, precision="float32", strategy="default", data_service=target,
                         model_dir=str(tmp_path / "run"))
    result = run_training(config)
    assert result["epochs_done"] == 2 and result["step"] == 2 * (SPLITS["train"] // BATCH)
    assert all(np.isfinite(r["train_loss"]) for r in result["history"])
    assert sum(w._num_tasks() for w in workers) > before  # the workers, not this process, read the shards


def test_service_flags_refuse_what_the_service_cannot_do(shards):
    data_dir, _ = shards
    with socket.socket() as holder:  # another program's port (gRPC's own servers may share a port)
        holder.bind(("", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        with pytest.raises(UserInputError, match=f"port {busy}: .* probably in use"):
            service.start_dispatcher(busy)
    base = dict(backbone="tiny_test", data_dir=data_dir, model_dir="", weights="none", global_batch_size=BATCH)
    assert resolve_config(TrainConfig(**base, data_service="localhost:5050")).data_service == "grpc://localhost:5050"
    with pytest.raises(UserInputError, match="cache=True and data_service=grpc://localhost:5050 together"):
        resolve_config(TrainConfig(**base, data_service="grpc://localhost:5050", cache=True))
    with pytest.raises(UserInputError, match="grpc://HOST:PORT"):
        resolve_config(TrainConfig(**base, data_service="http://localhost:5050"))
    closed = service.start_dispatcher(0)
    address = closed.target
    closed._stop()
    with pytest.raises(UserInputError, match="no tf.data service dispatcher answers"):
        service.check_reachable(address)


def test_data_service_tool_names_a_missing_dispatcher_in_one_line():
    done = subprocess.run([sys.executable, "data_service.py", "--role=worker"], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    assert done.returncode == 1 and "needs --dispatcher" in done.stderr and "Traceback" not in done.stderr
