"""tf.data input pipelines over the TFRecord shards: one straight chain for training, one for eval.

Both emit dicts {"image": float32 (B, S, S, 3) in 0..255, "label": int32 (B,), "image_id": string (B,)},
or with `uint8_gray` the decoded uint8 (B, S, S, 1) for a model behind the uint8 front (`models.front`).
The model normalises its own input and augments on the accelerator (see `models/augment.py`),
so the host only reads, decodes and batches, and one stream serves every backbone.

The choices below were made by CPU time per image; the measurements are in bench/RESULTS.md.
"""

from __future__ import annotations

import os
import re

import tensorflow as tf

from contracts import manifest as manifest_lib
from contracts import records
from contracts.errors import UserInputError
from pipeline import options
from pipeline import service as service_lib

AUTOTUNE = tf.data.AUTOTUNE

DEFAULT_SHUFFLE_BUFFER = options.DEFAULT_SHUFFLE_BUFFER

# Shards read at once. Decoding, not reading, is the cost: CPU per image did not change between 2
# and 16, for a little more RAM at 16. The cap is set for shuffle quality and for remote storage,
# where many files in flight hide each request's latency.
MAX_CYCLE_LENGTH = 16


def list_shards(data_dir: str, split: str) -> list[str]:
    """Returns the shard files of `split`, in manifest (or sorted pattern) order.

    Args:
      data_dir: a shard folder holding `manifest.json`, or a file pattern such as
        "/data/shards/val-*.tfrecord" (then `split` only names the data in messages).
      split: the manifest's split name, e.g. "train".

    Raises:
      FileNotFoundError: no manifest and no file matches, or a listed shard is missing.
      KeyError: the manifest has no such split.
      ValueError: the manifest says the split holds no records.
    """
    if not os.path.isdir(data_dir) and any(c in data_dir for c in "*?["):
        paths = sorted(tf.io.gfile.glob(data_dir))
        if not paths:
            raise FileNotFoundError(f"no file matches {data_dir!r} (split {split!r})")
        return paths
    paths = manifest_lib.shard_paths(data_dir, split)
    if manifest_lib.split_records(data_dir, split) == 0:
        raise UserInputError(f"split {split!r} of {data_dir} holds no records; rebuild or pick another split")
    return paths


def find_corrupt_shard(data_dir: str, splits: tuple[str, ...]) -> tuple[str, str] | None:
    """Reads every record of `splits` once; returns (path, TensorFlow's reason) of the first shard
    that does not read back (truncated or bit-flipped), or None. Only called after a read failed."""
    for split in splits:
        for path in list_shards(data_dir, split):
            try:
                for _ in tf.data.TFRecordDataset(path):
                    pass
            except tf.errors.DataLossError as err:
                reason = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", err.message)
                return path, reason.split(" [Op:")[0].splitlines()[0]
    return None


def corrupt_data_error(data_dir: str, splits: tuple[str, ...], err: Exception) -> UserInputError:
    """The one-line error for a shard folder whose records fail to read (a DataLossError)."""
    found = find_corrupt_shard(data_dir, splits)
    where = f"{found[0]} is truncated or corrupt ({found[1]})" if found else \
        f"a shard of {data_dir} is truncated or corrupt ({err})"
    return UserInputError(f"{where}: recopy the folder or rebuild it with preprocess/build_tfrecords.py")


def _check_image_size(data_dir: str, image_size: int) -> None:
    """Fails early when a manifest says the shards were built at another size."""
    if os.path.isdir(data_dir):
        manifest_lib.check_image_size(manifest_lib.load_manifest(data_dir), image_size, data_dir,
                                      "pass image_size={stored} or rebuild the shards at {asked}")


def _worker_shards(paths: list[str], split: str, input_context) -> list[str]:
    """Returns this input pipeline's share of `paths` (all of them when not distributed).

    Sharding by file keeps each worker reading whole files of its own; every file goes to exactly
    one pipeline, so the pipelines together see every record once per epoch.

    Raises:
      ValueError: fewer shards than input pipelines (a worker would get nothing).
    """
    if input_context is None or input_context.num_input_pipelines == 1:
        return paths
    workers = input_context.num_input_pipelines
    if len(paths) < workers:
        raise ValueError(
            f"split {split!r} has {len(paths)} shard(s) but {workers} input pipelines read it; "
            f"rebuild with --num_shards of at least {workers} (a multiple of {workers} balances them)"
        )
    return paths[input_context.input_pipeline_id::workers]


def _per_replica_batch(global_batch_size: int, input_context) -> int:
    if global_batch_size < 1:
        raise ValueError(f"global_batch_size must be positive, got {global_batch_size}")
    if input_context is None:
        return global_batch_size
    return input_context.get_per_replica_batch_size(global_batch_size)


# Writing the float32 RGB batch is the pipeline's largest cost after decoding (12 bytes per pixel).
# XLA fuses the cast and the channel copy into one loop, several times faster than a matmul by a
# row of ones, `grayscale_to_rgb`, or an unfused `broadcast_to`/`tile` (bench/RESULTS.md).
# The batch shape is static in training, so it compiles once (eval: once more for the last batch).
# The models' uint8 front (`models.front`) runs this same function on the device.
@tf.function(jit_compile=True)
def gray_to_rgb_float(images: tf.Tensor) -> tf.Tensor:
    """(B, S, S, 1) uint8 -> (B, S, S, 3) float32 in 0..255, exactly."""
    rgb_shape = tf.concat([tf.shape(images)[:-1], [3]], axis=0)
    return tf.broadcast_to(tf.cast(images, tf.float32), rgb_shape)


def _model_images(images: tf.Tensor, uint8_gray: bool) -> tf.Tensor:
    return images if uint8_gray else gray_to_rgb_float(images)


def _decode_batch(serialized: tf.Tensor, image_size: int, uint8_gray: bool) -> dict[str, tf.Tensor]:
    """A batch of serialized records -> model inputs: one vectorised parse, then the decodes.

    One function call and one parse op per batch; the decodes of a batch are iterations of one
    loop, and `map(num_parallel_calls=AUTOTUNE)` runs several batches at once. Decoding each record
    before `batch` instead (a per-record parse and a second map) cost more CPU per image.
    """
    parsed = records.parse_example(serialized)
    images = tf.map_fn(
        lambda encoded: records.decode_image(encoded, image_size),
        parsed[records.IMAGE],
        fn_output_signature=tf.TensorSpec([image_size, image_size, 1], tf.uint8),
    )
    return {"image": _model_images(images, uint8_gray), **_carried(parsed)}


def _decode_one(serialized: tf.Tensor, image_size: int) -> dict[str, tf.Tensor]:
    """One serialized record -> its grayscale uint8 image, label and id (what the cache holds)."""
    parsed = records.parse_example(serialized)
    return {"image": records.decode_image(parsed[records.IMAGE], image_size), **_carried(parsed)}


def _carried(parsed: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    # The record fields the streams carry beside the image: one place to add one (e.g. sex, age).
    return {"label": tf.cast(parsed[records.LABEL], tf.int32), "image_id": parsed[records.IMAGE_ID]}


def _decoded_batch(batch: dict[str, tf.Tensor], uint8_gray: bool) -> dict[str, tf.Tensor]:
    return {**batch, "image": _model_images(batch["image"], uint8_gray)}


def _decode_and_cache(serialized: tf.data.Dataset, image_size: int, deterministic: bool):
    """Decodes each record once and keeps the grayscale uint8 images in RAM.

    Caching before the float/RGB expansion keeps 1 byte per pixel (~50 KB per 224x224 image,
    ~5.6 GB for all of NIH) instead of 12; epochs served from it skip decoding altogether.
    """
    data = serialized.map(
        lambda s: _decode_one(s, image_size), num_parallel_calls=AUTOTUNE, deterministic=deterministic
    )
    return data.cache()


def _batch_to_inputs(cache: bool, image_size: int, uint8_gray: bool):
    """The per-batch function: decode serialized records, or only expand cached decoded ones."""
    if cache:
        return lambda batch: _decoded_batch(batch, uint8_gray)
    return lambda serialized: _decode_batch(serialized, image_size, uint8_gray)


def _options(deterministic: bool) -> tf.data.Options:
    options = tf.data.Options()
    # tf.data sizes every AUTOTUNE parallelism and buffer at run time, for the cores and RAM it
    # finds: fixed numbers tuned on this 2-core machine would starve a 32-core GPU host.
    options.autotune.enabled = True
    # Unordered by default, so a batch that decodes fast never waits behind a slow one. On 2 cores
    # the ordered stream cost the same, so the switch is cheap where reproducibility matters; the
    # gain of unordered is expected on many-core hosts with many batches in flight.
    options.deterministic = deterministic
    # No private thread pool: one changed nothing here and would have to be sized per host by hand.
    return options


def make_train_dataset(
    data_dir: str,
    split: str,
    global_batch_size: int,
    image_size: int,
    *,
    seed: int = 0,
    deterministic: bool = False,
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
    cache: bool = False,
    input_context: tf.distribute.InputContext | None = None,
    uint8_gray: bool = False,
    data_service: str | None = None,
    job_name: str | None = None,
) -> tf.data.Dataset:
    """Returns the infinite, shuffled training stream of `split` (full batches only, unless
    `data_service`).

    Args:
      data_dir: the builder's output folder (holds manifest.json), or a shard file pattern.
      split: e.g. "train".
      global_batch_size: batch over all replicas; each input pipeline emits its per-replica share.
      image_size: side of the stored images (must match the build).
      seed: seed of the shard order and of the record shuffle.
      deterministic: the same seed gives the same stream, batch for batch. Otherwise batches are
        emitted as they finish, and one may overtake the last batches of the previous epoch
        (every epoch still draws each record exactly once).
      shuffle_buffer: records in the shuffle buffer.
      cache: decode each record once and keep the grayscale images in RAM (~50 KB per 224x224
        image) from the second epoch on.
      input_context: from `strategy.distribute_datasets_from_function`; with several input
        pipelines each reads its own subset of the shard files.
      uint8_gray: emit images as the decoded uint8 (B, S, S, 1), for a model that casts and
        expands to three channels on the accelerator: a quarter less host CPU per image and 12x
        fewer bytes to copy to the device.
      data_service: "grpc://HOST:PORT" of a tf.data service dispatcher: the stream is
        `make_service_pass`, repeated (each pass a new iteration of the job). Not with `cache` or
        `deterministic`.
      job_name: with `data_service`, the run's shared job (see `make_service_pass`).

    Returns:
      A dataset of {"image": float32 (B, S, S, 3) 0..255 (uint8 (B, S, S, 1) with `uint8_gray`),
      "label": int32 (B,), "image_id": string (B,)} with B the per-replica batch size, static
      shapes throughout (with `data_service`, the batch dimension is unknown: see
      `make_service_pass`).

    Raises:
      ValueError: fewer shards than input pipelines, an empty split, a bad batch size, an
        image_size other than the manifest's, or `data_service` with `cache` or `deterministic`.
      FileNotFoundError, KeyError: see `list_shards`.
    """
    if data_service is not None:
        if cache or deterministic:
            raise ValueError("the tf.data service decodes on its workers and hands out files as they ask: "
                             "it cannot keep a trainer-side cache or a deterministic order")
        data = make_service_pass(data_dir, split, global_batch_size, image_size, service=data_service,
                                 job_name=job_name, seed=seed, shuffle_buffer=shuffle_buffer,
                                 input_context=input_context, uint8_gray=uint8_gray)
        # Each repetition is the next pass: a new iteration of the same shared job.
        return data.repeat().prefetch(AUTOTUNE).with_options(_options(deterministic=False))
    paths = _worker_shards(list_shards(data_dir, split), split, input_context)
    _check_image_size(data_dir, image_size)
    batch_size = _per_replica_batch(global_batch_size, input_context)

    data = _shuffled_records(paths, seed, deterministic)
    if cache:
        data = _decode_and_cache(data, image_size, deterministic)
    # Shuffle before repeat, so one epoch is seen whole before the next begins.
    data = data.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    data = data.repeat()
    # Batch before decoding: see `_decode_batch`.
    data = data.batch(batch_size, drop_remainder=True)
    data = data.map(
        _batch_to_inputs(cache, image_size, uint8_gray),
        num_parallel_calls=AUTOTUNE,
        deterministic=deterministic,
    )
    # Last, so the next batches are ready while the accelerator runs a step.
    data = data.prefetch(AUTOTUNE)
    return data.with_options(_options(deterministic))


def _shuffled_records(paths: list[str], seed: int, deterministic: bool) -> tf.data.Dataset:
    """The serialized records of `paths`, the files in a new seeded order every pass."""
    files = tf.data.Dataset.from_tensor_slices(paths)
    files = files.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    return files.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(len(paths), MAX_CYCLE_LENGTH),
        num_parallel_calls=AUTOTUNE,
        deterministic=deterministic,
    )


def make_service_pass(
    data_dir: str,
    split: str,
    global_batch_size: int,
    image_size: int,
    *,
    service: str,
    job_name: str,
    seed: int = 0,
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
    input_context: tf.distribute.InputContext | None = None,
    uint8_gray: bool = False,
) -> tf.data.Dataset:
    """One shuffled pass over `split` through the tf.data service at `service`.

    Every trainer that reads `job_name` shares the pass: together they receive every record of the
    split exactly once (see `pipeline/service.py` for the sharding choice). Each trainer describes
    the whole split; the service, not `input_context`, divides it. Each service worker ends its
    share with a partial batch rather than drop those records.

    Returns:
      A finite dataset of batches as `make_train_dataset`'s, batch dimension unknown.
    """
    paths = list_shards(data_dir, split)
    _check_image_size(data_dir, image_size)
    batch_size = _per_replica_batch(global_batch_size, input_context)
    data = _shuffled_records(paths, seed, deterministic=False)
    data = data.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    data = data.batch(batch_size, drop_remainder=False)
    # The workers ship the decoded uint8 gray batch, 1 byte a pixel against 12 for float32 RGB;
    # the trainer expands it after receiving it.
    data = data.map(_batch_to_inputs(False, image_size, uint8_gray=True), num_parallel_calls=AUTOTUNE,
                    deterministic=False)
    data = service_lib.distribute(data, service, job_name)
    return data if uint8_gray else data.map(lambda batch: _decoded_batch(batch, uint8_gray=False))


def make_eval_dataset(
    data_dir: str,
    split: str,
    global_batch_size: int,
    image_size: int,
    *,
    cache: bool = False,
    input_context: tf.distribute.InputContext | None = None,
    uint8_gray: bool = False,
) -> tf.data.Dataset:
    """Returns `split` once, in manifest order, keeping the last partial batch.

    Every record appears exactly once and carries its image id. With several input pipelines
    (multi-worker prediction) each pipeline reads its own subset of the shard files, so the
    workers together cover every record once, each in its own file order.

    Args:
      data_dir: the builder's output folder (holds manifest.json), or a shard file pattern.
      split: e.g. "val", "test" or "eval".
      global_batch_size: batch over all replicas; each input pipeline emits its per-replica share.
      image_size: side of the stored images (must match the build).
      cache: keep the decoded grayscale images in RAM after the first pass (for repeated
        validation of the same split).
      input_context: from `strategy.distribute_datasets_from_function`.
      uint8_gray: as in `make_train_dataset`.

    Returns:
      A finite dataset of {"image": float32 (B, S, S, 3) 0..255, "label": int32 (B,), "image_id":
      string (B,)}; the last batch may be smaller.

    Raises:
      ValueError, FileNotFoundError, KeyError: as `make_train_dataset`.
    """
    paths = _worker_shards(list_shards(data_dir, split), split, input_context)
    _check_image_size(data_dir, image_size)
    batch_size = _per_replica_batch(global_batch_size, input_context)

    # One file after the other, records in file order; decoding, not reading, is the slow part.
    data = tf.data.TFRecordDataset(paths)
    if cache:
        data = _decode_and_cache(data, image_size, deterministic=True)
    data = data.batch(batch_size, drop_remainder=False)
    data = data.map(
        _batch_to_inputs(cache, image_size, uint8_gray), num_parallel_calls=AUTOTUNE, deterministic=True
    )
    data = data.prefetch(AUTOTUNE)
    return data.with_options(_options(deterministic=True))
