"""The input pipeline's, the augmentation's and the tf.data service's settings, without TensorFlow."""

from __future__ import annotations

import dataclasses

from contracts.errors import UserInputError
from contracts.settings import REQUIRED, Shared, check, setting

# Records in the shuffle buffer (~26 KB each at 224x224 PNG): the builder's seeded record order leaves
# it only the shards to mix, which 2,048 does for ~150 MB of RAM (bench/RESULTS.md).
DEFAULT_SHUFFLE_BUFFER = 2048
AUGMENT_MODES = ("auto", "on", "off")  # auto: the backbone's reference setting


def augmentation_enabled(mode: str, backbone_default: bool) -> bool:
    """The augment setting resolved: "auto" takes the backbone's default, "on"/"off" force it."""
    if mode not in AUGMENT_MODES:
        raise ValueError(f"augment mode must be one of {', '.join(AUGMENT_MODES)}; got {mode!r}")
    if mode == "auto":
        return backbone_default
    return mode == "on"


# The tf.data service: TensorFlow's servers speak gRPC; one port for the dispatcher, one per worker host.
DATA_SERVICE_PROTOCOL = "grpc"
SERVICE_ROLES = ("dispatcher", "worker")
DISPATCHER_PORT = 5050
WORKER_PORT = 5051


def service_address(address: str) -> str:
    """`address` ("grpc://HOST:PORT" or "HOST:PORT") as "grpc://HOST:PORT"; ValueError otherwise."""
    protocol, separator, rest = address.partition("://")
    if not separator:
        protocol, rest = DATA_SERVICE_PROTOCOL, address
    host, colon, port = rest.rpartition(":")
    if protocol != DATA_SERVICE_PROTOCOL or not colon or not host or "/" in rest or not port.isdigit():
        raise ValueError(f"{address!r} is not a tf.data service dispatcher address; give "
                         f"{DATA_SERVICE_PROTOCOL}://HOST:PORT (data_service.py --role=dispatcher listens "
                         f"on port {DISPATCHER_PORT} by default)")
    return f"{DATA_SERVICE_PROTOCOL}://{host}:{port}"


@dataclasses.dataclass(frozen=True)
class DataServiceConfig:
    """data_service.py: one tf.data service dispatcher or worker."""

    role: str = setting(REQUIRED, (
        "dispatcher: the one server trainers name in train.py --data_service; worker: runs the input "
        "pipeline for them (one or more per CPU host)."), choices=SERVICE_ROLES)
    port: int | None = setting(None, f"Port to listen on (default: {DISPATCHER_PORT} for the dispatcher, "
                               f"{WORKER_PORT} for a worker; 0: any free port).", lower=0, upper=65535)
    dispatcher: str | None = setting(None, "--role=worker: the dispatcher's [grpc://]HOST:PORT.")
    worker_address: str | None = setting(None, (
        "--role=worker: HOST:PORT the trainers reach this worker at (default: socket.getfqdn() and --port). "
        "Use localhost only when the trainers run on this host."))

    def __post_init__(self):
        check(self)
        if self.role == "dispatcher" and (self.dispatcher or self.worker_address):
            raise UserInputError("dispatcher= and worker_address= configure role=worker; drop them")
        if self.role == "worker":
            if not self.dispatcher:
                raise UserInputError("role=worker needs dispatcher=HOST:PORT, the address the dispatcher "
                                     "listens at")
            try:  # one form of the address: grpc://HOST:PORT
                object.__setattr__(self, "dispatcher", service_address(self.dispatcher))
            except ValueError as err:
                raise UserInputError(f"dispatcher={self.dispatcher}: {err}") from None


# What a batch of images is when it leaves the input pipeline for the model's device.
UINT8 = "uint8"  # the decoded gray bytes (B, S, S, 1); the model's front makes float32 RGB on the device
FLOAT32 = "float32"  # float32 RGB (B, S, S, 3) 0..255 made on the host: 12 bytes per pixel instead of 1
TRANSFERS = ("auto", UINT8, FLOAT32)
DEFAULT_TRANSFER = "auto"
# What "auto" means without a GPU, where the device is the host itself and the front's cast and
# copy is host work too: uint8 saves no host CPU there (docs/gpus.md, "On this CPU, as they stand").
CPU_TRANSFER = FLOAT32
TRANSFER = Shared("transfer", DEFAULT_TRANSFER, (
    f"What the input pipeline hands the device. {UINT8}: the decoded gray bytes, made float32 RGB by the "
    f"model's front on the device (12x fewer bytes to copy, less host CPU). {FLOAT32}: float32 RGB made on "
    f"the host. auto: {UINT8} when TensorFlow sees a GPU, else {CPU_TRANSFER} (docs/gpus.md, 'On this "
    "CPU, as they stand'). Saved and exported models take float32 RGB either way."), TRANSFERS)


def resolve_transfer(mode: str, gpu_visible: bool) -> str:
    """The transfer setting resolved: "auto" is uint8 with a GPU and `CPU_TRANSFER` without one."""
    if mode not in TRANSFERS:
        raise ValueError(f"transfer must be one of {', '.join(TRANSFERS)}; got {mode!r}")
    if mode == "auto":
        return UINT8 if gpu_visible else CPU_TRANSFER
    return mode
