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
