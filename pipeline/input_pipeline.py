"""tf.data input pipelines over the TFRecord shards: one straight chain for training, one for eval.

Both emit dicts {"image": float32 (B, S, S, 3) in 0..255, "label": int32 (B,), "image_id": string (B,)}.
The model normalises its own input (see models/), so one stream serves every backbone.
"""

from __future__ import annotations

import tensorflow as tf

from pipeline import manifest as manifest_lib
from pipeline import records

AUTOTUNE = tf.data.AUTOTUNE
DEFAULT_SHUFFLE_BUFFER = 2048


def _to_model_inputs(batch: dict[str, tf.Tensor], image_size: int) -> dict[str, tf.Tensor]:
    images = tf.map_fn(
        lambda encoded: records.decode_image(encoded, image_size),
        batch[records.IMAGE],
        fn_output_signature=tf.TensorSpec([image_size, image_size, 1], tf.uint8),
    )
    images = tf.image.grayscale_to_rgb(tf.cast(images, tf.float32))
    return {
        "image": images,
        "label": tf.cast(batch[records.LABEL], tf.int32),
        "image_id": batch[records.IMAGE_ID],
    }


def _per_replica_batch(global_batch_size: int, input_context) -> int:
    if input_context is None:
        return global_batch_size
    return input_context.get_per_replica_batch_size(global_batch_size)


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
) -> tf.data.Dataset:
    """Returns the infinite, shuffled training stream of `split` (full batches only).

    Args:
      data_dir: the builder's output folder (holds manifest.json).
      split: e.g. "train".
      global_batch_size: batch over all replicas; each input pipeline emits its per-replica share.
      image_size: side of the stored images (must match the build).
      seed: file order and record shuffle seed.
      deterministic: reproducible element order (slower).
      shuffle_buffer: records in the shuffle buffer.
      cache: keep decoded images in RAM after the first epoch.
      input_context: from `strategy.distribute_datasets_from_function`.

    Raises:
      ValueError: fewer shards than input pipelines.
    """
    paths = manifest_lib.shard_paths(data_dir, split)
    files = tf.data.Dataset.from_tensor_slices(paths)
    if input_context is not None and input_context.num_input_pipelines > 1:
        if len(paths) < input_context.num_input_pipelines:
            raise ValueError(
                f"split {split!r} has {len(paths)} shard(s) but {input_context.num_input_pipelines} "
                "input pipelines read it; rebuild with --num_shards >= the worker count"
            )
        files = files.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    files = files.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    data = files.interleave(
        tf.data.TFRecordDataset, cycle_length=min(len(paths), 8), num_parallel_calls=AUTOTUNE,
        deterministic=deterministic,
    )
    if cache:
        data = data.cache()
    # Shuffle before repeat, so one epoch is seen whole before the next begins.
    data = data.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    data = data.repeat()
    data = data.batch(_per_replica_batch(global_batch_size, input_context), drop_remainder=True)
    data = data.map(records.parse_example, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    data = data.map(lambda b: _to_model_inputs(b, image_size), num_parallel_calls=AUTOTUNE,
                    deterministic=deterministic)
    options = tf.data.Options()
    options.deterministic = deterministic
    data = data.with_options(options)
    return data.prefetch(AUTOTUNE)


def make_eval_dataset(
    data_dir: str,
    split: str,
    global_batch_size: int,
    image_size: int,
    *,
    cache: bool = False,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """Returns `split` once, in manifest order, keeping the last partial batch.

    Every record appears exactly once and carries its image id.
    """
    paths = manifest_lib.shard_paths(data_dir, split)
    files = tf.data.Dataset.from_tensor_slices(paths)
    if input_context is not None and input_context.num_input_pipelines > 1:
        files = files.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    # Ordered: one file after the other, records in file order.
    data = files.flat_map(tf.data.TFRecordDataset)
    if cache:
        data = data.cache()
    data = data.batch(_per_replica_batch(global_batch_size, input_context), drop_remainder=False)
    data = data.map(records.parse_example, num_parallel_calls=AUTOTUNE, deterministic=True)
    data = data.map(lambda b: _to_model_inputs(b, image_size), num_parallel_calls=AUTOTUNE,
                    deterministic=True)
    return data.prefetch(AUTOTUNE)
