"""Adversarial review of the front door's disk reads (edge/frontdoor.py, Lookup.load): what a
client sees while the front door waits for the disk tier, against what it sees from aiohttp
alone. A stalled disk is made real: the entry's value file is swapped for a FIFO, so the
edge's read blocks in the kernel until the test writes the bytes (as a disk or network
filesystem that stops answering would), then completes with the true, verified body."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from common.hashing import content_id
from tests.test_frontdoor_differential import get, normalise, statuses
from tests.topology import Service
from tests.wire import address, edge_config, read_response, read_until_quiet, seed, start_edge

pytestmark = pytest.mark.timeout(180)


class Stall:
    """The value file of `key` in an edge's disk tier, replaced by a FIFO: the edge's read of
    it blocks until `release` writes `body` (the bytes the file held) into it, and puts the
    real file back for later reads."""

    def __init__(self, cache_dir: Path, key: str, body: bytes) -> None:
        objects = cache_dir / "objects"
        db = sqlite3.connect(objects / "cache.db")
        try:
            [(name,)] = db.execute("SELECT filename FROM Cache WHERE key = ? AND raw = 1",
                                   (key,)).fetchall()
        finally:
            db.close()
        self.path = objects / str(name)
        self.path.unlink()
        os.mkfifo(self.path)
        self.body = body
        self.fd: int | None = None

    async def reader_waits(self) -> None:
        """Returns once the edge has opened the FIFO (its read is blocked on it)."""
        opening = asyncio.create_task(asyncio.to_thread(os.open, self.path, os.O_WRONLY))
        try:
            async with asyncio.timeout(10):
                self.fd = await asyncio.shield(opening)
        except TimeoutError:
            # Unblock our own open so its thread ends.
            with contextlib.suppress(OSError):
                os.close(os.open(self.path, os.O_RDONLY | os.O_NONBLOCK))
            with contextlib.suppress(OSError):
                os.close(await opening)
            raise

    async def release(self) -> None:
        assert self.fd is not None
        fd, self.fd = self.fd, None
        await asyncio.to_thread(os.write, fd, self.body)
        # The disk is back: later reads find the real file (the open FIFO's reader still
        # reads to its end, once we close it).
        if self.path.exists():  # else deleted meanwhile (a purge): it stays gone
            whole = self.path.with_name(self.path.name + ".tmp")
            whole.write_bytes(self.body)
            whole.replace(self.path)
        os.close(fd)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


async def _fill(url: str, path: str, body: bytes) -> None:
    async with aiohttp.ClientSession() as s, s.get(url + path) as r:
        assert r.status == 200 and await r.read() == body


def _key(path: str) -> str:
    return path.removeprefix("/i/")


@contextlib.asynccontextmanager
async def _edge(config: Path) -> AsyncIterator[Service]:
    edge = await start_edge(config)
    try:
        yield edge
    finally:
        await edge.stop(signal.SIGKILL)


async def _sigterm_while_the_disk_read_is_pending(tmp_path: Path, front_door: bool) -> None:
    # Over memory_object_bytes (1 MiB): never kept in memory, read from disk every time.
    [(path, body)] = await seed(tmp_path, 2_000_000)
    config = edge_config(tmp_path, f"front_door = {'true' if front_door else 'false'}")
    async with _edge(config) as edge:
        await _fill(edge.url, path, body)
        stall = Stall(tmp_path / "cache" / "eu-west-a", _key(path), body)
        try:
            reader, writer = await asyncio.open_connection(*address(edge.url))
            writer.write(get(path))
            await stall.reader_waits()  # the request is in flight, its disk read pending
            assert edge.proc is not None
            t0 = time.monotonic()
            edge.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(1.0)
            await stall.release()  # the disk answers, well inside the 10 s drain
            async with asyncio.timeout(20):
                status, headers, got = await read_response(reader)
            writer.close()
            assert (status, headers.get("x-cache")) == ("HTTP/1.1 200 OK", "HIT"), headers
            assert got == body
            async with asyncio.timeout(25):
                assert await edge.proc.wait() == 0
            assert time.monotonic() - t0 < 2 * (10 + 1) + 4
        finally:
            stall.close()


async def test_sigterm_while_an_aiohttp_disk_read_is_pending_answers_it(
        tmp_path: Path) -> None:
    await _sigterm_while_the_disk_read_is_pending(tmp_path, front_door=False)


async def test_sigterm_while_a_front_door_disk_read_is_pending_answers_it(
        tmp_path: Path) -> None:
    """The front door reads the entry, cannot keep it in memory (too large), and hands the
    request to aiohttp: after the runner's shutdown began. The request must still get its
    answer, as it does from aiohttp alone."""
    await _sigterm_while_the_disk_read_is_pending(tmp_path, front_door=True)


async def _answers_around_a_stall(url: str, stall: Stall, parts: tuple[bytes, ...],
                                  gap: float) -> bytes:
    """Everything the edge sends back for `parts`, the first of which has the edge read
    the stalled entry: the others are sent `gap` seconds apart while the disk stalls (each
    a segment of its own), then the disk answers. (asyncio.wait_for per read, as the
    differential harness does: a silence is an answer, not an error.)"""
    reader, writer = await asyncio.open_connection(*address(url))
    out = bytearray()
    try:
        writer.write(parts[0])
        await writer.drain()
        await stall.reader_waits()
        for part in parts[1:]:
            await asyncio.sleep(gap)
            writer.write(part)
            await writer.drain()
        await asyncio.sleep(gap)
        await stall.release()
        out += await read_until_quiet(reader, 2.0)
    except (ConnectionResetError, BrokenPipeError):
        out += b"<reset>"
    finally:
        writer.close()
        stall.close()
    return bytes(out)


async def test_requests_sent_while_the_disk_is_read_get_aiohttps_answers(
        tmp_path: Path) -> None:
    """A disk-only hit, then (while the disk is read) a hot hit, then a miss, each in a
    segment of its own: the same answers, in the same order, as aiohttp alone gives.
    (Not a bad request among them: aiohttp answers a read that holds one with a single
    400 and none of the good requests before it, so what it answers depends on how TCP
    happened to join the segments, with or without the front door, whose pause while it
    reads the disk joins them.)"""
    (slow, slow_body), (hot, hot_body) = await seed(tmp_path / "on", 100_000, 3_000)
    shutil.copytree(tmp_path / "on" / "origin", tmp_path / "off" / "origin")
    missing = f"/i/{content_id(b'missing')}/w640.webp"
    raw: dict[str, bytes] = {}
    for side in ("on", "off"):
        on = "true" if side == "on" else "false"
        config = edge_config(tmp_path / side, f"front_door = {on}")
        async with _edge(config) as edge:
            for path, body in ((slow, slow_body), (hot, hot_body)):
                await _fill(edge.url, path, body)
            assert edge.proc is not None and await edge.stop() == 0
        async with _edge(config) as edge:  # memory empty, the disk tier kept both
            await _fill(edge.url, hot, hot_body)  # hot again; `slow` is on disk only
            stall = Stall(tmp_path / side / "cache" / "eu-west-a", _key(slow), slow_body)
            raw[side] = await _answers_around_a_stall(
                edge.url, stall, (get(slow), get(hot), get(missing)), gap=0.2)
            assert await edge.stop() == 0
    assert statuses(raw["off"]) == [200, 200, 404], raw["off"][:300]
    assert normalise(raw["on"]) == normalise(raw["off"]), (raw["on"][:600], raw["off"][:600])


def _read_bytes(pid: int) -> int:
    """Bytes the process has read through read(2) and friends (/proc/PID/io's rchar): a
    value file read from the disk tier counts whole, page cache or not."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError(f"no rchar for {pid}")


async def test_an_entry_too_large_for_memory_is_read_from_disk_once_per_request(
        tmp_path: Path) -> None:
    """An entry over memory_object_bytes is never kept in memory: the front door read it
    whole (and hashed it) to find that out, then handed the request to aiohttp, which read
    and hashed it again: twice the disk reads of the edge without a front door, on every
    request for a large object."""
    size = 2_000_000  # over memory_object_bytes (1 MiB)
    [(path, body)] = await seed(tmp_path, size)
    async with _edge(edge_config(tmp_path, "front_door = true")) as edge:
        await _fill(edge.url, path, body)
        assert edge.proc is not None
        await asyncio.sleep(1.2)  # the first housekeeping round is done
        before = _read_bytes(edge.proc.pid)
        for _ in range(5):  # each on a connection of its own: the front door's first
            reader, writer = await asyncio.open_connection(*address(edge.url))
            writer.write(get(path))
            async with asyncio.timeout(10):
                status, headers, got = await read_response(reader)
            writer.close()
            assert (status, headers["x-cache"], got) == ("HTTP/1.1 200 OK", "HIT", body)
        per_request = (_read_bytes(edge.proc.pid) - before) / 5
        assert per_request < 1.5 * size, f"{per_request / size:.2f} times the entry read"
        assert await edge.stop() == 0
