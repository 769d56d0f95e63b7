"""Tests of `pipeline.input_pipeline` over shards written in the real record format."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from contracts.errors import UserInputError
from contracts.manifest import ShardFolder
from pipeline import input_pipeline
from pipeline.input_pipeline import StreamOptions
from pipeline.service import free_local_ports
from tests import shard_factory

IMAGE_SIZE = 32
TRAIN_RECORDS = 40
VAL_RECORDS = 13  # not a multiple of any batch size used below
SHARDS = 4
CHECK_SCRIPT = os.path.join(os.path.dirname(__file__), "distributed_input_check.py")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """(data_dir, written rows by split): 4 shards per split, 40 train and 13 val records."""
    data_dir = str(tmp_path_factory.mktemp("shards"))
    written = shard_factory.write_shards(
        data_dir, {"train": TRAIN_RECORDS, "val": VAL_RECORDS},
        image_size=IMAGE_SIZE, shards_per_split=SHARDS,
    )
    return ShardFolder.open(data_dir), written


def _ids(batch) -> list[str]:
    return [i.decode() for i in batch["image_id"].numpy()]


def _take_ids(dataset, batches: int) -> list[str]:
    return [i for batch in dataset.take(batches) for i in _ids(batch)]


def _assert_pixels_match(batch, rows_by_id):
    images = batch["image"].numpy()
    for image, image_id in zip(images, _ids(batch)):
        expected = rows_by_id[image_id]["pixels"].astype(np.float32)
        for channel in range(3):
            np.testing.assert_array_equal(image[..., channel], expected, err_msg=image_id)


def test_eval_yields_each_record_once_in_order_with_partial_last_batch(shards):
    data_dir, written = shards
    dataset = input_pipeline.make_eval_dataset(data_dir, "val", 4)
    batches = list(dataset)
    assert [len(b["image_id"]) for b in batches] == [4, 4, 4, 1]
    assert [i for b in batches for i in _ids(b)] == [r["image_id"] for r in written["val"]]


def test_eval_pixels_labels_and_types_equal_what_was_written(shards):
    data_dir, written = shards
    rows_by_id = {r["image_id"]: r for r in written["val"]}
    for batch in input_pipeline.make_eval_dataset(data_dir, "val", 5):
        assert batch["image"].dtype == tf.float32
        assert batch["label"].dtype == tf.int32
        assert batch["image"].shape[1:] == (IMAGE_SIZE, IMAGE_SIZE, 3)
        _assert_pixels_match(batch, rows_by_id)
        expected_labels = [rows_by_id[i]["label"] for i in _ids(batch)]
        assert batch["label"].numpy().tolist() == expected_labels


def test_train_pixels_equal_what_was_written_with_static_shapes(shards):
    data_dir, written = shards
    dataset = input_pipeline.make_train_dataset(data_dir, "train", 8)
    assert dataset.element_spec["image"].shape == (8, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert dataset.element_spec["label"].shape == (8,)
    rows_by_id = {r["image_id"]: r for r in written["train"]}
    for batch in dataset.take(TRAIN_RECORDS // 8):
        _assert_pixels_match(batch, rows_by_id)


# Exact epoch boundaries need deterministic=True: otherwise a batch decoded early may be emitted
# before the last batches of the previous epoch (every epoch still draws each record once).


def test_train_repeats_in_full_batches_one_whole_epoch_at_a_time(shards):
    data_dir, written = shards
    # 40 records in batches of 8: five batches per epoch; three epochs.
    dataset = input_pipeline.make_train_dataset(
        data_dir, "train", 8, StreamOptions(seed=1, deterministic=True)
    )
    ids = _take_ids(dataset, 3 * TRAIN_RECORDS // 8)
    everything = sorted(r["image_id"] for r in written["train"])
    epochs = [ids[e * TRAIN_RECORDS:(e + 1) * TRAIN_RECORDS] for e in range(3)]
    for epoch in epochs:
        assert sorted(epoch) == everything
    assert epochs[0] != epochs[1], "the order should change between epochs"


def test_two_input_pipelines_cover_every_record_once_per_epoch(shards):
    data_dir, written = shards
    per_worker = []
    for worker in range(2):
        context = tf.distribute.InputContext(
            num_input_pipelines=2, input_pipeline_id=worker, num_replicas_in_sync=2
        )
        # Global batch 4 over 2 replicas: 2 per replica; each worker reads 2 shards of 10 records.
        dataset = input_pipeline.make_train_dataset(
            data_dir, "train", 4, StreamOptions(deterministic=True), input_context=context
        )
        assert dataset.element_spec["image"].shape[0] == 2
        per_worker.append(_take_ids(dataset, 2 * 10))
    everything = sorted(r["image_id"] for r in written["train"])
    assert not set(per_worker[0]) & set(per_worker[1])
    for epoch in range(2):
        seen = [i for ids in per_worker for i in ids[epoch * 20:(epoch + 1) * 20]]
        assert sorted(seen) == everything


def test_more_input_pipelines_than_shards_fails_naming_the_fix(shards):
    data_dir, _ = shards
    context = tf.distribute.InputContext(
        num_input_pipelines=SHARDS + 1, input_pipeline_id=0, num_replicas_in_sync=SHARDS + 1
    )
    with pytest.raises(ValueError, match="num_shards of at least 5"):
        input_pipeline.make_train_dataset(data_dir, "train", 10, input_context=context)


def test_same_seed_gives_same_first_batches_when_deterministic(shards):
    data_dir, _ = shards

    def first_batches(seed):
        dataset = input_pipeline.make_train_dataset(
            data_dir, "train", 8, StreamOptions(seed=seed, deterministic=True)
        )
        return [(_ids(b), b["image"].numpy()) for b in dataset.take(7)]

    first, again, other = first_batches(5), first_batches(5), first_batches(6)
    assert [ids for ids, _ in first] == [ids for ids, _ in again]
    for (_, images), (_, images_again) in zip(first, again):
        np.testing.assert_array_equal(images, images_again)
    assert [ids for ids, _ in first] != [ids for ids, _ in other]


def test_cache_serves_the_same_records(shards):
    data_dir, written = shards
    rows_by_id = {r["image_id"]: r for r in written["train"]}
    dataset = input_pipeline.make_train_dataset(
        data_dir, "train", 8, StreamOptions(cache=True, deterministic=True)
    )
    assert dataset.element_spec["image"].shape == (8, IMAGE_SIZE, IMAGE_SIZE, 3)
    batches = list(dataset.take(2 * TRAIN_RECORDS // 8))  # the second epoch reads the cache
    for batch in batches:
        _assert_pixels_match(batch, rows_by_id)
    ids = [i for b in batches for i in _ids(b)]
    assert sorted(ids[TRAIN_RECORDS:]) == sorted(rows_by_id)

    cached = input_pipeline.make_eval_dataset(data_dir, "val", 4, cache=True)
    plain = input_pipeline.make_eval_dataset(data_dir, "val", 4)
    for _ in range(2):
        for a, b in zip(cached, plain, strict=True):
            assert _ids(a) == _ids(b)
            np.testing.assert_array_equal(a["image"].numpy(), b["image"].numpy())


@pytest.mark.parametrize("cache", [False, True])
def test_uint8_gray_emits_the_decoded_pixels_unexpanded(shards, cache):
    data_dir, written = shards
    rows_by_id = {r["image_id"]: r for r in written["train"] + written["val"]}
    train = input_pipeline.make_train_dataset(data_dir, "train", 8, StreamOptions(cache=cache, uint8_gray=True))
    evaluation = input_pipeline.make_eval_dataset(data_dir, "val", 8, cache=cache, uint8_gray=True)
    assert train.element_spec["image"].shape == (8, IMAGE_SIZE, IMAGE_SIZE, 1)
    for batch in [*train.take(2), *evaluation]:
        assert batch["image"].dtype == tf.uint8
        for image, image_id in zip(batch["image"].numpy(), _ids(batch)):
            np.testing.assert_array_equal(image[..., 0], rows_by_id[image_id]["pixels"])


def test_a_shard_folder_on_another_file_system_reads_the_same_records(shards):
    data_dir, written = shards
    remote = "ram://input-pipeline-test/shards"
    tf.io.gfile.makedirs(remote)
    for name in tf.io.gfile.listdir(data_dir.path):
        tf.io.gfile.copy(os.path.join(data_dir.path, name), f"{remote}/{name}", overwrite=True)
    folder = ShardFolder.open(remote)
    assert folder.split("val").paths[0].startswith(remote + "/val-")
    ids = [i for b in input_pipeline.make_eval_dataset(folder, "val", 4) for i in _ids(b)]
    assert ids == [r["image_id"] for r in written["val"]]
    tf.io.gfile.remove(folder.split("train").paths[-1])  # the checks reach the URL too
    with pytest.raises(UserInputError, match="1 shard.s. of split 'train' listed in the manifest are missing"):
        ShardFolder.open(remote).split("train")


def test_an_image_size_other_than_the_build_is_refused_naming_both(shards):
    data_dir, _ = shards
    assert data_dir.check_image_size(None, "") == data_dir.check_image_size(IMAGE_SIZE, "") == IMAGE_SIZE
    with pytest.raises(UserInputError, match="built at 32 px, not 64; rebuild at 64 or pass 32"):
        data_dir.check_image_size(64, "rebuild at {asked} or pass {stored}")


def test_empty_split_fails_instead_of_yielding_nothing(tmp_path):
    shard_factory.write_shards(str(tmp_path), {"train": 0}, image_size=IMAGE_SIZE)
    with pytest.raises(ValueError, match="no records"):
        input_pipeline.make_train_dataset(ShardFolder.open(str(tmp_path)), "train", 4)


def _run_check(args, env=None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, CHECK_SCRIPT, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env,
    )


def _report(process: subprocess.Popen) -> dict:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def test_mirrored_strategy_over_two_logical_cpus_consumes_both_datasets(shards):
    data_dir, written = shards
    report = _report(_run_check(["mirrored", data_dir.path]))
    assert report["replicas"] == 2
    # One epoch of training: 10 steps of global batch 4, 2 per replica, summed across replicas.
    assert report["train_batch_sizes"] == [[2, 2]] * 10
    assert report["train_global_counts"] == [4] * 10
    assert sorted(report["train_ids"]) == sorted(r["image_id"] for r in written["train"])
    assert report["eval_ids"] == [r["image_id"] for r in written["val"]]


@pytest.mark.slow
def test_multi_worker_mirrored_strategy_with_two_local_workers(shards):
    data_dir, written = shards
    cluster = {"worker": [f"localhost:{port}" for port in free_local_ports(2)]}
    processes = []
    for index in range(2):
        tf_config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        env = {**os.environ, "TF_CONFIG": json.dumps(tf_config)}
        processes.append(_run_check(["multi_worker", data_dir.path], env=env))
    reports = [_report(p) for p in processes]
    train_ids = [i for r in reports for i in r["train_ids"]]
    eval_ids = [i for r in reports for i in r["eval_ids"]]
    for report in reports:
        assert report["replicas"] == 2
        # The cross-worker all-reduce of per-replica batch sizes sees the global batch.
        assert report["train_global_counts"] == [4] * 10
    assert sorted(train_ids) == sorted(r["image_id"] for r in written["train"])
    assert sorted(eval_ids) == sorted(r["image_id"] for r in written["val"])
