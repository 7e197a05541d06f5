"""Real mediacdn processes on loopback: a config with free ports, services started through
the same `mediacdn` entry points a deployment uses, and helpers to stop and restart them."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import ADMIN_TOKEN, API_KEY, ROOT
from tests.s3server import free_port

MEDIACDN = [sys.executable, "-m", "scripts"]


@dataclass
class Ports:
    ingest: int = field(default_factory=free_port)
    router: int = field(default_factory=free_port)
    edges: dict[str, int] = field(default_factory=dict)


EDGES = [("eu-west-a", "eu-west"), ("eu-west-b", "eu-west"), ("us-east-a", "us-east"),
         ("ap-south-a", "ap-south")]


def write_config(tmp: Path, origin_toml: str, ports: Ports | None = None) -> tuple[Path, Ports]:
    ports = ports or Ports()
    for name, _ in EDGES:
        ports.edges.setdefault(name, free_port())
    edges = "\n".join(
        f'[[edges]]\nname = "{n}"\nregion = "{r}"\nport = {ports.edges[n]}\n' for n, r in EDGES)
    text = f"""
log_level = "warning"
[origin]
{origin_toml}
[ingest]
port = {ports.ingest}
[edge]
cache_root = "{tmp / 'cache'}"
cache_bytes = 67108864
negative_ttl = 2
origin_timeout = 2
purge_poll_seconds = 0.3
[router]
port = {ports.router}
default_region = "eu-west"
probe_interval = 0.2
probe_timeout = 0.3
fall = 2
rise = 2
[[regions]]
name = "eu-west"
lat = 48.86
lon = 2.35
countries = ["FR", "DE"]
cidrs = ["10.1.0.0/16"]
[[regions]]
name = "us-east"
lat = 39.04
lon = -77.49
countries = ["US"]
cidrs = ["10.2.0.0/16"]
[[regions]]
name = "ap-south"
lat = 1.35
lon = 103.82
countries = ["SG", "IN"]
cidrs = ["10.3.0.0/16", "10.3.7.0/24"]
{edges}
"""
    path = tmp / "mediacdn.toml"
    path.write_text(text)
    return path, ports


def env(extra: dict[str, str] | None = None) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MEDIACDN_"))}
    e.update({"MEDIACDN_API_KEY": API_KEY, "MEDIACDN_ADMIN_TOKEN": ADMIN_TOKEN,
              "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"})
    e.update(extra or {})
    return e


class Service:
    """One `mediacdn <service>` process; `start()` returns once it announced its URL.
    With `netns`, it runs in that network namespace (`ip netns exec`, which execs it)."""

    def __init__(self, argv: list[str], environ: dict[str, str], netns: str | None = None
                 ) -> None:
        self.argv, self.environ = argv, environ
        self.prefix = ["ip", "netns", "exec", netns] if netns else []
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""
        self.stderr: Path | None = None

    async def start(self) -> Service:
        # Its stderr to a file (a pipe nobody reads could fill and stall it), so that a
        # service that exits without announcing says why in the failure.
        with tempfile.NamedTemporaryFile(prefix="mediacdn-service-", suffix=".log",
                                         delete=False) as err:
            self.stderr = Path(err.name)
            self.proc = await asyncio.create_subprocess_exec(
                *self.prefix, *MEDIACDN, *self.argv, env=self.environ, cwd=str(ROOT),
                stdout=asyncio.subprocess.PIPE, stderr=err)
        assert self.proc.stdout is not None
        async with asyncio.timeout(30):
            line = (await self.proc.stdout.readline()).decode().split()
        if len(line) != 3:
            tail = Path(err.name).read_text(errors="replace")[-2000:]
            raise AssertionError(f"{self.argv} announced {line}; its stderr ends:\n{tail}")
        self.url = line[2]
        return self

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc is None or self.proc.returncode is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        async with asyncio.timeout(20):
            code = await self.proc.wait()
        if self.stderr is not None:
            self.stderr.unlink(missing_ok=True)
        return code


async def run_cli(*argv: str, environ: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *MEDIACDN, *argv, env=environ, cwd=str(ROOT), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
