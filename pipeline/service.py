"""The tf.data service: moving the training input pipeline's work off the trainers, onto CPU hosts.

A dispatcher hands out work; workers run the pipeline and stream batches to the trainers over
gRPC. Workers need TensorFlow and read access to the shards (the same path on every host: a shared
file system or a gs:// bucket), not this project: the pipeline travels to them as a graph.

Exactly once per pass. The training stream is sent in `ShardingPolicy.DYNAMIC` mode: the
dispatcher hands each shard file to one worker at a time (the files, a `from_tensor_slices`, are
the splittable source), so every record is read by exactly one worker. All trainers of a run read
one shared job (one `job_name`), first come first served, so every batch goes to exactly one
trainer. Each worker batches its own records and keeps its last partial batch (a dropped remainder
would lose records every pass); the pass ends when the files run out, and the trainers' `repeat`
then starts the next pass as a new iteration of the same job. The static per-file split between
trainers (`input_context`) is off under the service: the job already splits the data, and dynamic
splitting balances fast and slow workers. DYNAMIC is at most once: a worker that dies mid-file
loses the rest of that file for the current pass (the next pass reads it again).
"""

from __future__ import annotations

import socket

import tensorflow as tf

from contracts.errors import UserInputError

SHARDING = tf.data.experimental.service.ShardingPolicy.DYNAMIC  # see the module docstring
REACH_TIMEOUT_S = 5.0


def distribute(dataset: tf.data.Dataset, service: str, job_name: str) -> tf.data.Dataset:
    """Runs `dataset` (one pass) on the service; what follows runs on the trainer.

    Args:
      service: "grpc://HOST:PORT" of the dispatcher.
      job_name: the same for every trainer of one run, and new for every run (a finished job's
        name would read as an empty pass).
    """
    return dataset.apply(tf.data.experimental.service.distribute(
        processing_mode=SHARDING, service=service, job_name=job_name))


def check_reachable(service: str, flag: str = "data_service") -> None:
    """Fails fast, in one line, when nothing listens at the dispatcher's address (a trainer would
    otherwise wait on it for ever).

    Raises:
      UserInputError: the host does not resolve, or the port refuses or does not answer.
    """
    host, _, port = service.split("://", 1)[-1].rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=REACH_TIMEOUT_S):
            pass
    except OSError as err:
        raise UserInputError(f"--{flag}={service}: no tf.data service dispatcher answers there ({err}); start "
                             f"one with `python data_service.py --role=dispatcher --port={port}`") from None


def _server_error(port: int, err: RuntimeError) -> UserInputError:
    return UserInputError(f"--port={port}: TensorFlow could not start its gRPC server there ({err}); the port "
                          "is probably in use: choose another --port")


def start_dispatcher(port: int) -> tf.data.experimental.service.DispatchServer:
    """Starts a dispatcher listening on `port` (0: any free port; see `.target`).

    Raises:
      UserInputError: the port cannot be bound.
    """
    try:
        return tf.data.experimental.service.DispatchServer(
            tf.data.experimental.service.DispatcherConfig(port=port))
    except RuntimeError as err:
        raise _server_error(port, err) from None


def start_worker(dispatcher: str, port: int, worker_address: str) -> tf.data.experimental.service.WorkerServer:
    """Starts a worker that registers with `dispatcher` ("HOST:PORT") and serves trainers on `port`.

    Args:
      worker_address: how trainers reach this worker, "HOST:PORT" ("%port%" stands for the bound
        port): a name the trainers resolve, not "localhost", unless everything runs on one host.

    Raises:
      UserInputError: the port cannot be bound.
    """
    try:
        return tf.data.experimental.service.WorkerServer(tf.data.experimental.service.WorkerConfig(
            dispatcher_address=dispatcher.split("://", 1)[-1], port=port, worker_address=worker_address))
    except RuntimeError as err:
        raise _server_error(port, err) from None


def free_local_ports(count: int) -> list[int]:
    """Returns `count` distinct TCP ports free on this host right now, for servers started on one
    machine (a loopback tf.data service, a local multi-worker TF_CONFIG in tests and benchmarks).
    All are held open together while chosen, so no two are the same."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
