"""Clients that pipeline requests and never read: a real edge process must wait for them
(bounded memory per connection), keep serving everyone else, and drop them after
`edge.send_timeout`."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from pathlib import Path

import pytest

from tests.topology import Service
from tests.wire import Polite, address, edge_config, read_response, rss_mib, seed, start_edge

pytestmark = pytest.mark.timeout(120)

SIZE = 20_000  # a w640 WebP: small enough that aiohttp's own writer never waits for it


async def _edge(tmp_path: Path, edge_settings: str = "") -> tuple[Service, str, bytes]:
    config = edge_config(tmp_path, edge_settings)
    [(path, body)] = await seed(tmp_path, SIZE)
    return await start_edge(config), path, body


async def _hostile(url: str, path: str, count: int) -> socket.socket:
    """A socket that sends `count` pipelined GETs (as many as the edge accepts within a few
    seconds) and never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, address(url))
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
        async with Polite(edge.url) as polite:
            for _ in range(50):  # fill, then warm the hot path
                status, headers, got = await polite.get(path)
            assert (status, headers["x-cache"], got) == ("HTTP/1.1 200 OK", "HIT", body)
            rss_before = rss_mib(edge.proc.pid)
            hostile = list(await asyncio.gather(
                *(_hostile(edge.url, path, 2000) for _ in range(20))))
            await asyncio.sleep(2)  # the edge answers as much as it wants to
            latencies = []
            for _ in range(200):
                t0 = time.perf_counter()
                status, _, got = await polite.get(path)
                latencies.append(time.perf_counter() - t0)
                assert (status, got) == ("HTTP/1.1 200 OK", body)
            rss_during = rss_mib(edge.proc.pid)
        grown = rss_during - rss_before
        print(f"\nRSS {rss_before:.0f} -> {rss_during:.0f} MiB; polite p99 "
              f"{_p99(latencies) * 1000:.1f} ms")
        assert grown < 64, f"edge RSS grew by {grown:.0f} MiB for 20 non-reading sockets"
        assert _p99(latencies) < 0.020, f"polite p99 {_p99(latencies) * 1000:.1f} ms"
        for sock in hostile:
            sock.close()
        hostile = []
        async with Polite(edge.url) as polite:
            status, headers, got = await polite.get(path)
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
        async with Polite(edge.url) as polite:
            assert (await polite.get(path))[2] == body
        stuck = await _hostile(edge.url, path, 2000)
        try:
            await asyncio.sleep(4)  # send_timeout + slack
            closed, received = await _drain_until_closed(stuck, 20)
        finally:
            stuck.close()
        # Closed by the edge, having sent far fewer than the 2,000 answers asked for.
        assert closed, f"still open after reading {received} bytes"
        assert received < 500 * SIZE, received
        async with Polite(edge.url) as polite:
            assert (await polite.get(path))[2] == body
    finally:
        assert await edge.stop() == 0


async def test_pipelined_requests_of_every_kind_are_answered_in_order(tmp_path: Path) -> None:
    # Pins what the pre-rendered hit relies on in aiohttp's connection loop (prepare,
    # write_eof, keep_alive): mixed with aiohttp-rendered answers on one connection, every
    # answer arrives whole, in order, and the connection stays open.
    edge, path, body = await _edge(tmp_path, "connection_buffer_bytes = 16384")
    try:
        async with Polite(edge.url) as client:
            _, headers, _ = await client.get(path)  # fill
            etag = headers["etag"]
            kinds = [("GET", "", 200), ("HEAD", "", 200), ("GET", f"If-None-Match: {etag}", 304),
                     ("GET", "Range: bytes=10-19", 206), ("GET", "", 200)] * 40
            client.writer.write(b"".join(
                f"{m} {path} HTTP/1.1\r\nHost: edge\r\n{h + chr(13) + chr(10) if h else ''}\r\n"
                .encode() for m, h, _ in kinds))
            async with asyncio.timeout(20):
                for method, _, want in kinds:
                    status, headers, got = await read_response(
                        client.reader, head=method == "HEAD" or want == 304)
                    assert status.split()[1] == str(want), (method, status)
                    assert headers["etag"] == etag
                    assert got == {200: body if method == "GET" else b"", 304: b"",
                                   206: body[10:20]}[want]
            assert (await client.get(path))[2] == body  # still open
    finally:
        assert await edge.stop() == 0


async def test_a_slow_but_steady_client_is_not_cut_off(tmp_path: Path) -> None:
    # send_timeout bounds how long a client may take *nothing*, not a whole download: a
    # 6 MB disk-tier object read at ~1 MB/s outlasts a 1 s send_timeout and arrives whole.
    edge, _, _ = await _edge(tmp_path, "send_timeout = 1\nmemory_object_bytes = 1000")
    [(path, body)] = await seed(tmp_path, 6_000_000)
    try:
        async with Polite(edge.url, rcvbuf=16384) as client:
            assert (await client.get(path))[2] == body  # fill: the disk tier has it
            client.writer.write(f"GET {path} HTTP/1.1\r\nHost: edge\r\n\r\n".encode())
            received = bytearray()
            async with asyncio.timeout(30):
                _, headers, _ = await read_response(client.reader, head=True)
                assert headers["x-cache"] == "HIT"
                while len(received) < len(body):
                    chunk = await client.reader.read(8192)
                    assert chunk, f"cut off after {len(received)} bytes"
                    received += chunk
                    await asyncio.sleep(0.008)
        assert bytes(received) == body
    finally:
        assert await edge.stop() == 0
