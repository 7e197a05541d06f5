"""The memory tier's files in a real edge process: an evicted entry's memfd outlives the
responses still sending from it, and running out of fds never becomes a plain 500."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import socket
from pathlib import Path

import pytest

from common.hashing import content_id
from tests.wire import Polite, address, edge_config, read_response, seed, start_edge

pytestmark = pytest.mark.timeout(120)


def _lowest_free_fd(pid: int) -> int:
    used = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
    return next(n for n in range(len(used) + 1) if n not in used)


async def test_out_of_fds_answers_200_uncached_or_503_problem_never_a_plain_500(
        tmp_path: Path) -> None:
    # A hot tier of one 20 KB object: B's fill evicts A, so A's next hit comes from disk
    # and needs a new memfd to go back into memory (served uncached in memory if none).
    # C (40 KB) never fits in memory and is a file of its own in the disk tier: reading it
    # needs a new fd too.
    config = edge_config(tmp_path, "memory_bytes = 30000")
    objects = await seed(tmp_path, 20_000, 20_000, 40_000)
    edge = await start_edge(config)
    assert edge.proc is not None
    pid = edge.proc.pid
    try:
        async with Polite(edge.url) as client:
            for path, body in objects:
                status, _, got = await client.get(path)
                assert (status, got) == ("HTTP/1.1 200 OK", body)
            (path_a, body_a), _, (path_c, body_c) = objects
            limits = resource.prlimit(pid, resource.RLIMIT_NOFILE)
            # Every new fd now fails with EMFILE; the fds the edge holds stay usable.
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (_lowest_free_fd(pid), limits[1]))
            try:
                answers = [(await client.get(p), body) for p, body in
                           [(path_a, body_a), (path_c, body_c)] * 3]
            finally:
                resource.prlimit(pid, resource.RLIMIT_NOFILE, limits)
            for (status, headers, got), body in answers:
                if body is body_a and status == "HTTP/1.1 200 OK":  # C has no file to read
                    assert got == body and headers["x-cache"] == "HIT"
                else:
                    assert status.startswith("HTTP/1.1 503"), (status, got[:200])
                    assert headers["content-type"] == "application/problem+json"
                    assert headers["retry-after"] == "1"
                    assert json.loads(got)["status"] == 503
            print("\nout of fds:", [a[0][0] for a in answers])
            # fds back: both are served again.
            for path, body in objects:
                status, headers, got = await client.get(path)
                assert (status, got) == ("HTTP/1.1 200 OK", body)
    finally:
        assert await edge.stop() == 0


async def test_an_evicted_entry_is_sent_whole_to_a_slow_client(tmp_path: Path) -> None:
    # Room for one 6 MB object (more than the kernel's 4 MB socket buffers take at once):
    # each fill below evicts the previous one, and if its memfd were closed then, the next
    # fill's memfd would reuse its fd number.
    config = edge_config(tmp_path, "memory_bytes = 7000000\nmemory_object_bytes = 8000000\n"
                         "connection_buffer_bytes = 16384")
    objects = await seed(tmp_path, *([6_000_000] * 4))
    (path, body), others = objects[0], objects[1:]
    edge = await start_edge(config)
    try:
        async with Polite(edge.url) as client:
            assert (await client.get(path))[2] == body  # now hot
            slow = socket.socket()
            slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
            slow.setblocking(False)
            loop = asyncio.get_running_loop()
            await loop.sock_connect(slow, address(edge.url))
            reader, writer = await asyncio.open_connection(sock=slow)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: edge\r\n\r\n".encode())
            await writer.drain()
            await asyncio.sleep(0.3)  # the edge has sent what the socket takes, and waits
            for other_path, other_body in others:  # evict it, refill the tier
                assert (await client.get(other_path))[2] == other_body
            received = bytearray()
            async with asyncio.timeout(30):
                status, headers, _ = await read_response(reader, head=True)
                while len(received) < int(headers["content-length"]):
                    received += await reader.read(8192)
                    await asyncio.sleep(0.002)
            writer.close()
        assert status == "HTTP/1.1 200 OK" and headers["x-cache"] == "HIT"
        assert len(received) == len(body)
        assert content_id(bytes(received)) == content_id(body) == headers["etag"].strip('"')
    finally:
        assert await edge.stop() == 0


def _memfds(pid: int, path: str) -> int:
    """How many of the edge's open fds are memfds of the variant at `path`."""
    key = path.removeprefix("/i/")
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        count += f"mediacdn:{key}" in target
    return count


async def _eventually(check: object, seconds: float) -> bool:
    assert callable(check)
    deadline = asyncio.get_running_loop().time() + seconds
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def test_a_client_that_goes_away_mid_body_lets_go_of_the_memfd(tmp_path: Path) -> None:
    config = edge_config(tmp_path, "memory_bytes = 7000000\nmemory_object_bytes = 8000000\n"
                         "connection_buffer_bytes = 16384")
    (path, body), (other, other_body) = await seed(tmp_path, 6_000_000, 6_000_000)
    edge = await start_edge(config)
    assert edge.proc is not None
    pid = edge.proc.pid
    try:
        async with Polite(edge.url) as client:
            assert (await client.get(path))[2] == body
            async with Polite(edge.url, rcvbuf=8192) as slow:
                slow.writer.write(f"GET {path} HTTP/1.1\r\nHost: edge\r\n\r\n".encode())
                async with asyncio.timeout(10):
                    await slow.reader.readexactly(100_000)  # it is sending, and waits for us
                assert (await client.get(other))[2] == other_body  # evicts it meanwhile
                await asyncio.sleep(0.5)
                assert _memfds(pid, path) == 1  # held by the response still sending
            # Gone mid-body: the response ends and lets go; the evicted memfd is closed.
            assert await _eventually(lambda: _memfds(pid, path) == 0, 3.0)
            assert _memfds(pid, other) == 1
    finally:
        assert await edge.stop() == 0
