"""The edge's front door (edge/frontdoor.py) keeps what the edge promises on a hit: TLS
bodies whole (never sendfile(2) under TLS), purges visible on connections it holds, the
keep-alive timeout, a clean drain on SIGTERM, and the access log."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import struct
from pathlib import Path

import aiohttp
import pytest

from common.hashing import content_id
from tests.certs import CertAuthority
from tests.helpers import ADMIN
from tests.topology import MEDIACDN, ROOT, Service, env
from tests.wire import Polite, address, edge_config, read_response, seed, start_edge

pytestmark = pytest.mark.timeout(120)


async def _stats(url: str, session: aiohttp.ClientSession | None = None) -> dict[str, int]:
    async with (session or aiohttp.ClientSession()) as s, s.get(url + "/_admin/stats",
                                                                 headers=ADMIN) as r:
        assert r.status == 200
        stats: dict[str, int] = await r.json()
        return stats


async def test_tls_hits_through_the_front_door_arrive_whole(tmp_path: Path) -> None:
    ca = CertAuthority.create(tmp_path)
    cert, key = tmp_path / "edge.pem", tmp_path / "edge.key"
    ca.issue(cert, key)
    # Past the connection's 64 KiB buffer: the body goes out in pieces, never by sendfile.
    [(path, body)] = await seed(tmp_path, 300_000)
    edge = await start_edge(edge_config(
        tmp_path, f'tls_cert = "{cert}"\ntls_key = "{key}"\nfront_door = true'))
    ctx = ssl.create_default_context(cafile=str(ca.path))
    try:
        assert edge.url.startswith("https://")
        for expect in ("MISS", "HIT", "HIT", "HIT"):
            # A session per request: a connection of its own, whose first request is a hit.
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s, \
                    s.get(edge.url + path) as r:
                assert (r.status, r.headers["X-Cache"]) == (200, expect)
                got = await r.read()
            assert content_id(got) == content_id(body)
        stats = await _stats(edge.url, aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ctx)))
        assert stats["front_door_hits"] == 3, stats
    finally:
        assert await edge.stop() == 0


async def test_a_purge_reaches_connections_the_front_door_holds(tmp_path: Path) -> None:
    [(path, body)] = await seed(tmp_path, 20_000)
    edge = await start_edge(edge_config(tmp_path, "front_door = true"))
    try:
        async with Polite(edge.url) as warm:
            assert (await warm.get(path))[1]["x-cache"] == "MISS"
        async with Polite(edge.url) as client:
            for _ in range(3):
                status, headers, got = await client.get(path)
                assert (status, headers["x-cache"], got) == ("HTTP/1.1 200 OK", "HIT", body)
            assert (await _stats(edge.url))["front_door_hits"] == 3
            async with aiohttp.ClientSession() as s, s.post(
                    edge.url + "/_admin/purge", json={"ids": [path.split("/")[2]]},
                    headers=ADMIN) as r:
                assert r.status == 200, await r.text()
            # Same connection, still the front door's: the purge applies before it answers.
            status, headers, got = await client.get(path)
            assert (status, headers["x-cache"], got) == ("HTTP/1.1 200 OK", "MISS", body)
    finally:
        assert await edge.stop() == 0


async def test_idle_connections_close_after_idle_timeout(tmp_path: Path) -> None:
    [(path, _)] = await seed(tmp_path, 5_000)
    edge = await start_edge(edge_config(tmp_path, "front_door = true\nidle_timeout = 1"))
    try:
        async with Polite(edge.url) as warm:
            await warm.get(path)
        async with Polite(edge.url) as client:
            assert (await client.get(path))[1]["x-cache"] == "HIT"
            async with asyncio.timeout(5):  # closed after ~1 s without a request
                assert await client.reader.read() == b""
        # A connection that never sends a whole request is closed too.
        reader, writer = await asyncio.open_connection(*address(edge.url))
        writer.write(b"GET " + path.encode())
        async with asyncio.timeout(5):
            assert await reader.read() == b""
        writer.close()
    finally:
        assert await edge.stop() == 0


async def test_sigterm_closes_idle_front_door_connections_and_exits(tmp_path: Path) -> None:
    [(path, _)] = await seed(tmp_path, 5_000)
    edge = await start_edge(edge_config(tmp_path, "front_door = true"))
    async with Polite(edge.url) as warm:
        await warm.get(path)
    async with Polite(edge.url) as client:
        assert (await client.get(path))[1]["x-cache"] == "HIT"
        assert (await _stats(edge.url))["front_door_hits"] == 1
        async with asyncio.timeout(10):  # not the 10 s drain: nothing is in flight
            assert await edge.stop() == 0
            assert await client.reader.read() == b""


async def test_access_log_all_logs_front_door_hits(tmp_path: Path) -> None:
    [(path, _)] = await seed(tmp_path, 5_000)
    config = edge_config(tmp_path, "front_door = true\naccess_log = \"all\"")
    config.write_text(config.read_text().replace('log_level = "warning"', 'log_level = "info"'))
    log = tmp_path / "edge.log"
    with log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            *MEDIACDN, "edge", "--node", "eu-west-a", "--config", str(config), env=env(),
            cwd=str(ROOT), stdout=asyncio.subprocess.PIPE, stderr=err)
        edge = Service([], {})
        edge.proc = proc
        try:
            assert proc.stdout is not None
            async with asyncio.timeout(30):
                edge.url = (await proc.stdout.readline()).decode().split()[2]
            async with Polite(edge.url) as warm:
                await warm.get(path)
            async with Polite(edge.url) as client:
                assert (await client.get(path))[1]["x-cache"] == "HIT"
            assert (await _stats(edge.url))["front_door_hits"] == 1
        finally:
            assert await edge.stop() == 0
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    hits = [e for e in lines if e.get("logger") == "mediacdn.edge.access"
            and e.get("cache") == "HIT"]
    assert len(hits) == 1, lines
    assert hits[0]["msg"] == f"GET {path} -> 200 HIT"
    assert (hits[0]["status"], hits[0]["bytes"], hits[0]["remote"]) == (200, 5_000, "127.0.0.1")


async def test_a_slow_reader_of_pipelined_hits_gets_them_all_in_order_and_sees_a_purge(
        tmp_path: Path) -> None:
    [(path, body)] = await seed(tmp_path, 20_000)
    edge = await start_edge(edge_config(
        tmp_path, "front_door = true\nconnection_buffer_bytes = 16384"))
    try:
        async with Polite(edge.url) as warm:
            assert (await warm.get(path))[1]["x-cache"] == "MISS"
        count = 1000  # 20 MB of answers: far more than the socket buffers hold
        caches = []
        async with Polite(edge.url, rcvbuf=32768) as client:
            client.writer.write(f"GET {path} HTTP/1.1\r\nHost: edge\r\n\r\n".encode() * count)
            async with asyncio.timeout(60):
                for i in range(count):
                    status, headers, got = await read_response(client.reader)
                    assert (status, got) == ("HTTP/1.1 200 OK", body), i
                    caches.append(headers["x-cache"])
                    if i == 20:
                        async with aiohttp.ClientSession() as s, s.post(
                                edge.url + "/_admin/purge", json={"ids": [path.split("/")[2]]},
                                headers=ADMIN) as r:
                            assert r.status == 200
        # Hits, until the front door, resuming after the purge, finds the entry gone and
        # hands over to aiohttp: one miss (a new fill), then hits again.
        miss = caches.index("MISS")
        assert miss > 20 and caches[:miss] == ["HIT"] * miss, caches[:40]
        assert set(caches[miss + 1:]) == {"HIT"}
        assert miss <= (await _stats(edge.url))["front_door_hits"] < count
    finally:
        assert await edge.stop() == 0


def _data_segments_in(sock: socket.socket) -> int:
    """Data-carrying TCP segments this socket has received (tcp_info.tcpi_data_segs_in,
    Linux 4.6+: offset 152 of struct tcp_info)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 160)
    return int(struct.unpack_from("I", info, 152)[0])


async def test_a_hit_leaves_as_one_segment_head_and_body_together(tmp_path: Path) -> None:
    """nginx's tcp_nopush: the head does not go as a packet of its own before the body.
    Over loopback (MSS ~64 KB) a 30 KB hit is then one data segment, where a head sent on
    its own makes two: twice the packets for the network and the client to handle."""
    [(path, body)] = await seed(tmp_path, 30_000)
    edge = await start_edge(edge_config(tmp_path, "front_door = true"))
    try:
        async with aiohttp.ClientSession() as s, s.get(edge.url + path) as r:  # the fill
            assert (r.status, await r.read()) == (200, body)
        segments = []
        for _ in range(5):  # each on a connection of its own: the front door answers
            sock = socket.create_connection(address(edge.url))
            sock.setblocking(False)
            reader, writer = await asyncio.open_connection(sock=sock)
            before = _data_segments_in(sock)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            status, headers, got = await read_response(reader)
            assert (status, headers["x-cache"], got) == ("HTTP/1.1 200 OK", "HIT", body)
            segments.append(_data_segments_in(sock) - before)
            writer.close()
        assert segments == [1] * 5, segments
        assert (await _stats(edge.url))["front_door_hits"] == 5
    finally:
        assert await edge.stop() == 0


async def test_what_is_only_on_disk_is_answered_by_the_front_door_in_order(
        tmp_path: Path) -> None:
    """Another worker's hit, or an entry evicted from memory, is in the node's disk tier
    only: the front door reads it into memory and answers it (a HIT, as aiohttp's path
    would) instead of handing the connection to aiohttp for good."""
    (a, body_a), (b, body_b) = await seed(tmp_path, 20_000, 30_000)
    config = edge_config(tmp_path, "front_door = true")
    edge = await start_edge(config)
    try:
        async with Polite(edge.url) as warm:
            for path in (a, b):
                assert (await warm.get(path))[1]["x-cache"] == "MISS"
    finally:
        assert await edge.stop() == 0
    edge = await start_edge(config)  # an empty memory tier; the disk tier kept both
    try:
        async with Polite(edge.url) as client:
            # Pipelined: both read from disk in turn, then from memory, answered in order.
            client.writer.write(b"".join(f"GET {p} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
                                         for p in (a, b, a, b)))
            for body in (body_a, body_b, body_a, body_b):
                status, headers, got = await read_response(client.reader)
                assert (status, headers["x-cache"], got) == ("HTTP/1.1 200 OK", "HIT", body)
            stats = await _stats(edge.url)
            # The stats call itself is aiohttp's; the client's connection never was.
            assert (stats["front_door_hits"], stats["front_door_handoffs"]) == (4, 1), stats
            status, headers, _ = await client.get(f"/i/{content_id(b'none')}/w640.webp")
            assert status == "HTTP/1.1 404 Not Found"  # a miss: aiohttp's from here on
            status, headers, got = await client.get(a)
            assert (status, headers["x-cache"], got) == ("HTTP/1.1 200 OK", "HIT", body_a)
            assert (await _stats(edge.url))["front_door_handoffs"] == 3
    finally:
        assert await edge.stop() == 0
