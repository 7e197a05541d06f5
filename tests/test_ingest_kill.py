"""A `kill -9` of ingest leaves nothing behind: no process, no spooled upload body."""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from ingest.app import create_app
from tests import images
from tests.helpers import API_KEY, AUTH, make_config
from tests.topology import Service, env, write_config

Client = TestClient[Any, Any]
MakeClient = Callable[..., Awaitable[Client]]
T = TypeVar("T")
pytestmark = pytest.mark.timeout(120)


def _stat(pid: int) -> list[str] | None:
    """Fields 3 onwards of /proc/PID/stat (state, ppid, ...), or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def _children(parent: int) -> dict[int, str]:
    """pid -> start time of every process whose parent is `parent`."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (f := _stat(int(entry.name))) and int(f[1]) == parent:
            found[int(entry.name)] = f[19]
    return found


def _alive(pid: int, started: str) -> bool:
    f = _stat(pid)
    return f is not None and f[19] == started and f[0] != "Z"  # same process, not a zombie


async def _until(check: Callable[[], T], seconds: float) -> T:
    for _ in range(int(seconds / 0.1)):
        if result := check():
            return result
        await asyncio.sleep(0.1)
    return check()


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


async def test_kill_9_of_ingest_leaves_no_process_and_no_spool_file(tmp_path: Path) -> None:
    config, _ = write_config(tmp_path, f'kind = "fs"\npath = "{tmp_path / "origin"}"')
    temp = tmp_path / "tmp"
    temp.mkdir()
    environ = env({"TMPDIR": str(temp)})
    ingest = await Service(["ingest", "--config", str(config)], environ).start()
    assert ingest.proc is not None
    children = _children(ingest.proc.pid)
    assert len(children) >= 2, children  # its transcode workers, multiprocessing's tracker

    # An upload cut off half-way: 2 MiB of a declared 3 MiB, so its body is on disk.
    url = urlsplit(ingest.url)
    _, writer = await asyncio.open_connection(url.hostname, url.port)
    writer.write(f"POST /v1/images HTTP/1.1\r\nHost: {url.netloc}\r\n"
                 f"Authorization: Bearer {API_KEY}\r\nContent-Length: {3 << 20}\r\n\r\n"
                 .encode())
    writer.write(b"\xff\xd8\xff" + bytes(2 << 20))
    await writer.drain()
    spooled = await _until(lambda: _files(temp), 10)
    assert spooled

    ingest.proc.kill()
    writer.close()
    gone = await _until(lambda: not [p for p, s in children.items() if _alive(p, s)], 10)
    assert gone, [p for p, s in children.items() if _alive(p, s)]
    async with asyncio.timeout(10):  # (its stdout closes once nothing it started holds it)
        await ingest.proc.wait()

    again = await Service(["ingest", "--config", str(config)], environ).start()
    try:
        assert not any(p.exists() for p in spooled)
        assert _files(temp) == []
        # Answered: its SIGTERM handler is in place (serve() sets it after the announce).
        async with aiohttp.ClientSession() as http, http.get(f"{again.url}/healthz") as r:
            assert r.status == 200
    finally:
        assert await again.stop() == 0
    assert list(temp.glob("*mediacdn-spool-*")) == []  # a clean exit removes its own too


async def test_the_spool_of_a_dead_process_is_removed_at_start_a_live_ones_kept(
    aiohttp_client: MakeClient, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    dead, live = spool / "mediacdn-spool-dead", spool / "mediacdn-spool-live"
    for d in (dead, live):
        d.mkdir(parents=True)
        (d / "upload-1").write_bytes(b"x" * 1000)
    held = os.open(live, os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as the live process that owns it does
    try:
        cfg = make_config(tmp_path)
        cfg = replace(cfg, ingest=replace(cfg.ingest, spool_dir=spool))
        client = await aiohttp_client(create_app(cfg))
        assert not dead.exists()
        assert (live / "upload-1").exists()
        own = [d for d in spool.iterdir() if d != live]
        assert len(own) == 1  # this process's, while it runs
        async with client.post("/v1/images", data=images.noisy_jpeg(), headers=AUTH) as r:
            assert r.status == 201  # a body spooled in there is read by the workers
        await client.close()
        assert not own[0].exists()
        assert (live / "upload-1").exists()
    finally:
        os.close(held)
