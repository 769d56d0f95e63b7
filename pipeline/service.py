"""The tf.data service: the training input pipeline run on CPU hosts, streamed to the trainers."""

from __future__ import annotations

import socket

import tensorflow as tf

from contracts.errors import UserInputError

# Each shard goes to one worker at a time and a run's trainers share one job, so a pass gives every
# record to one trainer (a worker dying mid-file loses the rest of it for that pass).
SHARDING = tf.data.experimental.service.ShardingPolicy.DYNAMIC
REACH_TIMEOUT_S = 5.0


def distribute(dataset: tf.data.Dataset, service: str, job_name: str) -> tf.data.Dataset:
    """Runs `dataset` (one pass) on the service; `job_name` is shared by a run's trainers, new per run."""
    return dataset.apply(tf.data.experimental.service.distribute(
        processing_mode=SHARDING, service=service, job_name=job_name))


def check_reachable(service: str) -> None:
    """Refuses, in one line, a dispatcher address where nothing answers (a trainer would wait for ever)."""
    host, _, port = service.split("://", 1)[-1].rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=REACH_TIMEOUT_S):
            pass
    except OSError as err:
        raise UserInputError(f"data_service {service}: no tf.data service dispatcher answers there ({err}); "
                             "start one with data_service.py (role dispatcher) on that port") from None


def _server_error(port: int, err: RuntimeError) -> UserInputError:
    return UserInputError(f"port {port}: TensorFlow could not start its gRPC server there ({err}); the port "
                          "is probably in use: choose another port")


def start_dispatcher(port: int) -> tf.data.experimental.service.DispatchServer:
    """Starts a dispatcher listening on `port` (0: any free port; see `.target`)."""
    try:
        return tf.data.experimental.service.DispatchServer(
            tf.data.experimental.service.DispatcherConfig(port=port))
    except RuntimeError as err:
        raise _server_error(port, err) from None


def start_worker(dispatcher: str, port: int,
                 worker_address: str) -> tf.data.experimental.service.WorkerServer:
    """Starts a worker registered with `dispatcher`, reached by trainers at `worker_address`."""
    try:
        return tf.data.experimental.service.WorkerServer(tf.data.experimental.service.WorkerConfig(
            dispatcher_address=dispatcher.split("://", 1)[-1], port=port, worker_address=worker_address))
    except RuntimeError as err:
        raise _server_error(port, err) from None


def free_local_ports(count: int) -> list[int]:
    """`count` distinct TCP ports free on this host now (held open together while chosen)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
