"""tf.data pipelines over a `ShardFolder`'s splits, one chain for training and one for eval, emitting
{"image": float32 (B, S, S, 3) 0..255 (`uint8_gray`: uint8 (B, S, S, 1)), "label", "image_id",
"findings" (B, 14), "findings_known" (B,): 1 when the record's findings are labels, 0 when unknown}."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import tensorflow as tf

from contracts import records
from contracts.errors import UserInputError
from contracts.manifest import ShardFolder
from pipeline import options
from pipeline import service as service_lib

AUTOTUNE = tf.data.AUTOTUNE
# Shards read at once: decoding, not reading, is the cost; the cap serves shuffle quality and remote
# storage, where many files in flight hide each request's latency.
MAX_CYCLE_LENGTH = 16


@dataclasses.dataclass(frozen=True)
class StreamOptions:
    """How the training stream is read; `data_service` is "grpc://HOST:PORT"."""

    seed: int = 0
    deterministic: bool = False  # else a fast batch may overtake the previous epoch's last ones
    shuffle_buffer: int = options.DEFAULT_SHUFFLE_BUFFER
    cache: bool = False
    uint8_gray: bool = False
    data_service: str | None = None
    job_name: str | None = None


def _paths(shards: ShardFolder, split: str) -> tuple[str, ...]:
    found = shards.split(split)
    if found.records == 0:
        raise UserInputError(f"split {split!r} of {shards.path} holds no records; rebuild or pick another "
                             "split")
    return found.paths


def corrupt_data_error(shards: ShardFolder, splits: tuple[str, ...], err: Exception) -> UserInputError:
    """The one-line error for a DataLossError, naming the first shard of `splits` that does not read."""
    for path in (p for split in splits for p in shards.split(split).paths):
        try:
            for _ in tf.data.TFRecordDataset(path):
                pass
        except tf.errors.DataLossError as found:
            reason = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", found.message)
            where = f"{path} is truncated or corrupt ({reason.split(' [Op:')[0].splitlines()[0]})"
            break
    else:
        where = f"a shard of {shards.path} is truncated or corrupt ({err})"
    return UserInputError(f"{where}: recopy the folder or rebuild it with preprocess/build_tfrecords.py")


def _worker_shards(paths: tuple[str, ...], split: str, input_context) -> list[str]:
    if input_context is None or input_context.num_input_pipelines == 1:
        return list(paths)
    workers = input_context.num_input_pipelines
    if len(paths) < workers:
        raise ValueError(f"split {split!r} has {len(paths)} shard(s) but {workers} input pipelines read it; "
                         f"rebuild with num_shards of at least {workers} (a multiple of {workers} balances)")
    return list(paths[input_context.input_pipeline_id::workers])


def _per_replica_batch(global_batch_size: int, input_context) -> int:
    return global_batch_size if input_context is None else input_context.get_per_replica_batch_size(
        global_batch_size)


# XLA fuses the cast and the channel copy into one loop, faster than the alternatives
# (bench/RESULTS.md); the models' uint8 front runs this same function on the device.
@tf.function(jit_compile=True)
def gray_to_rgb_float(images: tf.Tensor) -> tf.Tensor:
    """(B, S, S, 1) uint8 -> (B, S, S, 3) float32 in 0..255, exactly."""
    rgb_shape = tf.concat([tf.shape(images)[:-1], [3]], axis=0)
    return tf.broadcast_to(tf.cast(images, tf.float32), rgb_shape)


def _carried(parsed: dict[str, tf.Tensor], known_before: bool) -> dict[str, tf.Tensor]:
    # The fields beside the image; `known_before`: findings_known of records older than the field.
    known = parsed[records.FINDINGS_KNOWN]
    known = tf.where(known == records.FINDINGS_NOT_RECORDED, tf.cast(known_before, known.dtype), known)
    return {"label": tf.cast(parsed[records.LABEL], tf.int32), "image_id": parsed[records.IMAGE_ID],
            "findings": tf.cast(parsed[records.FINDINGS_KEY], tf.int32),
            "findings_known": tf.cast(known, tf.int32)}


def _decode_batch(serialized: tf.Tensor, image_size: int, known_before: bool) -> dict[str, tf.Tensor]:
    # One vectorised parse per batch, then the decodes as one loop: cheaper per image than a
    # per-record parse and map before `batch`.
    parsed = records.parse_example(serialized)
    images = tf.map_fn(lambda encoded: records.decode_image(encoded, image_size), parsed[records.IMAGE],
                       fn_output_signature=tf.TensorSpec([image_size, image_size, 1], tf.uint8))
    return {"image": images, **_carried(parsed, known_before)}


def _decode_and_cache(serialized: tf.data.Dataset, image_size: int, deterministic: bool,
                      known_before: bool) -> tf.data.Dataset:
    # Cached before the float RGB expansion: 1 byte a pixel (~5.6 GB for all of NIH at 224) against 12.
    def decode_one(one):
        parsed = records.parse_example(one)
        return {"image": records.decode_image(parsed[records.IMAGE], image_size),
                **_carried(parsed, known_before)}

    return serialized.map(decode_one, num_parallel_calls=AUTOTUNE, deterministic=deterministic).cache()


def _batch_to_inputs(cache: bool, image_size: int, uint8_gray: bool, known_before: bool = False):
    def to_inputs(batch):  # serialized records, or cached decoded ones
        batch = batch if cache else _decode_batch(batch, image_size, known_before)
        return batch if uint8_gray else {**batch, "image": gray_to_rgb_float(batch["image"])}

    return to_inputs


def _options(deterministic: bool) -> tf.data.Options:
    options = tf.data.Options()
    options.autotune.enabled = True  # AUTOTUNE sizes every parallelism and buffer for the host it finds
    options.deterministic = deterministic  # unordered by default: a fast batch never waits for a slow one
    return options


def _shuffled_records(paths: list[str], seed: int, deterministic: bool) -> tf.data.Dataset:
    files = tf.data.Dataset.from_tensor_slices(paths)
    files = files.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    return files.interleave(tf.data.TFRecordDataset, cycle_length=min(len(paths), MAX_CYCLE_LENGTH),
                            num_parallel_calls=AUTOTUNE, deterministic=deterministic)


def make_train_dataset(shards: ShardFolder, split: str, global_batch_size: int,
                       stream: StreamOptions = StreamOptions(),
                       input_context: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
    """The infinite, shuffled training stream of `split` in full per-replica batches."""
    if stream.data_service is not None:
        if stream.cache or stream.deterministic:
            raise ValueError("the tf.data service decodes on its workers and hands out files as they ask: "
                             "it cannot keep a trainer-side cache or a deterministic order")
        data = make_service_pass(shards, split, global_batch_size, stream, input_context)
        # Each repetition is the next pass: a new iteration of the same shared job.
        return data.repeat().prefetch(AUTOTUNE).with_options(_options(deterministic=False))
    paths = _worker_shards(_paths(shards, split), split, input_context)
    batch_size = _per_replica_batch(global_batch_size, input_context)
    data = _shuffled_records(paths, stream.seed, stream.deterministic)
    if stream.cache:
        data = _decode_and_cache(data, shards.image_size, stream.deterministic, shards.findings_known(split))
    # Shuffle before repeat, so one epoch is seen whole before the next begins; batch before decoding.
    data = data.shuffle(stream.shuffle_buffer, seed=stream.seed, reshuffle_each_iteration=True).repeat()
    data = data.batch(batch_size, drop_remainder=True)
    data = data.map(_batch_to_inputs(stream.cache, shards.image_size, stream.uint8_gray,
                                     shards.findings_known(split)),
                    num_parallel_calls=AUTOTUNE, deterministic=stream.deterministic)
    return data.prefetch(AUTOTUNE).with_options(_options(stream.deterministic))


def make_service_pass(shards: ShardFolder, split: str, global_batch_size: int, stream: StreamOptions,
                      input_context: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
    """One shuffled pass over `split` through the tf.data service, shared by the job's trainers."""
    batch_size = _per_replica_batch(global_batch_size, input_context)
    data = _shuffled_records(list(_paths(shards, split)), stream.seed, deterministic=False)
    data = data.shuffle(stream.shuffle_buffer, seed=stream.seed, reshuffle_each_iteration=True)
    data = data.batch(batch_size, drop_remainder=False)
    # The workers ship the decoded uint8 gray batch (1 byte a pixel); the trainer expands it.
    data = data.map(_batch_to_inputs(False, shards.image_size, True, shards.findings_known(split)),
                    num_parallel_calls=AUTOTUNE, deterministic=False)
    data = service_lib.distribute(data, stream.data_service, stream.job_name)
    return data if stream.uint8_gray else data.map(_batch_to_inputs(True, shards.image_size, False))


def make_eval_dataset(shards: ShardFolder, split: str, global_batch_size: int, *, cache: bool = False,
                      input_context: tf.distribute.InputContext | None = None,
                      uint8_gray: bool = False) -> tf.data.Dataset:
    """`split` once, in manifest order, each record once with its id; `cache` keeps decoded images."""
    paths = _worker_shards(_paths(shards, split), split, input_context)
    batch_size = _per_replica_batch(global_batch_size, input_context)
    data = tf.data.TFRecordDataset(paths)
    if cache:
        data = _decode_and_cache(data, shards.image_size, True, shards.findings_known(split))
    data = data.batch(batch_size, drop_remainder=False)
    data = data.map(_batch_to_inputs(cache, shards.image_size, uint8_gray, shards.findings_known(split)),
                    num_parallel_calls=AUTOTUNE, deterministic=True)
    return data.prefetch(AUTOTUNE).with_options(_options(deterministic=True))


def finding_counts(shards: ShardFolder, split: str) -> tuple[int, tuple[int, ...]]:
    """(records of `split` whose findings are known, each finding's positives among them): the
    manifest's, or counted from the records (findings only, no image) of an older folder."""
    found = shards.split(split)
    if found.finding_positives is not None:
        return found.findings_known, found.finding_positives
    spec = {key: records.FEATURE_SPEC[key] for key in (records.FINDINGS_KEY, records.FINDINGS_KNOWN)}
    data = tf.data.TFRecordDataset(list(found.paths)).batch(1024).map(lambda s: tf.io.parse_example(s, spec))
    known, positives = 0, np.zeros(len(records.FINDINGS), np.int64)
    try:
        for batch in data.as_numpy_iterator():
            flags = batch[records.FINDINGS_KNOWN]
            flags = np.where(flags == records.FINDINGS_NOT_RECORDED, int(shards.findings_known(split)), flags)
            rows = flags > 0
            known += int(rows.sum())
            positives += batch[records.FINDINGS_KEY][rows].sum(axis=0)
    except tf.errors.DataLossError as err:
        raise corrupt_data_error(shards, (split,), err) from None
    return known, tuple(int(n) for n in positives)
