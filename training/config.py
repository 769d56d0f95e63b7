"""The frozen configuration of one training run: a field per `train.py` flag, resolved against the data."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from contracts import run_folder
from contracts.atomic import write_json
from contracts.errors import UserInputError
from contracts.manifest import ShardFolder
from models import registry
from pipeline import options

CLASS_WEIGHTS = ("none", "balanced")
STRATEGIES = ("auto", "default", "mirrored", "multi_worker")  # see models.distribute.resolve_strategy
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")  # see models.distribute.resolve_precision



@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run. None means "the backbone's or the data's default" until `resolve_config`."""

    backbone: str  # a registry name; "tiny_test" only from Python (tests)
    data_dir: str  # shard folder holding manifest.json
    train_split: str = "train"
    val_split: str = "val"
    image_size: int | None = None  # None: the manifest's image size
    weights: str = "imagenet"  # "imagenet", "none" or a local weights file
    augment: str = "auto"  # auto: the backbone's reference setting
    shuffle_buffer: int = options.DEFAULT_SHUFFLE_BUFFER
    cache: bool = False  # keep decoded images in RAM after the first epoch
    deterministic: bool = False  # reproducible record order (slower input)
    transfer: str = options.DEFAULT_TRANSFER  # images to the device as uint8 gray or float32 RGB
    strategy: str = "auto"  # see models.distribute.resolve_strategy
    precision: str = "auto"  # see models.distribute.resolve_precision
    jit_compile: bool = False  # XLA for the forward and backward pass
    global_batch_size: int = 32  # over all replicas; each replica gets an equal share
    epochs: int | None = None  # None: the backbone's reference epochs
    steps_per_epoch: int | None = None  # None: one pass over the train split
    learning_rate: float | None = None  # None: the backbone's reference learning rate
    class_weight: str = "none"  # balanced: weight each class by n / (2 * n_class)
    validation: bool = True  # score the val split after every epoch
    seed: int = 0  # weights, dropout, augmentation and shuffling
    early_stopping_patience: int = 3  # epochs without a better val AUROC before stopping
    reduce_lr_patience: int = 2  # epochs without a lower val loss before reducing the LR
    reduce_lr_factor: float = 0.2  # LR multiplier on a plateau
    min_learning_rate: float = 1e-7  # floor of the LR reductions
    keep_checkpoints: int = 2  # checkpoints kept in model_dir/checkpoints
    batchnorm_momentum: float | None = None  # None: the backbone's own (0.99)
    feature_layer: str | None = None  # None: the whole backbone; see registry.resolve_feature_layer
    data_service: str | None = None  # "grpc://HOST:PORT": the training input runs on a tf.data service


# Fields that change the model or its data: resuming with another value would mix two runs.
RESUME_MUST_MATCH = ("backbone", "image_size", "augment", "feature_layer", "train_split", "val_split")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserInputError(f"{name}={value!r} is not valid; choose one of {', '.join(choices)}")


def resolve_config(config: TrainConfig, shards: ShardFolder | None = None) -> TrainConfig:
    """Fills every None with the backbone's or the data's default and checks the values.

    Args:
      config: as given by the user.

    Returns:
      The config with image_size, augment ("on"/"off"), epochs, steps_per_epoch and learning_rate
      set, and feature_layer a layer name or None.

    Raises:
      UserInputError: an unknown backbone or choice, a split the manifest lacks, an image size the
        shards were not built at, or a train split smaller than one global batch.
      FileNotFoundError: data_dir has no manifest.json.
    """
    try:
        spec = registry.get_backbone(config.backbone)
    except ValueError as err:
        raise UserInputError(str(err)) from err
    _check_choice("augment", config.augment, options.AUGMENT_MODES)
    _check_choice("class_weight", config.class_weight, CLASS_WEIGHTS)
    _check_choice("transfer", config.transfer, options.TRANSFERS)
    if config.global_batch_size < 1:
        raise UserInputError(f"global_batch_size must be >= 1, got {config.global_batch_size}")
    data_service = _data_service(config)
    shards = shards or ShardFolder.open(config.data_dir)
    image_size = shards.check_image_size(
        config.image_size, "pass --image_size={stored} (or leave it unset), or rebuild the shards at {asked}")
    train_records = shards.split(config.train_split).records
    if config.validation:
        shards.split(config.val_split)
    steps = config.steps_per_epoch or train_records // config.global_batch_size
    if steps < 1:
        raise UserInputError(
            f"split {config.train_split!r} has {train_records} records, fewer than one global batch of "
            f"{config.global_batch_size}; lower --global_batch_size"
        )
    augment = "on" if options.augmentation_enabled(config.augment, spec.augment) else "off"
    return dataclasses.replace(
        config,
        image_size=image_size,
        augment=augment,
        epochs=spec.epochs if config.epochs is None else config.epochs,
        steps_per_epoch=steps,
        learning_rate=spec.learning_rate if config.learning_rate is None else config.learning_rate,
        feature_layer=registry.resolve_feature_layer(config.backbone, config.feature_layer),
        data_service=data_service,
    )


def _data_service(config: TrainConfig) -> str | None:
    """The dispatcher's address in one form, after refusing what the service cannot honour."""
    if not config.data_service:
        return None
    try:
        address = options.service_address(config.data_service)
    except ValueError as err:
        raise UserInputError(f"--data_service: {err}") from None
    for flag in ("cache", "deterministic"):
        if getattr(config, flag):
            raise UserInputError(f"--{flag} with --data_service: the service decodes on its workers and "
                              f"hands out files as they ask, so it has no trainer-side cache and no fixed "
                              f"order; drop one of the two")
    return address


def class_weights(config: TrainConfig, shards: ShardFolder) -> tuple[float, float] | None:
    """Returns (weight of normal, weight of abnormal) for --class_weight=balanced, else None.

    Raises:
      UserInputError: balanced weights asked for a train split that lacks one of the classes.
    """
    if config.class_weight == "none":
        return None
    info = shards.split(config.train_split)
    counts = (info.normal, info.abnormal)
    if min(counts) == 0:
        raise UserInputError(
            f"split {config.train_split!r} has {counts[0]} normal and {counts[1]} abnormal records; "
            "balanced class weights need both classes (use --class_weight=none)"
        )
    total = sum(counts)
    return tuple(total / (2.0 * n) for n in counts)


def check_resumable(config: TrainConfig, model_dir: str) -> None:
    """Refuses to continue a run in `model_dir` that was started with a different model or data.

    Raises:
      UserInputError: `model_dir/config.json` disagrees on a `RESUME_MUST_MATCH` field.
    """
    path = os.path.join(model_dir, run_folder.CONFIG)
    if not os.path.exists(path):
        return
    with open(path) as f:
        previous = json.load(f)
    new = dataclasses.asdict(config)
    for name in RESUME_MUST_MATCH:
        if name in previous and previous[name] != new[name]:
            raise UserInputError(
                f"{model_dir} holds a run with {name}={previous[name]!r}, this one has {new[name]!r}; "
                "use another --model_dir, or the same flags to resume that run"
            )


def write_config(config: TrainConfig, model_dir: str, runtime: dict[str, Any]) -> str:
    """Writes `model_dir/config.json`: every resolved field, plus `runtime` (strategy, replicas, precision).

    Returns:
      The path written.
    """
    path = os.path.join(model_dir, run_folder.CONFIG)
    write_json(path, {**dataclasses.asdict(config), "model_dir": model_dir, "runtime": runtime})
    return path
