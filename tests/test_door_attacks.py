"""Adversarial review of the edge's front door (edge/frontdoor.py): what a client sees with
the front door against what it sees from aiohttp alone, at the edges the differential corpus
(tests/test_frontdoor_differential.py) does not reach: requests with no sentinel after
them, half-closed connections, a drain with a body mid-send."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from pathlib import Path

import aiohttp
import pytest

from common.hashing import content_id
from common.signing import sign_path
from common.transform import parse
from origin import keys as K
from origin.fs import FsOrigin
from tests.helpers import ADMIN
from tests.test_frontdoor_differential import Pair, _pair, _stop, get, normalise, statuses
from tests.test_invalidation import Net, net  # noqa: F401 (the fixture)
from tests.topology import Service, env
from tests.wire import address, edge_config, read_response, read_until_quiet, seed, start_edge

pytestmark = pytest.mark.timeout(180)


async def _answers(url: str, data: bytes, half_close: bool = False,
                   silence: float = 2.0) -> bytes:
    """Everything the edge sends back for `data` alone (no sentinel after it): until it
    closes, or `silence` seconds pass without a byte."""
    reader, writer = await asyncio.open_connection(*address(url))
    out = bytearray()
    try:
        writer.write(data)
        await writer.drain()
        if half_close:
            writer.write_eof()
        out += await read_until_quiet(reader, silence)
    except (ConnectionResetError, BrokenPipeError):
        out += b"<reset>"
    finally:
        writer.close()
    return bytes(out)


async def _same_alone(pair: Pair, data: bytes, half_close: bool = False) -> bytes:
    on = await _answers(pair.on.url, data, half_close)
    off = await _answers(pair.off.url, data, half_close)
    assert normalise(on) == normalise(off), (data[:200], on[:600], off[:600])
    return on


async def test_a_malformed_request_with_nothing_after_it_is_answered_at_once(
        tmp_path: Path) -> None:
    """aiohttp answers a request it cannot parse with a 400 as soon as it sees it; the front
    door waited for a CRLFCRLF that a bare-LF (or otherwise broken) head never sends, and
    closed the connection silently after idle_timeout."""
    pair = await _pair(tmp_path)
    hot = pair.hot
    try:
        for case in (f"GET {hot} HTTP/1.1\nHost: edge\n\n".encode(),
                     f"GET {hot} HTTP/1.1\r\nHost: edge\n\n".encode(),
                     b"\x00\x01\x02 garbage\r\n",
                     b"GET /\x7f HTTP/1.1\r\n"):
            raw = await _same_alone(pair, case)
            assert statuses(raw) == [400], (case, raw[:300])
    finally:
        await _stop(pair)


async def test_a_hit_then_garbage_in_one_read_gets_aiohttps_answer(tmp_path: Path) -> None:
    """All or nothing per read: aiohttp answers a read that holds a bad request with one 400
    and none of the good ones before it; the front door answered the hit, then the 400."""
    pair = await _pair(tmp_path)
    hot = pair.hot
    try:
        for tail in (b"\x00\x01", b"GET / HTTP/1.1\nHost: x\n", b"BAD\x7f"):
            await pair.same(get(hot) + get(hot) + tail, gap=0.05)
    finally:
        await _stop(pair)


async def test_pipelined_hits_then_half_close_get_every_answer(tmp_path: Path) -> None:
    pair = await _pair(tmp_path)
    try:
        raw = await _answers(pair.on.url, get(pair.hot) * 5, half_close=True)
        assert statuses(raw) == [200] * 5, raw[:300]
        assert raw.endswith(b"<closed>")
    finally:
        await _stop(pair)


async def _stalled(url: str, data: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection that sends `data`, reads the first answer's head, and nothing more."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, address(url))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(data)
    status, _, _ = await read_response(reader, head=True)
    assert status == "HTTP/1.1 200 OK"
    return reader, writer


async def test_sigterm_drains_front_door_and_aiohttp_connections_at_once_in_bounded_time(
        tmp_path: Path) -> None:
    """A client that reads nothing on a connection aiohttp answers (a range request), and
    one on a connection the front door answers. aiohttp waits serve()'s shutdown_timeout
    (10 s) twice (for the handler, then for it to end once cancelled), as without the front
    door. Before: with the front door no SockSite carried that timeout, and aiohttp's runner
    waited its default 60 s, twice (> 90 s); then the front door's wait came on top of
    aiohttp's instead of beside it."""
    [(path, _)] = await seed(tmp_path, 8 << 20)
    edge = await start_edge(edge_config(
        tmp_path, "front_door = true\nsend_timeout = 120\nmemory_object_bytes = 33554432"))
    try:
        async with aiohttp.ClientSession() as s, s.get(edge.url + path) as r:
            assert r.status == 200
            await r.read()
        stalled = [await _stalled(edge.url, get(path, "Range: bytes=0-")),
                   await _stalled(edge.url, get(path))]
        await asyncio.sleep(0.5)
        assert edge.proc is not None
        t0 = time.monotonic()
        edge.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(150):
            assert await edge.proc.wait() == 0
        took = time.monotonic() - t0
        for _, writer in stalled:
            writer.close()
        assert took < 2 * (10 + 1) + 4, took  # aiohttp rounds each wait up to a second
    finally:
        await edge.stop(signal.SIGKILL)


async def test_a_half_closed_connection_never_gets_a_body_without_its_head(
        tmp_path: Path) -> None:
    """A client that sends its requests and shuts its write side: the transport is closing
    by the time aiohttp's handler answers, so the head written to it is dropped; the body,
    by sendfile(2) straight to the socket, went out anyway: the client read 3,000 bytes of
    image as if they were a response."""
    pair = await _pair(tmp_path)
    try:
        # Hits alone: the front door answers them all. With a miss among them the
        # connection is aiohttp's, and so it is on the edge without the front door.
        for url, data in ((pair.on.url, get(pair.hot) + get(pair.cold[0]) + get(pair.hot)),
                          (pair.off.url, get(pair.hot)),
                          (pair.off.url, get(pair.hot) * 3)):
            raw = await _answers(url, data, half_close=True)
            assert raw == b"<closed>" or raw.startswith(b"HTTP/1.1 "), raw[:100]
    finally:
        await _stop(pair)


async def test_hits_being_sent_then_a_miss_and_hits_in_a_later_read_keep_their_order(
        tmp_path: Path) -> None:
    """The front door is still sending large hits (the client reads slowly) when a read with
    a miss, a hit and a 404 arrives: aiohttp takes the connection only once those bodies are
    out, and every answer comes back whole and in order."""
    (big, big_body), (cold, cold_body) = await seed(tmp_path, 1 << 20, 4000)
    edge = await start_edge(edge_config(tmp_path, "front_door = true"))
    missing = "/i/" + "0" * 64 + "/w640.webp"
    try:
        async with aiohttp.ClientSession() as s, s.get(edge.url + big) as r:
            assert r.status == 200 and r.headers["X-Cache"] == "MISS"
            await r.read()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, address(edge.url))
        reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 16)
        writer.write(get(big) * 3)
        await writer.drain()
        await asyncio.sleep(0.3)  # the front door holds the rest of the first body
        writer.write(get(cold) + get(big) + get(missing) + get(big))
        await writer.drain()
        want = [(big_body, "HIT")] * 3 + [(cold_body, "MISS"), (big_body, "HIT"),
                                          (None, None), (big_body, "HIT")]
        async with asyncio.timeout(30):
            for i, (body, cache) in enumerate(want):
                status, headers, got = await read_response(reader)
                if body is None:
                    assert status == "HTTP/1.1 404 Not Found", i
                else:
                    assert (status, headers["x-cache"]) == ("HTTP/1.1 200 OK", cache), i
                    assert got == body, i
        writer.close()
        async with aiohttp.ClientSession() as s, s.get(edge.url + "/_admin/stats",
                                                       headers=ADMIN) as r:
            stats = await r.json()
        assert stats["front_door_hits"] == 3 and stats["front_door_handoffs"] >= 1, stats
    finally:
        assert await edge.stop() == 0


# -- ingest peers (ingest/peers.py) -------------------------------------------------------

class _BadPeer:
    """A TCP server at a peer's address: `hang` accepts and never answers; otherwise it
    answers every request 200 with `body`."""

    def __init__(self, body: bytes | None) -> None:
        self.body = body
        self.asked = 0

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                     ) -> None:
        self.asked += 1
        try:
            async with asyncio.timeout(60):
                await reader.readuntil(b"\r\n\r\n")
                if self.body is None:
                    await reader.read()  # until the asker gives up
                    return
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                             % (len(self.body), self.body))
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        self.server.close()


async def test_a_purge_answers_in_time_whatever_its_peers_do(
        net: Net) -> None:  # noqa: F811 (the fixture)
    # Five peers at once, one per misbehaviour (one topology, not five: the suite's time).
    peers = [_BadPeer(body) for body in (None, b"[1, 2]", b'{"edges": [1]}', b"not json",
                                         b'{"edges": {"e1": 1e999}}',
                                         b'{"edges": {"ghost": "false"}}')]
    urls = [await peer.start() for peer in peers]
    net.write()
    listed = ", ".join(f'"{u}"' for u in urls)
    net.config.write_text(net.config.read_text().replace(
        "[ingest]\n", f"[ingest]\npeers = [{listed}]\n"))
    try:
        ingest = await net.start_ingest()
        await net.start_edge("e1")
        t0 = time.monotonic()
        async with net.http.post(ingest.url + "/v1/purges", json={"ids": ["a" * 64]},
                                 headers=ADMIN) as r:
            assert r.status == 200, await r.text()
            # e1 follows this replica: applied, whatever the peers said or did not say.
            assert (await r.json())["edges"] == {"e1": "applied"}
        assert time.monotonic() - t0 < 5 + 2 + 1  # purge_ack_seconds + the peer's slack
        assert all(peer.asked >= 1 for peer in peers)
    finally:
        for peer in peers:
            await peer.close()


async def test_more_odd_heads_get_aiohttps_answers(tmp_path: Path) -> None:
    """Heads the differential corpus lacks, each where llhttp (httptools) and aiohttp's own
    parser might judge differently, each then followed by a plain hit."""
    pair = await _pair(tmp_path)
    hot = pair.hot
    h = get(hot)
    cases = [
        get(hot, "X-Obs: caf\xe9".encode("latin-1").decode("latin-1")),
        get(hot, "X!#$%&'*+-.^_`|~: 1"),
        get(hot, "X-Empty:"),
        get(hot, "X-Empty: "),
        get(hot, "Host: a b"),
        get(hot, "Host:"),
        get(hot, "Host: edge:99999"),
        get(hot, "X-Ctl: a\x01b"),
        get(hot, "X-Del: a\x7fb"),
        get(hot, "X-Trail: a "),
        get(hot, ": novalue"),
        get(hot, "X-Colon:: 1"),
        f"GET  {hot} HTTP/1.1\r\nHost: edge\r\n\r\n".encode(),
        f"GET {hot}  HTTP/1.1\r\nHost: edge\r\n\r\n".encode(),
        f"GET {hot} HTTP/1.1 \r\nHost: edge\r\n\r\n".encode(),
        f"GET\t{hot} HTTP/1.1\r\nHost: edge\r\n\r\n".encode(),
        f"GET {hot} HTTP/01.1\r\nHost: edge\r\n\r\n".encode(),
        f"GET {hot} http/1.1\r\nHost: edge\r\n\r\n".encode(),
        f" GET {hot} HTTP/1.1\r\nHost: edge\r\n\r\n".encode(),
        f"GET {hot}? HTTP/1.1\r\nHost: edge\r\n\r\n".encode(),
        f"GET {hot}; HTTP/1.1\r\nHost: edge\r\n\r\n".encode(),
        f"GET {hot.upper()} HTTP/1.1\r\nHost: edge\r\n\r\n".encode(),
        get(hot, "Connection: keep-alive", "Connection: keep-alive"),
        get(hot, "Connection: keep-alive,"),
        get(hot, "Connection: ,keep-alive"),
        get(hot, "Connection: TE", "TE: trailers"),
        get(hot, "If-Match: *"),
        get(hot, 'If-Match: "nope"'),
        get(hot, "If-Unmodified-Since: Mon, 01 Jan 2024 00:00:00 GMT"),
        get(hot, "If-Modified-Since: Mon, 01 Jan 2124 00:00:00 GMT"),
        get(hot, 'If-Range: "x"'),
        get(hot, "Accept-Encoding: gzip, br"),
        get(hot, "Cookie: a=b"),
        get(hot, "Authorization: Bearer x"),
        get(hot, "Content-Length:0"),
        get(hot, "Transfer-Encoding:chunked") + b"0\r\n\r\n",
        get(hot, "Transfer-Encoding: chunked\x00") + b"0\r\n\r\n",
        get(hot, "X-Forwarded-Proto: https"),
        get(hot, *(f"X-H{i}: v" for i in range(64))),
        get(hot, *(f"X-H{i}: v" for i in range(128))),
        get(hot, *(f"X-H{i}: v" for i in range(129))),
        get(hot, "X-Long: " + "b" * 8150),
        get(hot + "x" * 8100),
    ]
    try:
        for case in cases:
            await pair.same(case + h, gap=0.05)
    finally:
        await _stop(pair)


@pytest.mark.parametrize("front_door", ["true", "false"])
async def test_a_signed_transform_is_not_served_unsigned_once_hot(tmp_path: Path,
                                                                  front_door: str) -> None:
    """`/i/{id}/t-{hash}.webp` (the stored name of a signed transform, computable from a
    common spec) is no variant: 404. Once a signed request made it hot, the hit fast paths
    (the front door's, and the media handler's before aiohttp's routing of names) answered
    it 200 without a signature: the same URL's answer depended on what was hot."""
    key = "k" * 40
    image_id, body = content_id(os.urandom(32)), os.urandom(3000)
    name = parse("w=100").name
    await FsOrigin(tmp_path / "origin").put(K.variant(image_id, name, "webp"), body,
                                            "image/webp", {"blake3": content_id(body)})
    edge = await Service(["edge", "--node", "eu-west-a", "--config",
                          str(edge_config(tmp_path, f"front_door = {front_door}"))],
                         env({"MEDIACDN_SIGNING_KEY": key})).start()
    unsigned = f"/i/{image_id}/{name}.webp"
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(edge.url + unsigned) as r:
                cold = r.status
            assert cold == 404
            for cache in ("MISS", "HIT"):
                async with s.get(edge.url + sign_path(key, image_id, "w=100", "webp")) as r:
                    assert (r.status, r.headers["X-Cache"]) == (200, cache)
                    assert await r.read() == body
        for _ in range(2):  # a connection of its own, whose first request it is
            async with aiohttp.ClientSession() as s, s.get(edge.url + unsigned) as r:
                assert r.status == cold, r.headers.get("X-Cache")
    finally:
        assert await edge.stop() == 0

