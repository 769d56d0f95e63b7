"""The training and scoring steps (Keras 3's `Model.fit` fails under MultiWorkerMirroredStrategy)."""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import keras
import tensorflow as tf

from models import split_augmentation
from models.front import GrayToRGB
from models.heads import split_outputs

SUM = tf.distribute.ReduceOp.SUM


@dataclasses.dataclass(frozen=True)
class FindingsLoss:
    """weight * mean over findings of pos_weight-weighted binary cross-entropy, on known records only."""
    weight: float
    pos_weights: tuple[float, ...]  # contracts.labels.FINDINGS order

    def per_example(self, probabilities: tf.Tensor, findings: tf.Tensor, known: tf.Tensor) -> tf.Tensor:
        epsilon = keras.config.epsilon()  # the clip of Keras' own cross-entropies: log(0) never happens
        p = tf.clip_by_value(probabilities, epsilon, 1.0 - epsilon)
        y = tf.cast(findings, tf.float32)
        positive = tf.constant(self.pos_weights, tf.float32) * y * tf.math.log(p)
        bce = -(positive + (1.0 - y) * tf.math.log(1.0 - p))
        return self.weight * tf.reduce_mean(bce, axis=-1) * tf.cast(known, tf.float32)


def without_ids(batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    # The training stream's last map: strings cannot be prefetched to a GPU.
    return {key: batch[key] for key in ("image", "label", "findings", "findings_known")}


def make_optimizer(name: str, learning_rate: float, precision: str) -> keras.optimizers.Optimizer:
    """The registry's optimizer ("adam" or "sgd"), with dynamic loss scaling under mixed_float16."""
    optimizer = {"adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD}[name](learning_rate)
    if precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def _agree_on_finiteness(grads: list[tf.Tensor]) -> list[tf.Tensor]:
    # LossScaleOptimizer skips a step per replica: one could skip while another applies, and their
    # collectives would diverge. Poison all replicas' gradients when any is not finite.
    finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads if g is not None])
    bad = tf.distribute.get_replica_context().all_reduce(SUM, 1.0 - tf.cast(finite, tf.float32))
    poison = tf.where(bad > 0.0, float("nan"), 0.0)
    return [g if g is None else g + tf.cast(poison, g.dtype) for g in grads]


def make_train_step(strategy: tf.distribute.Strategy, model: keras.Model,
                    optimizer: keras.optimizers.Optimizer, *, global_batch_size: int,
                    class_weights: Sequence[float] | None = None, jit_compile: bool = False,
                    uint8_input: bool = False, findings: FindingsLoss | None = None) -> Callable:
    """Builds `step(iterator) -> (loss, softmax, labels)` of the global batch, one update a call; the
    loss adds `findings`' (the model has the findings head then)."""
    scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    weights = None if class_weights is None else tf.constant(class_weights, tf.float32)
    # The augmentation has no weights and no XLA kernel: it runs first, outside the compiled part.
    augmentation, classifier = split_augmentation(model)
    front = GrayToRGB() if uint8_input else None

    def forward_backward(images, labels, finding_labels, known):
        with tf.GradientTape() as tape:
            probabilities, per_finding = split_outputs(classifier(images, training=True))
            per_example = keras.losses.sparse_categorical_crossentropy(labels, probabilities)
            if weights is not None:
                per_example = per_example * tf.gather(weights, labels)
            if findings is not None:
                per_example = per_example + findings.per_example(per_finding, finding_labels, known)
            loss = tf.reduce_sum(per_example) / global_batch_size  # the replicas' gradients are summed
            objective = optimizer.scale_loss(loss) if scaled else loss
        return loss, probabilities, tape.gradient(objective, model.trainable_variables)

    if jit_compile:
        # Only the per-replica compute: the optimizer's all-reduce stays outside XLA.
        forward_backward = tf.function(forward_backward, jit_compile=True)

    def replica_step(batch):
        images = batch["image"]
        if front is not None:  # first: the augmentation, like the model, takes float32 RGB
            images = front(images)
        if augmentation is not None:
            images = augmentation(images, training=True)
        targets = (batch["findings"], batch["findings_known"]) if findings is not None else (None, None)
        loss, probabilities, grads = forward_backward(images, batch["label"], *targets)
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
    """Builds `sync()`, averaging BatchNormalization's statistics, which Keras 3 keeps per replica."""
    variables = [v for v in model.non_trainable_variables
                 if v.dtype in ("float16", "bfloat16", "float32", "float64")]

    def replica_fn():
        context = tf.distribute.get_replica_context()
        for variable in variables:  # tf.identity reads this replica's own copy
            variable.assign(context.all_reduce(tf.distribute.ReduceOp.MEAN, tf.identity(variable.value)))

    @tf.function
    def sync():
        strategy.run(replica_fn)

    return sync


def make_predict_step(strategy: tf.distribute.Strategy, model: keras.Model) -> Callable:
    """Builds `step(images) -> per-replica probabilities`; no collective, so workers may score apart."""

    @tf.function(reduce_retracing=True)
    def step(images):
        return strategy.run(lambda x: model(x, training=False), args=(images,))

    return step
