"""The input pipeline's and the augmentation's settings that flags and configs need, without TensorFlow."""

# Serialized records in the shuffle buffer (~26 KB each for a builder-made 224x224 PNG). The
# builder writes records in a seeded random order, so the buffer only has to mix the shards being
# read; 2,048 does that for ~150 MB of RAM (peak RSS by buffer size: bench/RESULTS.md).
DEFAULT_SHUFFLE_BUFFER = 2048

# --augment: "auto" takes the backbone's reference setting, "on"/"off" force it.
AUGMENT_MODES = ("auto", "on", "off")


def augmentation_enabled(mode: str, backbone_default: bool) -> bool:
    """Resolves `--augment`: "auto" takes the backbone's default, "on"/"off" force it.

    Args:
      mode: one of `AUGMENT_MODES`.
      backbone_default: the registry's default (the reference: on for EfficientNet and DenseNet,
        off for ResNet).

    Raises:
      ValueError: an unknown mode, listing the valid ones.
    """
    if mode not in AUGMENT_MODES:
        raise ValueError(f"augment mode must be one of {', '.join(AUGMENT_MODES)}; got {mode!r}")
    if mode == "auto":
        return backbone_default
    return mode == "on"


# --transfer: what a batch of images is when it leaves the input pipeline for the model's device.
UINT8 = "uint8"  # the decoded gray bytes (B, S, S, 1); the model's front makes float32 RGB on the device
FLOAT32 = "float32"  # float32 RGB (B, S, S, 3) 0..255 made on the host: 12 bytes per pixel instead of 1
TRANSFERS = ("auto", UINT8, FLOAT32)
DEFAULT_TRANSFER = "auto"
# What "auto" means without a GPU, where the device is the host itself and the front's cast and
# copy is host work too: the same float32 RGB write the float pipeline does, so uint8 saved no host
# CPU per image there (the figures: README, "Performance on GPUs"; bench/RESULTS.md).
CPU_TRANSFER = FLOAT32


def resolve_transfer(mode: str, gpu_visible: bool) -> str:
    """Resolves `--transfer`: "auto" is uint8 with a GPU and `CPU_TRANSFER` without one.

    Args:
      mode: one of `TRANSFERS`.
      gpu_visible: whether TensorFlow sees a GPU (see `training.distribute.resolve_transfer`).

    Returns:
      `UINT8` or `FLOAT32`.

    Raises:
      ValueError: an unknown mode, listing the valid ones.
    """
    if mode not in TRANSFERS:
        raise ValueError(f"transfer must be one of {', '.join(TRANSFERS)}; got {mode!r}")
    if mode == "auto":
        return UINT8 if gpu_visible else CPU_TRANSFER
    return mode
