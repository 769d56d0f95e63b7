"""The frozen configuration of one training run (a field per train.py flag), resolved against the data."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Collection, Iterator

from contracts import run_folder
from contracts.atomic import write_json
from contracts.errors import UserInputError, check_output_folder
from contracts.manifest import ShardFolder
from contracts.settings import REQUIRED, Shared, check, resume_must_match, setting
from contracts.shared import DATA_DIR, IMAGE_SIZE, MODEL_DIR, SEED
from models import registry
from models.registry import PRECISIONS, STRATEGIES
from pipeline import options

CLASS_WEIGHTS = ("none", "balanced")
# 2: the TrainConfig fields and format_version; 1 (no key): before, with Keras callbacks' state saved.
CONFIG_FORMAT_VERSION = 2
# What a run written before a `resume_must_match` field existed had: no findings head.
BEFORE_THE_FIELD = {"findings_weight": 0.0}

GLOBAL_BATCH_SIZE = Shared("global_batch_size", None, "Images per step over all replicas (each replica "
                           "gets an equal share).", lower=1)
STRATEGY = Shared("strategy", "auto", "auto: multi_worker with a multi-worker TF_CONFIG, mirrored with "
                  "several GPUs, else default.", STRATEGIES)
PRECISION = Shared("precision", "auto", "Dtype policy the models compute under; auto: mixed_float16 on GPU, "
                   "float32 on CPU.", PRECISIONS)
WEIGHTS = Shared("weights", "imagenet", "Initial backbone weights: imagenet (downloaded, or from the Keras "
                 "cache ~/.keras/models), none (random) or a local weights file for the backbone without "
                 "its top.")
EPOCHS = Shared("epochs", None, "Training epochs.", lower=1)
LEARNING_RATE = Shared("learning_rate", None, "Initial learning rate.", lower=0.0)
BATCHNORM_MOMENTUM = Shared("batchnorm_momentum", None, (
    "Momentum of every BatchNormalization's moving statistics (default: the backbone's 0.99). Lower it "
    "(e.g. 0.9) for short runs from scratch, whose inference statistics otherwise lag."),
    lower=0.0, upper=0.999)


class _Backbones(Collection[str]):
    """The --backbone choices: the registry's user-facing entries, live; tests' backbones pass from Python."""

    def __iter__(self) -> Iterator[str]:
        return iter(registry.BACKBONES)

    def __len__(self) -> int:
        return len(registry.BACKBONES)

    def __contains__(self, name: object) -> bool:
        return name in registry.BACKBONES or name in registry.TEST_BACKBONES


def _feature_layer_help() -> str:
    cuts = ", ".join(f"{name} {spec.from_scratch_feature_layer}" for name, spec in registry.BACKBONES.items()
                     if spec.from_scratch_feature_layer)
    return ("Cut the backbone at this layer: its output feeds the head. Default: the whole backbone. "
            f"'{registry.FEATURE_LAYER_FROM_SCRATCH}': the layer that learns from random weights in a CPU "
            f"budget ({cuts}; the others whole), for short runs from scratch at small image sizes.")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run. None means "the backbone's or the data's default" until `resolve_config`."""

    backbone: str = setting(REQUIRED, "Model to train (models/registry.py).", choices=_Backbones(),
                            resume_must_match=True)
    data_dir: str = DATA_DIR.field(REQUIRED)
    model_dir: str = MODEL_DIR.field(REQUIRED, note=(
        "Here: the output folder (contracts/run_folder.py lists its files). Rerunning the same command "
        "there resumes after the last finished epoch."))
    train_split: str = setting("train", "Split of --data_dir to train on.", resume_must_match=True)
    val_split: str = setting("val", "Split of --data_dir to validate on.", resume_must_match=True)
    image_size: int | None = IMAGE_SIZE.field(note="Default and only valid value: the size the shards were "
                                                   "built at.", resume_must_match=True)
    weights: str = WEIGHTS.field()
    augment: str = setting("auto", (
        "In-model training augmentation (rotation 10 deg, shifts 10%, shear 10 deg, zoom 10%); auto: the "
        "backbone's reference (on for EfficientNet and DenseNet, off for ResNet)."),
        choices=options.AUGMENT_MODES, resume_must_match=True)
    shuffle_buffer: int = setting(options.DEFAULT_SHUFFLE_BUFFER, (
        "Serialized training records in the shuffle buffer (~22 KB each at 224x224 PNG)."), lower=1)
    cache: bool = setting(False, "Keep decoded grayscale images in RAM after the first epoch (~50 KB per "
                          "224x224 image, ~5.6 GB for all of NIH).")
    deterministic: bool = setting(False, "Same seed, same input order, batch for batch.")
    transfer: str = options.TRANSFER.field()
    strategy: str = STRATEGY.field()
    precision: str = PRECISION.field(note=(
        "Training under mixed_float16 scales the loss. A run resumes under the policy it started with: the "
        "epoch it keeps is chosen under it."), resume_must_match=True)
    jit_compile: bool = setting(False, "Compile the forward and backward pass with XLA.")
    global_batch_size: int = GLOBAL_BATCH_SIZE.field(32)
    epochs: int | None = EPOCHS.field(note=lambda: f"Default: the backbone's reference "
                                           f"({registry.describe('epochs')}).")
    steps_per_epoch: int | None = setting(None, "Default: one pass over the train split (records // global "
                                          "batch).", lower=1)
    learning_rate: float | None = LEARNING_RATE.field(note=lambda: f"Default: the backbone's reference "
                                                      f"({registry.describe('learning_rate', '{:g}')}).")
    findings_weight: float = setting(1.0, (
        "Weight of the findings head's loss (the mean over NIH's 14 findings of each one's binary "
        "cross-entropy, on records whose findings are known) beside the binary loss. 0: no findings head, "
        "the binary classifier alone (the reference's). Off by itself when the train split has no finding "
        "labels."), lower=0.0, resume_must_match=True)
    finding_pos_weight_cap: float = setting(10.0, (
        "Cap of each finding's positive weight, negatives / positives in the train split (Hernia is 0.2% "
        "of NIH: uncapped, its rare positives would dominate the loss)."), lower=1.0)
    class_weight: str = setting("none", "balanced: weight each class's loss by records / (2 * class "
                                "records) of the train split.", choices=CLASS_WEIGHTS)
    validation: bool = setting(True, "Score the val split after every epoch (drives early stopping, LR "
                               "reduction and model.keras).")
    seed: int = SEED.field(note="Here: initial weights, dropout, augmentation and shuffling.")
    early_stopping_patience: int = setting(3, "Epochs without a better val AUROC before stopping.", lower=1)
    reduce_lr_patience: int = setting(2, "Epochs without a lower val loss before multiplying the LR by "
                                      "--reduce_lr_factor.", lower=1)
    reduce_lr_factor: float = setting(0.2, "LR multiplier on a plateau.", lower=0.0, upper=1.0)
    min_learning_rate: float = setting(1e-7, "Floor of the LR reductions.", lower=0.0)
    keep_checkpoints: int = setting(2, "Checkpoints kept in --model_dir/checkpoints.", lower=1)
    batchnorm_momentum: float | None = BATCHNORM_MOMENTUM.field()
    feature_layer: str | None = setting(None, _feature_layer_help, resume_must_match=True)
    data_service: str | None = setting(None, (
        "grpc://HOST:PORT of a tf.data service dispatcher (data_service.py): the training input runs on its "
        "workers, each train record to one trainer per pass. Not with --cache or --deterministic."))

    def __post_init__(self):
        check(self)


def resolve_config(config: TrainConfig, shards: ShardFolder | None = None) -> TrainConfig:
    """The config with every None filled from the backbone or the data (augment "on"/"off"), checked
    against the data: raises UserInputError for a split the manifest lacks, an image size the shards
    were not built at, a train split under one global batch, an unusable model_dir or data_service."""
    check_output_folder(config.model_dir, "model_dir")
    spec = registry.get_backbone(config.backbone)
    data_service = _data_service(config)
    shards = shards or ShardFolder.open(config.data_dir)
    image_size = shards.check_image_size(
        config.image_size, "pass image_size={stored} (or leave it unset), or rebuild the shards at {asked}")
    train_records = shards.split(config.train_split).records
    if config.validation:
        shards.split(config.val_split)
    steps = config.steps_per_epoch or train_records // config.global_batch_size
    if steps < 1:
        raise UserInputError(f"split {config.train_split!r} has {train_records} records, fewer than one "
                             f"global batch; lower global_batch_size={config.global_batch_size} to "
                             f"{train_records} or less")
    augment = "on" if options.augmentation_enabled(config.augment, spec.augment) else "off"
    return dataclasses.replace(
        config, image_size=image_size, augment=augment, steps_per_epoch=steps, data_service=data_service,
        epochs=spec.epochs if config.epochs is None else config.epochs,
        learning_rate=spec.learning_rate if config.learning_rate is None else config.learning_rate,
        feature_layer=registry.resolve_feature_layer(config.backbone, config.feature_layer))


def _data_service(config: TrainConfig) -> str | None:
    """The dispatcher's address in one form, after refusing what the service cannot honour."""
    if not config.data_service:
        return None
    try:
        address = options.service_address(config.data_service)
    except ValueError as err:
        raise UserInputError(f"data_service={config.data_service}: {err}") from None
    for name in ("cache", "deterministic"):
        if getattr(config, name):
            raise UserInputError(f"{name}=True and data_service={config.data_service} together: the "
                                 "service decodes on its workers and hands out files as they ask, so it has "
                                 "no trainer-side cache and no fixed order; drop one of the two")
    return address


def class_weights(config: TrainConfig, shards: ShardFolder) -> tuple[float, float] | None:
    """(weight of normal, weight of abnormal) for class_weight=balanced, else None."""
    if config.class_weight == "none":
        return None
    info = shards.split(config.train_split)
    counts = (info.normal, info.abnormal)
    if min(counts) == 0:
        raise UserInputError(f"split {config.train_split!r} has {counts[0]} normal and {counts[1]} abnormal "
                             "records; balanced class weights need both classes (class_weight=none)")
    total = sum(counts)
    return tuple(total / (2.0 * n) for n in counts)


def check_resumable(config: TrainConfig) -> None:
    """Raises UserInputError when `config.model_dir` holds a run of an older version or of another
    model or data (a `resume_must_match` setting that differs), naming the folder and the fix."""
    path = os.path.join(config.model_dir, run_folder.CONFIG)
    if not os.path.exists(path):
        return
    with open(path) as f:
        previous = json.load(f)
    version = previous.get("format_version", 1)
    if version != CONFIG_FORMAT_VERSION:
        raise UserInputError(f"{config.model_dir} holds a run of an older train.py ({run_folder.CONFIG} "
                             f"format {version}, this version resumes {CONFIG_FORMAT_VERSION}); train in "
                             "another model_dir (predict.py and export.py still read this one)")
    new = dataclasses.asdict(config)
    for name in resume_must_match(TrainConfig):
        if name not in previous and name in BEFORE_THE_FIELD:
            previous[name] = BEFORE_THE_FIELD[name]
        if name in previous and previous[name] != new[name]:
            raise UserInputError(f"{config.model_dir} holds a run with {name}={previous[name]!r}, this one "
                                 f"has {new[name]!r}; use another model_dir, or the same settings to resume "
                                 "that run")


def write_config(config: TrainConfig, runtime: dict[str, Any]) -> str:
    """Writes `model_dir/config.json` (the config, its format version and `runtime`); returns its path."""
    path = os.path.join(config.model_dir, run_folder.CONFIG)
    write_json(path, {"format_version": CONFIG_FORMAT_VERSION, **dataclasses.asdict(config),
                      "runtime": runtime})
    return path
