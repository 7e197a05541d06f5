"""Clients that pipeline requests and never read: a real edge process must wait for them
(bounded memory per connection), keep serving everyone else, and drop them after
`edge.send_timeout`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from pathlib import Path

import pytest

from common.hashing import content_id
from origin import keys as K
from origin.fs import FsOrigin
from tests.topology import Service, env, write_config

pytestmark = pytest.mark.timeout(120)

SIZE = 20_000  # a w640 WebP: small enough that aiohttp's own writer never waits for it


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


async def _edge(tmp_path: Path, edge_settings: str = "") -> tuple[Service, str, bytes]:
    config, _ = write_config(tmp_path, f'kind = "fs"\npath = "{tmp_path / "origin"}"')
    if edge_settings:
        config.write_text(config.read_text().replace("[edge]\n", f"[edge]\n{edge_settings}\n"))
    image_id = content_id(os.urandom(32))
    body = os.urandom(SIZE)
    await FsOrigin(tmp_path / "origin").put(K.variant(image_id, "w640", "webp"), body,
                                            "image/webp", {"blake3": content_id(body)})
    edge = await Service(["edge", "--node", "eu-west-a", "--config", str(config)],
                         env()).start()
    return edge, f"/i/{image_id}/w640.webp", body


async def _read_response(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes]:
    status = (await reader.readline()).decode().strip()
    headers: dict[str, str] = {}
    while line := (await reader.readline()).decode().strip():
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, await reader.readexactly(int(headers["content-length"]))


class Polite:
    """One keep-alive connection that reads every answer."""

    def __init__(self, url: str, path: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.addr, self.path = (host, int(port)), path

    async def __aenter__(self) -> Polite:
        self.reader, self.writer = await asyncio.open_connection(*self.addr)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.writer.close()

    async def get(self) -> tuple[str, dict[str, str], bytes]:
        self.writer.write(f"GET {self.path} HTTP/1.1\r\nHost: edge\r\n\r\n".encode())
        async with asyncio.timeout(10):
            return await _read_response(self.reader)


async def _hostile(url: str, path: str, count: int) -> socket.socket:
    """A socket that sends `count` pipelined GETs (as many as the edge accepts within a few
    seconds) and never reads."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (host, int(port)))
    data = f"GET {path} HTTP/1.1\r\nHost: edge\r\n\r\n".encode() * count
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(3):
            await loop.sock_sendall(sock, data)
    return sock


def _p99(samples: list[float]) -> float:
    return sorted(samples)[int(len(samples) * 0.99) - 1]


async def test_clients_that_never_read_cannot_hoard_memory_or_slow_others(
        tmp_path: Path) -> None:
    edge, path, body = await _edge(tmp_path)
    assert edge.proc is not None
    hostile: list[socket.socket] = []
    try:
        async with Polite(edge.url, path) as polite:
            for _ in range(50):  # fill, then warm the hot path
                status, headers, got = await polite.get()
            assert (status, headers["x-cache"], got) == ("HTTP/1.1 200 OK", "HIT", body)
            rss_before = _rss_mib(edge.proc.pid)
            hostile = list(await asyncio.gather(
                *(_hostile(edge.url, path, 2000) for _ in range(20))))
            await asyncio.sleep(2)  # the edge answers as much as it wants to
            latencies = []
            for _ in range(200):
                t0 = time.perf_counter()
                status, _, got = await polite.get()
                latencies.append(time.perf_counter() - t0)
                assert (status, got) == ("HTTP/1.1 200 OK", body)
            rss_during = _rss_mib(edge.proc.pid)
        grown = rss_during - rss_before
        print(f"\nRSS {rss_before:.0f} -> {rss_during:.0f} MiB; polite p99 "
              f"{_p99(latencies) * 1000:.1f} ms")
        assert grown < 64, f"edge RSS grew by {grown:.0f} MiB for 20 non-reading sockets"
        assert _p99(latencies) < 0.020, f"polite p99 {_p99(latencies) * 1000:.1f} ms"
        for sock in hostile:
            sock.close()
        hostile = []
        async with Polite(edge.url, path) as polite:
            status, headers, got = await polite.get()
            assert (status, got) == ("HTTP/1.1 200 OK", body)
    finally:
        for sock in hostile:
            sock.close()
        assert await edge.stop() == 0


async def _drain_until_closed(sock: socket.socket, seconds: float) -> tuple[bool, int]:
    """(closed by the peer, bytes read) after reading for at most `seconds`."""
    loop = asyncio.get_running_loop()
    total = 0
    deadline = loop.time() + seconds
    try:
        while loop.time() < deadline:
            async with asyncio.timeout(deadline - loop.time()):
                chunk = await loop.sock_recv(sock, 1 << 20)
            if not chunk:
                return True, total
            total += len(chunk)
    except ConnectionResetError:
        return True, total
    except TimeoutError:
        pass
    return False, total


async def test_a_connection_stuck_past_send_timeout_is_closed(tmp_path: Path) -> None:
    edge, path, body = await _edge(tmp_path, "send_timeout = 1.5")
    try:
        async with Polite(edge.url, path) as polite:
            assert (await polite.get())[2] == body
        stuck = await _hostile(edge.url, path, 2000)
        try:
            await asyncio.sleep(4)  # send_timeout + slack
            closed, received = await _drain_until_closed(stuck, 20)
        finally:
            stuck.close()
        # Closed by the edge, having sent far fewer than the 2,000 answers asked for.
        assert closed, f"still open after reading {received} bytes"
        assert received < 500 * SIZE, received
        async with Polite(edge.url, path) as polite:
            assert (await polite.get())[2] == body
    finally:
        assert await edge.stop() == 0
