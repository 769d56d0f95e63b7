"""Runs a tf.data service dispatcher or worker on this host until it is stopped (Ctrl-C, a signal).

    python data_service.py --role=dispatcher                                  # on one host
    python data_service.py --role=worker --dispatcher=DISPATCHER_HOST:5050    # on each CPU host
    python train.py ... --data_service=grpc://DISPATCHER_HOST:5050            # on the trainers

A worker runs the training input pipeline for the trainers; it needs the shards at their path and
TensorFlow, not this project:

    python -c "import tensorflow as tf; s = tf.data.experimental.service; \\
        s.DispatchServer(s.DispatcherConfig(port=5050)).join()"
    python -c "import tensorflow as tf; s = tf.data.experimental.service; s.WorkerServer( \\
        s.WorkerConfig('DISPATCHER_HOST:5050', port=5051, worker_address='THIS_HOST:5051')).join()"
"""

from __future__ import annotations

import socket

from contracts import cli
from pipeline.options import DISPATCHER_PORT, WORKER_PORT, DataServiceConfig


def main(config: DataServiceConfig) -> None:
    from absl import logging

    from pipeline import service

    if config.role == "dispatcher":
        server = service.start_dispatcher(DISPATCHER_PORT if config.port is None else config.port)
        logging.info("tf.data service dispatcher at %s: train with --data_service=%s", server.target,
                     server.target.replace("localhost", socket.getfqdn()))
    else:
        port = WORKER_PORT if config.port is None else config.port
        address = config.worker_address or f"{socket.getfqdn()}:%port%"
        server = service.start_worker(config.dispatcher, port, address)
        logging.info("tf.data service worker on port %s, registered with %s as %s", port or "(any free)",
                     config.dispatcher, address)
    server.join()


def run() -> None:
    """Console entry point (setup.cfg) and `python data_service.py`."""
    cli.run(DataServiceConfig, main, __doc__, stop_on_sigterm=False)  # join() never returns to Python


if __name__ == "__main__":
    run()
