"""Real S3-compatible servers for the tests: the one `make test` started, or moto's server."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass


@dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    kind: str  # "ceph", "moto" or "external"
    proc: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def freeze(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)


# Ports for services the tests start, below the kernel's ephemeral range (32768-60999 by
# default, where every outgoing connection takes its local port) and one slice per pytest-
# xdist process: a port handed out and not yet bound by its service can be taken neither
# by a client's connection nor by another process's service (both seen as a service that
# exits without announcing its URL, in parallel runs).
_SLICE = 3000
_FIRST = 20000


def _slice() -> range:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", ...; "" serial
    index = int(worker[2:]) + 1 if worker.startswith("gw") and worker[2:].isdigit() else 0
    start = _FIRST + (index % 4) * _SLICE
    return range(start, start + _SLICE)


_ports = _slice()
_next = [random.randrange(len(_ports))]


def free_port() -> int:
    """A port of this process's slice that nothing listens on now, never the same one twice
    in a row (each handed out in turn)."""
    for _ in range(len(_ports)):
        port = _ports[_next[0] % len(_ports)]
        _next[0] += 1
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {_ports}")


def start_moto() -> S3Server:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=1).close()
            return S3Server(endpoint, "testing", "testing", "moto", proc)
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("moto server exited at start") from None
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto server did not start in 30 s")


def suite_server() -> S3Server:
    endpoint = os.environ.get("MEDIACDN_TEST_S3_ENDPOINT")
    if endpoint:
        return S3Server(
            endpoint,
            os.environ.get("MEDIACDN_TEST_S3_ACCESS_KEY", "testaccesskey"),
            os.environ.get("MEDIACDN_TEST_S3_SECRET_KEY", "testsecretkey"),
            os.environ.get("MEDIACDN_TEST_S3_KIND", "external"),
        )
    return start_moto()
