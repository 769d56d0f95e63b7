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


# The tf.data service (train.py --data_service, data_service.py): TensorFlow's servers speak gRPC;
# the ports are data_service.py's defaults, one for the dispatcher and one per worker host.
DATA_SERVICE_PROTOCOL = "grpc"
SERVICE_ROLES = ("dispatcher", "worker")  # data_service.py --role
DISPATCHER_PORT = 5050
WORKER_PORT = 5051


def service_address(address: str) -> str:
    """Returns `address` ("grpc://HOST:PORT" or "HOST:PORT") as "grpc://HOST:PORT".

    Raises:
      ValueError: another protocol, or no host or port, naming the expected form.
    """
    protocol, separator, rest = address.partition("://")
    if not separator:
        protocol, rest = DATA_SERVICE_PROTOCOL, address
    host, colon, port = rest.rpartition(":")
    if protocol != DATA_SERVICE_PROTOCOL or not colon or not host or "/" in rest or not port.isdigit():
        raise ValueError(f"{address!r} is not a tf.data service dispatcher address; give "
                         f"{DATA_SERVICE_PROTOCOL}://HOST:PORT (data_service.py --role=dispatcher listens "
                         f"on port {DISPATCHER_PORT} by default)")
    return f"{DATA_SERVICE_PROTOCOL}://{host}:{port}"


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
      gpu_visible: whether TensorFlow sees a GPU (see `models.distribute.resolve_transfer`).

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
