"""A tf.data service on loopback for the benchmarks: a dispatcher and workers, each a
`data_service.py` process on this host, as they would run on CPU hosts."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from pipeline.service import free_local_ports  # the caller puts the repository on sys.path

SERVICE_WORKERS = 2
SERVICE_START_S = 120  # until the dispatcher answers


def start_service(repo: str) -> tuple[str, list[subprocess.Popen]]:
    """A dispatcher and `SERVICE_WORKERS` workers, each a `data_service.py` process on loopback."""
    ports = free_local_ports(1 + SERVICE_WORKERS)
    tool = [sys.executable, os.path.join(repo, "data_service.py")]
    servers = [subprocess.Popen(tool + ["--role=dispatcher", f"--port={ports[0]}"], cwd=repo,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    deadline = time.time() + SERVICE_START_S
    while True:
        try:
            socket.create_connection(("localhost", ports[0]), timeout=1).close()
            break
        except OSError as err:
            if time.time() > deadline:
                raise RuntimeError("the dispatcher did not start") from err
            time.sleep(0.2)
    servers += [subprocess.Popen(tool + ["--role=worker", f"--dispatcher=localhost:{ports[0]}", f"--port={port}",
                                         f"--worker_address=localhost:{port}"], cwd=repo,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for port in ports[1:]]
    return f"grpc://localhost:{ports[0]}", servers
