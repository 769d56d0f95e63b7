"""Runs a tf.data service dispatcher or worker on this host until it is stopped (Ctrl-C, a signal).

    python data_service.py --role=dispatcher                                  # on one host
    python data_service.py --role=worker --dispatcher=DISPATCHER_HOST:5050    # on each CPU host
    python train.py ... --data_service=grpc://DISPATCHER_HOST:5050            # on the trainers

A worker runs the training input pipeline (read, shuffle, decode, batch) and streams batches to
the trainers; it needs TensorFlow and the shards at the path the trainers name (a shared file
system or gs://), not this project, since the pipeline reaches it as a graph. Where the project
is not installed, the same with TensorFlow alone:

    python -c "import tensorflow as tf; s = tf.data.experimental.service; \\
        s.DispatchServer(s.DispatcherConfig(port=5050)).join()"
    python -c "import tensorflow as tf; s = tf.data.experimental.service; \\
        s.WorkerServer(s.WorkerConfig('DISPATCHER_HOST:5050', port=5051, worker_address='THIS_HOST:5051')).join()"
"""

from __future__ import annotations

import socket

from absl import flags, logging

import flags as project_flags

FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    del argv  # stray arguments are refused by project_flags.run_tool
    from contracts.errors import UserInputError
    from pipeline import options

    if FLAGS.role == "worker":
        if not FLAGS.dispatcher:
            raise UserInputError("--role=worker needs --dispatcher=HOST:PORT, the address the dispatcher "
                                 "listens at")
        try:
            dispatcher = options.service_address(FLAGS.dispatcher)
        except ValueError as err:
            raise UserInputError(f"--dispatcher: {err}") from None
    elif FLAGS.dispatcher or FLAGS.worker_address:
        raise UserInputError("--dispatcher and --worker_address configure --role=worker; drop them")
    from pipeline import service

    if FLAGS.role == "dispatcher":
        port = options.DISPATCHER_PORT if FLAGS.port is None else FLAGS.port
        server = service.start_dispatcher(port)
        logging.info("tf.data service dispatcher at %s: train with --data_service=%s", server.target,
                     server.target.replace("localhost", socket.getfqdn()))
    else:
        port = options.WORKER_PORT if FLAGS.port is None else FLAGS.port
        address = FLAGS.worker_address or f"{socket.getfqdn()}:%port%"
        server = service.start_worker(dispatcher, port, address)
        logging.info("tf.data service worker on port %s, registered with %s as %s", port or "(any free)",
                     dispatcher, address)
    server.join()


def run() -> None:
    """Console entry point (setup.cfg) and `python data_service.py`; runs `main`."""
    project_flags.run_tool(project_flags.define_data_service_flags, main, __doc__, required=("role",),
                           stop_on_sigterm=False)  # server.join() never returns to Python


if __name__ == "__main__":
    run()
