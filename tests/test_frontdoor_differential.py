"""The front door against aiohttp alone: the same raw bytes, sent to an edge with
`edge.front_door = true` and to one with it off, get the same answers in the same order.

Smuggling and desync shapes (CL.TE, TE.CL, duplicate and signed Content-Length,
Transfer-Encoding on GET, obs-fold, bare LF and CR, NUL, absolute-form, over-long lines),
pipelined mixtures of hits, misses and 404s, and requests split at every byte. Each
exchange ends with a `Connection: close` request, so an answer stream ends when the edge
closes (or after a second of silence: then both edges must have said the same so far).
Only `Date` and `Age` are normalised: the two edges are different caches, filled at
different instants.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path

import aiohttp
import pytest

from tests.helpers import ADMIN
from tests.topology import Service
from tests.wire import address, edge_config, read_until_quiet, seed, start_edge

pytestmark = pytest.mark.timeout(300)

SENTINEL = b"GET /nothing-here HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n"
SILENCE = 1.0


class Pair:
    """Two edges on copies of one origin: the front door on, and off."""

    def __init__(self, on: Service, off: Service, hot: str, cold: list[str], etag: str
                 ) -> None:
        self.on, self.off, self.hot, self.cold, self.etag = on, off, hot, cold, etag

    async def both(self, *parts: bytes, gap: float = 0.0) -> tuple[bytes, bytes]:
        on = await exchange(self.on.url, parts, gap)
        off = await exchange(self.off.url, parts, gap)
        return on, off

    async def same(self, *parts: bytes, gap: float = 0.0) -> bytes:
        on, off = await self.both(*parts, gap=gap)
        assert normalise(on) == normalise(off), (parts[0][:300], on[:2000], off[:2000])
        return on


async def exchange(url: str, parts: tuple[bytes, ...], gap: float) -> bytes:
    """Everything the edge sends back for `parts` (then the sentinel), written one after
    the other `gap` seconds apart (so each is its own segment)."""
    reader, writer = await asyncio.open_connection(*address(url))
    out = bytearray()
    try:
        for i, part in enumerate((*parts, SENTINEL)):
            if i and gap:
                await asyncio.sleep(gap)
            writer.write(part)
            await writer.drain()
        out += await read_until_quiet(reader, SILENCE)
    except (ConnectionResetError, BrokenPipeError):
        out += b"<reset>"
    finally:
        writer.close()
    return bytes(out)


def normalise(raw: bytes) -> bytes:
    raw = re.sub(rb"\r\nDate: [^\r\n]*", b"\r\nDate: -", raw)
    raw = re.sub(rb"\r\nAge: \d+", b"\r\nAge: -", raw)
    # aiohttp's plain-text 400 (the last answer: it closes) echoes the read it failed on,
    # and how the bytes were cut into reads is TCP's business, not the request's.
    return re.sub(rb"(HTTP/1\.[01] 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8"
                  rb"\r\nContent-Length: )\d+(\r\n(?:[^\r\n]+\r\n)*\r\n)[^<]*(<\w+>)$",
                  rb"\1-\2<echo>\3", raw, flags=re.S)


def statuses(raw: bytes) -> list[int]:
    return [int(s) for s in re.findall(rb"HTTP/1\.[01] (\d{3}) ", raw)]


async def _pair(tmp_path: Path) -> Pair:
    seeded = await seed(tmp_path / "on", 3000, 2500, 2000, 1500, 1000)
    shutil.copytree(tmp_path / "on" / "origin", tmp_path / "off" / "origin")
    on = await start_edge(edge_config(tmp_path / "on", "front_door = true"))
    off = await start_edge(edge_config(tmp_path / "off", "front_door = false"))
    hot = seeded[0][0]
    etags = []
    for edge in (on, off):  # the hot object in both memory tiers; the others stay cold
        async with aiohttp.ClientSession() as s, s.get(edge.url + hot) as r:
            assert r.status == 200
            etags.append(r.headers["ETag"])
    assert etags[0] == etags[1]
    return Pair(on, off, hot, [p for p, _ in seeded[1:]], etags[0])


async def _stop(pair: Pair) -> None:
    assert await pair.on.stop() == 0
    assert await pair.off.stop() == 0


def get(path: str, *headers: str, method: str = "GET", version: str = "1.1") -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "Host: edge", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _front_door_hits(url: str) -> int:
    async with aiohttp.ClientSession() as s, s.get(url + "/_admin/stats", headers=ADMIN) as r:
        return int((await r.json())["front_door_hits"])


async def test_plain_hits_are_answered_by_the_front_door_byte_for_byte_as_aiohttp(
        tmp_path: Path) -> None:
    pair = await _pair(tmp_path)
    try:
        before = await _front_door_hits(pair.on.url)
        raw = await pair.same(get(pair.hot) * 5, gap=0.2)  # the Connection: close apart
        assert statuses(raw) == [200] * 5 + [404]
        assert await _front_door_hits(pair.on.url) == before + 5  # it did answer them
        assert await _front_door_hits(pair.off.url) == 0
        # The same over separate writes, and a request that waits for its last bytes.
        await pair.same(get(pair.hot), get(pair.hot), gap=0.02)
        await pair.same(get(pair.hot)[:10], get(pair.hot)[10:], gap=0.05)
    finally:
        await _stop(pair)


async def test_smuggling_and_odd_requests_get_aiohttps_answers(tmp_path: Path) -> None:
    pair = await _pair(tmp_path)
    hot = pair.hot
    h = get(hot)
    cases = [
        # CL.TE and TE.CL: a second request hidden in the body of the first
        (b"GET " + hot.encode() + b" HTTP/1.1\r\nHost: edge\r\nContent-Length: 6\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nG" + h),
        (b"GET " + hot.encode() + b" HTTP/1.1\r\nHost: edge\r\nContent-Length: 4\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n" + f"{len(h):x}".encode() + b"\r\n" + h
         + b"\r\n0\r\n\r\n"),
        (b"POST " + hot.encode() + b" HTTP/1.1\r\nHost: edge\r\nTransfer-Encoding: chunked"
         b"\r\n\r\n0\r\n\r\n" + h),
        # Content-Length twice, signed, on a GET; Transfer-Encoding on a GET
        get(hot, "Content-Length: 0", "Content-Length: 5") + h,
        get(hot, "Content-Length: +5") + b"abcde" + h,
        get(hot, "Content-Length: -1") + h,
        get(hot, "Content-Length: 5") + b"abcde" + h,
        get(hot, "Content-Length: 0") + h,
        get(hot, "Transfer-Encoding: chunked") + b"0\r\n\r\n" + h,
        get(hot, "Transfer-Encoding: gzip, chunked") + b"0\r\n\r\n" + h,
        get(hot, "Transfer-Encoding: chunked", "Transfer-Encoding: identity") + h,
        # obs-fold, bare LF, bare CR, NUL, odd whitespace and names
        get(hot, "X-Fold: a", " b") + h,
        f"GET {hot} HTTP/1.1\nHost: edge\n\n".encode() + h,
        f"GET {hot} HTTP/1.1\r\nHost: edge\n\r\n".encode() + h,
        f"GET {hot} HTTP/1.1\rHost: edge\r\n\r\n".encode() + h,
        get(hot, "X-Nul: a\x00b") + h,
        f"GET {hot}\x00 HTTP/1.1\r\nHost: edge\r\n\r\n".encode() + h,
        get(hot, "Host : edge") + h,
        get(hot, "X Bad: 1") + h,
        get(hot, "X-Tab:\tvalue\t") + h,
        b"\r\n" + h,
        b"\r\n\r\n" + h,
        # absolute-form, encoded and odd targets, methods and versions
        get(f"http://edge{hot}") + h,
        get(hot.replace("/i/", "/i/%61", 1)) + h,
        get(hot.replace("w640", "w%36%340", 1)) + h,
        get(hot + "?v=1") + h,
        get(hot + "#frag") + h,
        get("/i/x/../" + hot[3:]) + h,
        get("/i/./" + hot[3:]) + h,
        get(hot.replace("/i/", "//i/", 1)) + h,
        get(hot, method="HEAD") + h,
        get(hot, method="get") + h,
        get(hot, method="OPTIONS") + h,
        get(hot, method="BREW") + h,
        get(hot, version="1.0") + h,
        get(hot, "Connection: keep-alive", version="1.0") + h,
        get(hot, version="1.2") + h,
        get(hot, version="2.0") + h,
        f"GET {hot}\r\nHost: edge\r\n\r\n".encode() + h,
        # Host missing or twice; headers that change the answer or the connection
        f"GET {hot} HTTP/1.1\r\n\r\n".encode() + h,
        get(hot, "Host: other") + h,
        get(hot, "Connection: close") + h,
        get(hot, "Connection: Keep-Alive") + h,
        get(hot, "Connection: keep-alive, Upgrade", "Upgrade: websocket") + h,
        get(hot, "Upgrade: h2c", "Connection: Upgrade, HTTP2-Settings",
            "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA") + h,
        get(hot, "Expect: 100-continue") + h,
        get(hot, f"If-None-Match: {pair.etag}") + h,
        get(hot, "If-None-Match: *") + h,
        get(hot, "Range: bytes=0-9") + h,
        get(hot, "Range: bytes=-0") + h,
        get(hot, "Range: bytes=0-9", 'If-Range: "nope"') + h,
        get(hot, "If-Modified-Since: Mon, 01 Jan 2024 00:00:00 GMT") + h,
        get(hot, "Accept: image/avif,image/webp") + h,
        get(hot, "Origin: https://example.com") + h,
        get(hot, "X-Forwarded-For: 10.9.9.9") + h,
        # over-long lines and heads
        get(hot + "?" + "a" * 9000) + h,
        get(hot, "X-Long: " + "b" * 9000) + h,
        get(hot, *(f"X-H{i}: v" for i in range(200))) + h,
        get(hot, *(f"X-H{i}: " + "c" * 100 for i in range(90))) + h,
        b"G" * 20000,
    ]
    try:
        for case in cases:
            # The sentinel in a read of its own: aiohttp alone answers differently when it
            # shares a read with some cases (after an upgrade, say), so both edges get the
            # same reads.
            await pair.same(case, gap=0.05)
    finally:
        await _stop(pair)


async def test_pipelined_mixtures_keep_their_order(tmp_path: Path) -> None:
    pair = await _pair(tmp_path)
    hot, cold = pair.hot, pair.cold
    missing = "/i/" + "0" * 64 + "/w640.webp"
    try:
        mixes = [
            get(hot) + get(cold[0]) + get(hot) + get("/nope") + get(hot),
            get(hot) * 3 + get(hot, f"If-None-Match: {pair.etag}") + get(hot) * 2,
            get(hot) + get(hot, "Range: bytes=5-15") + get(cold[0]) + get(hot, method="HEAD")
            + get(hot),
            get(hot) + get(missing) + get(hot) + get("/healthz") + get(hot),
            get(hot) * 2 + get(hot, "Connection: close") + get(hot),
            get(hot) + b"GET " + hot.encode() + b" HTTP/1.1\r\nHost: edge\r\n"
            b"Content-Length: 30\r\n\r\n" + get(hot)[:30] + get(hot),
        ]
        for mix in mixes:
            raw = await pair.same(mix, gap=0.05)
            assert statuses(raw), raw[:200]
        # A cold object turns hot on its first answer: both edges see the same sequence.
        raw = await pair.same(get(cold[1]) + get(cold[1]) * 3, gap=0.05)
        assert statuses(raw) == [200] * 4 + [404]
    finally:
        await _stop(pair)


async def test_requests_split_at_every_byte_get_the_same_answers(tmp_path: Path) -> None:
    pair = await _pair(tmp_path)
    hot = pair.hot
    try:
        for stream in (get(hot) + get(hot),
                       get(hot) + get(pair.cold[2], "Content-Length: 3") + b"xyz" + get(hot)):
            for cut in range(1, len(stream)):
                raw = await pair.same(stream[:cut], stream[cut:], gap=0.003)
                assert b"<silence>" not in raw, cut
    finally:
        await _stop(pair)
