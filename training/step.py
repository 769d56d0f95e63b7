"""The one distributed training step and the distributed scoring step, unchanged under every strategy.

Keras 3 `Model.fit` fails under MultiWorkerMirroredStrategy, so training is `strategy.run` of a
replica step inside a `tf.function`, over a dataset from `distribute_datasets_from_function`.
"""

from __future__ import annotations

from typing import Callable, Sequence

import keras
import tensorflow as tf

from models import AUGMENTATION_LAYER, inference_model
from models.front import GrayToRGB

SUM = tf.distribute.ReduceOp.SUM


def without_ids(batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """Keeps what the training step reads; use it as the last `map` of the training stream.

    String tensors cannot be prefetched to a GPU, and the step never reads the image ids.
    """
    return {"image": batch["image"], "label": batch["label"]}


def make_optimizer(name: str, learning_rate: float, precision: str) -> keras.optimizers.Optimizer:
    """Returns the backbone's optimizer, wrapped for dynamic loss scaling under mixed_float16.

    Raises:
      ValueError: an optimizer name other than "adam" or "sgd".
    """
    if name == "adam":
        optimizer = keras.optimizers.Adam(learning_rate)
    elif name == "sgd":
        optimizer = keras.optimizers.SGD(learning_rate)
    else:
        raise ValueError(f"unknown optimizer {name!r}; the registry may name 'adam' or 'sgd'")
    if precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def _agree_on_finiteness(grads: list[tf.Tensor]) -> list[tf.Tensor]:
    # LossScaleOptimizer decides per replica whether to skip the step, assuming every replica sees
    # the same finiteness. Each replica's gradients are still local here, so one replica could skip
    # while another applies, and their collectives would then diverge. Poison every replica's
    # gradients when any replica's are not finite, so all of them skip together.
    finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads if g is not None])
    bad = tf.distribute.get_replica_context().all_reduce(SUM, 1.0 - tf.cast(finite, tf.float32))
    poison = tf.where(bad > 0.0, float("nan"), 0.0)
    return [g if g is None else g + tf.cast(poison, g.dtype) for g in grads]


def _split_augmentation(model: keras.Model) -> tuple[keras.Layer | None, keras.Model]:
    # The augmentation block has no weights: the classifier behind it holds every trainable
    # variable of `model`.
    classifier = inference_model(model)
    if classifier is model:
        return None, model
    return model.get_layer(AUGMENTATION_LAYER), classifier


def make_train_step(
    strategy: tf.distribute.Strategy,
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    *,
    global_batch_size: int,
    class_weights: Sequence[float] | None = None,
    jit_compile: bool = False,
    uint8_input: bool = False,
) -> Callable:
    """Builds `step(iterator) -> (loss, probabilities, labels)`, one optimizer update per call.

    Each replica sums its (class-weighted) cross-entropy and divides by the *global* batch size;
    the optimizer sums the replicas' gradients, so the update is that of the mean over the global batch.

    Args:
      strategy: the strategy `model` and `optimizer` were built under.
      model: maps images to (B, 2) probabilities.
      optimizer: from `make_optimizer`, built on the model's trainable variables.
      global_batch_size: images per step over all replicas.
      class_weights: (normal, abnormal) loss weights, or None.
      jit_compile: compile the forward and backward pass with XLA.
      uint8_input: the batches hold uint8 gray (B, S, S, 1) images (`--transfer=uint8`); the uint8
        front (`models.front`) makes the model's float32 RGB input from them on the device.

    Returns:
      A `tf.function`; it returns the global mean loss and the probabilities and labels of the whole
      global batch (gathered from every replica and worker).
    """
    scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    weights = None if class_weights is None else tf.constant(class_weights, tf.float32)
    # The augmentation's image transform has no XLA kernel: under XLA it runs before the
    # compiled part, on its own.
    augmentation, body = _split_augmentation(model) if jit_compile else (None, model)
    front = GrayToRGB() if uint8_input else None

    def forward_backward(images, labels):
        with tf.GradientTape() as tape:
            probabilities = body(images, training=True)
            per_example = keras.losses.sparse_categorical_crossentropy(labels, probabilities)
            if weights is not None:
                per_example = per_example * tf.gather(weights, labels)
            loss = tf.reduce_sum(per_example) / global_batch_size
            objective = optimizer.scale_loss(loss) if scaled else loss
        return loss, probabilities, tape.gradient(objective, model.trainable_variables)

    if jit_compile:
        # Only the per-replica compute is compiled: the gradient all-reduce inside the optimizer
        # stays outside XLA, which works under every strategy.
        forward_backward = tf.function(forward_backward, jit_compile=True)

    def replica_step(batch):
        images = batch["image"]
        if front is not None:  # first: the augmentation, like the model, takes float32 RGB
            images = front(images)
        if augmentation is not None:
            images = augmentation(images, training=True)
        loss, probabilities, grads = forward_backward(images, batch["label"])
        if scaled:
            grads = _agree_on_finiteness(grads)
        optimizer.apply(grads, model.trainable_variables)
        return loss, probabilities, batch["label"]

    @tf.function
    def step(iterator):
        loss, probabilities, labels = strategy.run(replica_step, args=(next(iterator),))
        return (strategy.reduce(SUM, loss, axis=None), strategy.gather(probabilities, axis=0),
                strategy.gather(labels, axis=0))

    return step


def make_state_sync(strategy: tf.distribute.Strategy, model: keras.Model) -> Callable:
    """Builds `sync()`, which sets every replica's non-trainable float variables to their mean.

    Keras 3 creates BatchNormalization's moving statistics without a cross-replica aggregation, so
    each replica (and each worker) updates only its own copy from its own batches. Averaging them
    after each epoch gives one set of statistics, the same on every worker, for validation,
    checkpoints and the exported model.
    """
    variables = [v for v in model.non_trainable_variables
                 if v.dtype in ("float16", "bfloat16", "float32", "float64")]

    def replica_fn():
        context = tf.distribute.get_replica_context()
        for variable in variables:
            # tf.identity reads this replica's own copy.
            mean = context.all_reduce(tf.distribute.ReduceOp.MEAN, tf.identity(variable.value))
            variable.assign(mean)

    @tf.function
    def sync():
        strategy.run(replica_fn)

    return sync


def make_predict_step(strategy: tf.distribute.Strategy, model: keras.Model) -> Callable:
    """Builds `step(images) -> per-replica probabilities` for a distributed batch of images.

    Inference only: no collective runs, so each worker may score batches the others never see.
    """

    @tf.function(reduce_retracing=True)
    def step(images):
        return strategy.run(lambda x: model(x, training=False), args=(images,))

    return step
