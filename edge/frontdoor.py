"""The front door: plain hits answered in the connection's protocol, before aiohttp.

A hit through aiohttp costs its whole request machinery (parser glue, Request and Response
objects, routing, a handler task): about 3x nginx's CPU per hit here, when a bare asyncio
Protocol on uvloop serves the same bytes at nginx's rate (issue 13). So each connection
starts with this protocol in front of aiohttp's own (`RequestHandler`, made by the
runner's public `server` factory, driven only through the public asyncio Protocol
methods):

- Each request head (up to the first CRLFCRLF) goes through llhttp in strict mode
  (httptools, the parser aiohttp's own C parser is built on). Only a complete, keep-alive
  HTTP/1.1 GET, with a Host, no header twice, no framing, conditional, range or upgrade
  header, of a path `/i/{id}/{name}` with nothing to decode, whose key is in the memory
  tier while the node serves, is answered here: exactly what the media handler answers
  with a pre-rendered HotResponse (edge/handlers.py, edge/sendfile.py), with the same
  journal catch-up first, counters, touch and access log. A key in the disk tier only
  (another worker's hit, or evicted from memory) is read into memory first, as the
  handler's disk hit does (verified, not kept if a purge raced it), reading paused
  meanwhile; then answered the same way.
- Anything else (a miss, HEAD, a 404, a parse error, an over-long head, an odd byte) hands
  the connection to aiohttp for good, starting with that request's first byte: aiohttp sees
  exactly the bytes it would have seen, and every earlier request was answered in full
  already, so order holds. Nothing is parsed by hand; the front door only ever declines.
- A client that does not read gets nothing more processed: past the connection's buffer
  limit the transport pauses us (high water mark = edge.connection_buffer_bytes), we stop
  reading, and the rest of a body goes out in pieces as the client takes them.
- An idle connection is closed after idle_timeout, as aiohttp's keep-alive timer does.
- TLS: the body is written through the transport, never sendfile(2) to the raw socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import sqlite3
import time
from collections.abc import Callable
from typing import cast

import httptools
from aiohttp import web

from common.backpressure import SendLimits
from common.transform import TRANSFORM_PREFIX
from edge.handlers import MediaHandler
from edge.memory import HotEntry
from edge.sendfile import sendfile_to
from edge.stats import EdgeStats

log = logging.getLogger("mediacdn.edge.access")
problems = logging.getLogger("mediacdn.edge.frontdoor")

# aiohttp's parser limits (max_line_size, max_field_size 8190; 128 headers): a head this
# large, or with more headers, is aiohttp's to judge.
MAX_HEAD = 8190
MAX_HEADERS = 64
HEAD_END = b"\r\n\r\n"
# A disk read the front door waits for (the disk tier's own lock timeout is 10 s).
LOAD_SECONDS = 10.0
# The media route with nothing yarl would decode or normalise: no %, no dot segments, no
# query; the key is then the raw text, as aiohttp's match_info would give it. Not a signed
# transform's stored name: that is no variant (404), however hot its key is.
_MEDIA = re.compile(rb"/i/[0-9A-Za-z_\-][0-9A-Za-z_.\-]*/(?!" + re.escape(TRANSFORM_PREFIX.encode())
                    + rb")[0-9A-Za-z_\-][0-9A-Za-z_.\-]*")
# Headers that change framing, connection handling or the answer: with any of them, aiohttp
# answers (the media handler's own fast path declines on If-None-Match and Range too).
_DECLINE = frozenset({
    b"content-length", b"transfer-encoding", b"te", b"trailer", b"upgrade", b"expect",
    b"if-none-match", b"range", b"content-encoding", b"content-type", b"http2-settings",
    b"proxy-connection", b"keep-alive",
})


class Lookup:
    """What the front door asks the edge about a key: set up by create_app (edge/app.py)."""

    def __init__(self, media: MediaHandler) -> None:
        self.media = media

    def catch_up(self) -> None:
        """Apply purges other workers or the follower published (MediaHandler.handle does
        the same first)."""
        if self.media.cache is not None:
            self.media.cache.invalidation.catch_up()

    def find(self, key: str, now: int) -> HotEntry | None:
        """The hot entry for `key` if the media handler would answer it from memory now."""
        cache = self.media.cache
        if cache is None:  # not started yet
            return None
        hot = cache.memory.get(key)
        if hot is None or not cache.journal.serving(self.media.run, now):
            return None
        return hot

    def serving(self, now: int) -> bool:
        cache = self.media.cache
        return cache is not None and cache.journal.serving(self.media.run, now)

    async def load(self, key: str) -> None:
        """Into the memory tier from the disk tier, as the media handler's disk hit does
        (verified; not kept if a purge raced the read). Bounded: a stalled disk makes
        the request aiohttp's, which has its own bounds, rather than hold it here."""
        cache = self.media.cache
        if cache is None:
            return
        with contextlib.suppress(TimeoutError, OSError, sqlite3.Error):
            async with asyncio.timeout(LOAD_SECONDS):
                await cache.from_disk(key)

    def touch(self, key: str) -> None:
        if self.media.cache is not None:
            self.media.cache.disk.touch(key)


class FrontDoor:
    """Per edge worker: makes the protocol of every connection on the media listener."""

    def __init__(self, media: MediaHandler, limits: SendLimits, log_hits: bool,
                 trusted: bool) -> None:
        self.lookup = Lookup(media)
        self.stats: EdgeStats = self.lookup.media.stats
        self.limits = limits
        self.log_hits = log_hits
        # With trusted proxies, the access log's client is the forwarded one: aiohttp's.
        self.decline_all = log_hits and trusted
        self.connections: set[FrontDoorProtocol] = set()
        self.closing = False
        self.draining: asyncio.Future[None] | None = None  # drain(), once started
        self.empty: asyncio.Event | None = None  # set once draining and none is left

    def factory(self, inner: Callable[[], asyncio.Protocol], tls: bool,
                idle_timeout: float) -> Callable[[], asyncio.Protocol]:
        def make() -> asyncio.Protocol:
            return FrontDoorProtocol(self, inner, tls, idle_timeout)
        return make

    def drain(self, grace: float) -> None:
        """At shutdown (common/serve.py; aiohttp's own connections drain meanwhile): idle
        connections still ours close at once, busy ones once their current answer is out
        (as aiohttp's do when the runner shuts down), for up to `grace` seconds; the rest
        are cut then. The app's cleanup awaits `drained()` before it closes the memfds
        their bodies are sent from."""
        if self.draining is None:
            self.draining = asyncio.ensure_future(self._drain(grace))

    async def drained(self) -> None:
        if self.draining is not None:
            await asyncio.shield(self.draining)

    async def _drain(self, grace: float) -> None:
        self.closing = True
        self.empty = asyncio.Event()
        for conn in list(self.connections):
            conn.close_when_done()
        if self.connections:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self.empty.wait()
        for conn in list(self.connections):
            conn.abort()

    def forget(self, conn: FrontDoorProtocol) -> None:
        self.connections.discard(conn)
        if self.empty is not None and not self.connections:
            self.empty.set()


class _Partial:
    """httptools callbacks for a head that has not ended yet: did llhttp see it end?"""

    def __init__(self) -> None:
        self.ended = False

    def on_headers_complete(self) -> None:
        self.ended = True


def _broken(partial: bytes) -> bool:
    """Whether llhttp already rejects the start of a request (or ends its head without a
    CRLFCRLF): a fresh parser, so the connection's own sees only whole heads."""
    seen = _Partial()
    try:
        httptools.HttpRequestParser(seen).feed_data(partial)
    except (httptools.HttpParserError, httptools.HttpParserUpgrade):
        return True
    return seen.ended


class FrontDoorProtocol(asyncio.Protocol):
    def __init__(self, door: FrontDoor, inner: Callable[[], asyncio.Protocol], tls: bool,
                 idle_timeout: float) -> None:
        self.door = door
        self.make_inner = inner
        self.inner: asyncio.Protocol | None = None  # aiohttp's, once handed over
        self.tls = tls
        self.idle_timeout = idle_timeout
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.buf = b""
        self.parser = httptools.HttpRequestParser(self)
        # Per request, set by the parser's callbacks.
        self.url = b""
        self.names: set[bytes] = set()
        self.decline = False
        self.begun = 0
        self.complete = 0
        # A body still going out (entry held, next offset), and the transport's pause.
        self.sending: tuple[HotEntry, int] | None = None
        self.write_paused = False
        self.read_paused = False
        self.eof = False
        self.close_after = False
        self.deadline = 0.0
        self.now = 0  # the second the current request is answered in (Date, Age)
        self.timer: asyncio.TimerHandle | None = None
        # Our own handle on the connection's socket, for send(MSG_MORE) and sendfile(2);
        # never on TLS. It wraps uvloop's fd without owning it: detached, never closed.
        self.raw: socket.socket | None = None
        # Requests validated in the buffer, waiting for the client to read or for the disk
        # tier: (end offset in buf, key, path, hot entry or None if not in memory).
        self.pending: list[tuple[int, str, bytes, HotEntry | None]] = []
        self.answered = 0
        self.stale = False  # we waited since the pending were looked up: look again
        self.loading: asyncio.Task[None] | None = None  # the disk read we wait for
        self.loaded = -1  # index in pending whose key was loaded from disk already

    # -- asyncio Protocol ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        transport = self.transport
        if self.door.closing or self.door.decline_all:
            self._hand_over()
            return
        self.door.connections.add(self)
        self.door.limits.mark(transport)  # pause_writing past the connection's limit
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)  # as aiohttp does
            # On TLS the socket carries ciphertext: never sendfile(2) to it.
            if not self.tls:
                raw = socket.socket(sock.family, sock.type, sock.proto, sock.fileno())
                if raw.gettimeout():  # a default timeout set: send() would wait, never
                    raw.settimeout(0)
                self.raw = raw
        self.deadline = self.loop.time() + self.idle_timeout
        self.timer = self.loop.call_at(self.deadline, self._idle)

    def data_received(self, data: bytes) -> None:
        inner = self.inner
        if inner is not None:
            inner.data_received(data)
            return
        self.buf = self.buf + data if self.buf else data
        if not self._blocked():
            self._serve()

    def eof_received(self) -> bool | None:
        if self.inner is not None:
            return self.inner.eof_received()
        self.eof = True
        if self._blocked():
            return True  # finish what was asked; _serve closes after
        if self.buf:  # a partial request: aiohttp decides what that means
            self._hand_over()
            assert self.inner is not None
            return self.inner.eof_received()
        return None  # the transport closes

    def connection_lost(self, exc: Exception | None) -> None:
        self._let_go()
        self.door.forget(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.sending is not None:
            self.sending[0].release()
            self.sending = None
        if self.inner is not None:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()
            return
        self.write_paused = True

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()
            return
        self.write_paused = False
        if self.sending is not None:
            self._pump()
        if not self._blocked():
            self._unblocked()

    # -- httptools callbacks -------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.begun += 1

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        lname = name.lower()
        repeated = lname in self.names or len(self.names) >= MAX_HEADERS
        closing = lname == b"connection" and value.lower() != b"keep-alive"
        if repeated or closing or lname in _DECLINE:
            self.decline = True
        self.names.add(lname)

    def on_message_complete(self) -> None:
        self.complete += 1

    # -- serving -------------------------------------------------------------------------
    def _blocked(self) -> bool:
        return self.sending is not None or self.write_paused or self.loading is not None

    def _serve(self) -> None:
        """Answer what the buffer asks, or hand the connection to aiohttp."""
        while not self.close_after:  # draining: nothing more once the current answer is out
            if not self.pending:
                if not self._validate():
                    return  # aiohttp's now
                if not self.pending:
                    break  # nothing complete yet
            if not self._answer_pending():
                return  # the client must read first, or aiohttp's now
            if not self.buf:
                break
            # All answered: what arrived meanwhile is validated next.
        if self.close_after or (self.eof and not self.buf):
            self._close()

    def _validate(self) -> bool:
        """Queue the complete requests in the buffer if every one is a plain GET the front
        door may answer (hot, or perhaps on disk); otherwise aiohttp takes the connection,
        buffer and all (False). All or nothing,
        because aiohttp parses a read as a whole: a bad request in it discards the good
        ones before it (one 400 answers the read), so the front door must not have
        answered those."""
        buf, lookup = self.buf, self.door.lookup
        self.now = now = int(time.time())
        lookup.catch_up()  # purges by other workers or the follower, first
        pending: list[tuple[int, str, bytes, HotEntry | None]] = []
        pos, size = 0, len(buf)
        while (end := buf.find(HEAD_END, pos)) >= 0:
            end += 4
            head = buf if end == size and pos == 0 else buf[pos:end]
            key = self._parse(head) if end - pos <= MAX_HEAD else None
            if key is None or not lookup.serving(now):
                self._hand_over()
                return False
            # Not in memory: perhaps on disk (another worker's hit, or evicted from
            # memory); looked for there when its turn comes.
            pending.append((end, key, self.url, lookup.find(key, now)))
            pos = end
        if pos < size and (size - pos > MAX_HEAD or self.eof or _broken(buf[pos:])):
            # aiohttp's to judge (and to answer or not). A head already broken before its
            # CRLFCRLF (bare LF line ends, a bad byte) may never get one: aiohttp answers
            # it with a 400 now, and with a read that holds it, none of the hits before.
            self._hand_over()
            return False
        self.pending, self.answered, self.stale, self.loaded = pending, 0, False, -1
        return True

    def _answer_pending(self) -> bool:
        """Answer the queued requests in order; False if the client must read first, the
        disk tier is being read, or aiohttp took the connection. Validated once: a client
        that pipelines thousands of requests and reads slowly costs one parse per request,
        not one per wait."""
        lookup = self.door.lookup
        stale = self.stale
        if stale:  # we waited (the client, or the disk): purges may have come meanwhile
            self.now = int(time.time())
            lookup.catch_up()
            self.stale = False
        now, pending = self.now, self.pending
        done = pending[self.answered - 1][0] if self.answered else 0  # answered up to here
        for i in range(self.answered, len(pending)):
            end, key, path, hot = pending[i]
            if hot is None or (stale and (hot.retired or lookup.find(key, now) is not hot)):
                hot = lookup.find(key, now)  # purged, evicted or loaded meanwhile
            if hot is None:
                if i != self.loaded and lookup.serving(now):
                    # Its turn: read the disk tier, then answer from memory (or not).
                    self.buf, self.pending = self.buf[done:], [
                        (e - done, k, p, h) for e, k, p, h in pending[i:]]
                    self.answered, self.loaded, self.stale = 0, 0, True
                    self._block_reading()
                    self.loading = self.loop.create_task(lookup.load(key))
                    self.loading.add_done_callback(self._loaded)
                    return False
                # Neither in memory nor on disk (a miss), or not serving: aiohttp answers
                # from this request on, in order.
                self.buf, self.pending, self.answered = self.buf[done:], [], 0
                self._hand_over()
                return False
            self._answer(hot, path)
            done = end
            if self._blocked():
                self.answered, self.stale = i + 1, True
                self._block_reading()
                return False
        self.buf, self.pending, self.answered = self.buf[done:], [], 0
        return True

    def _loaded(self, task: asyncio.Task[None]) -> None:
        self.loading = None
        if not task.cancelled() and (exc := task.exception()) is not None:
            # Not a disk the tier handles (its I/O threads shut down, say): the request is
            # aiohttp's, which reports what it finds.
            problems.warning("reading %s from disk failed: %r",
                        self.pending[0][1] if self.pending else "?", exc)
        transport = self.transport
        if self.inner is not None or transport is None or transport.is_closing():
            return
        if self.close_after and self.pending:
            # Draining: the request we read the disk for is in flight, and is answered
            # (from memory, or by aiohttp) as aiohttp's drain answers its own; nothing
            # after it.
            self.buf, self.pending = self.buf[:self.pending[0][0]], self.pending[:1]
            if self._answer_pending() and not self._blocked():
                self._close()
            return
        self._unblocked()

    def _parse(self, head: bytes) -> str | None:
        """The cache key a head asks for, if it is a plain GET the front door may answer
        (from memory, or once loaded from disk); None: aiohttp's to answer."""
        self.names.clear()
        self.decline = False
        self.begun = self.complete = 0
        self.url = b""
        parser = self.parser
        try:
            parser.feed_data(head)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            return None  # aiohttp answers (its own 400, or its upgrade handling)
        if (self.decline or self.begun != 1 or self.complete != 1
                or b"host" not in self.names or parser.get_method() != b"GET"
                or parser.get_http_version() != "1.1" or not parser.should_keep_alive()
                or _MEDIA.fullmatch(self.url) is None):
            return None
        return self.url[3:].decode("ascii")

    def _answer(self, hot: HotEntry, path: bytes) -> None:
        transport = self.transport
        assert transport is not None
        door = self.door
        if transport.is_closing():
            return
        door.lookup.touch(hot.key)
        if not hot.acquire():  # closed under us (practically never): as HotResponse does
            transport.close()
            return
        stats = door.stats
        stats.fast_hits += 1
        stats.front_door_hits += 1
        stats.bytes_served += hot.size
        if door.log_hits:
            peer = transport.get_extra_info("peername")
            log.info("GET %s -> 200 HIT", path.decode("ascii"),
                     extra={"status": 200, "cache": "HIT", "bytes": hot.size,
                            "remote": peer[0] if peer else None})
        sent = self._send(transport, hot.hit_head(self.now), hot)
        self.deadline = self.loop.time() + self.idle_timeout
        if sent < hot.size:
            self.sending = (hot, sent)
            self._pump()
        else:
            hot.release()

    def _send(self, transport: asyncio.Transport, head: bytes, hot: HotEntry) -> int:
        """The head, then as much of the body as the kernel takes from the memfd right away:
        how much of the body went. The head goes with MSG_MORE, so the kernel sends it in
        the body's first segment rather than a packet of its own, as nginx's tcp_nopush
        does (measured: about 10% less CPU per hit; TCP_CORK would cost two setsockopt
        calls more). Only with nothing buffered on the transport, which would otherwise
        have to go first; _answer checked it is not closing."""
        raw = self.raw
        if raw is None or transport.get_write_buffer_size() or not hot.size:
            transport.write(head)  # TLS, or behind what waits (the body follows it there)
            return 0
        try:
            sent = raw.send(head, socket.MSG_MORE)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:  # the peer went away: the transport will report it
            return 0
        if sent < len(head):
            transport.write(head[sent:])  # the body follows through the transport
            return 0
        return sendfile_to(raw.fileno(), hot)

    def _pump(self) -> None:
        """More of the body, a piece at a time, while the connection holds at most its
        limit; resume_writing calls again once the client took enough."""
        assert self.sending is not None and self.transport is not None
        hot, sent = self.sending
        transport, limit = self.transport, self.door.limits.buffer_bytes
        while sent < hot.size and transport.get_write_buffer_size() <= limit:
            if transport.is_closing():
                break
            end = min(hot.size, sent + limit)
            transport.write(hot.read(sent, end))
            sent = end
        if sent < hot.size and not transport.is_closing():
            self.sending = (hot, sent)
            return
        self.sending = None
        hot.release()

    def _block_reading(self) -> None:
        if not self.read_paused and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()

    def _unblocked(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        self._serve()

    # -- endings -------------------------------------------------------------------------
    def _hand_over(self) -> None:
        """aiohttp takes the connection from the current request's first byte on."""
        transport = self.transport
        assert transport is not None and self.inner is None and not self._blocked()
        self._let_go()
        door = self.door
        # Draining: aiohttp's own shutdown began before this handler existed, so nothing of
        # aiohttp's waits for its answer; the front door's drain does (the connection stays
        # ours to count until it is lost), or the app's cleanup closes the cache under it.
        draining = door.closing
        if draining:
            door.connections.add(self)
        else:
            door.forget(self)
        door.stats.front_door_handoffs += 1
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.read_paused:
            self.read_paused = False
            transport.resume_reading()
        inner = self.make_inner()
        self.inner = inner
        inner.connection_made(transport)
        data, self.buf = self.buf, b""
        if data:
            inner.data_received(data)
        if self.eof and not inner.eof_received():
            transport.close()
        if draining and isinstance(inner, web.RequestHandler):
            inner.close()  # once it answered what it was given, as aiohttp's drain does

    def _let_go(self) -> None:
        """Drop our handle on the socket without closing it: uvloop owns the fd (and may
        have closed it already, its number soon another connection's)."""
        if self.raw is not None:
            self.raw.detach()
            self.raw = None

    def close_when_done(self) -> None:
        self.close_after = True
        if not self._blocked():
            self._close()

    def _close(self) -> None:
        if self.transport is not None and self.inner is None:
            self.transport.close()

    def abort(self) -> None:
        """The drain's time is up: cut the connection, answer or not (aiohttp's too, if it
        took the connection while draining)."""
        if self.transport is not None:
            self.transport.abort()

    def _idle(self) -> None:
        """aiohttp's keep-alive timer: no whole request for idle_timeout closes the
        connection (a slow reader of an answer is send_timeout's business)."""
        self.timer = None
        if self.inner is not None or self.transport is None or self.transport.is_closing():
            return
        now = self.loop.time()
        if not self._blocked() and now >= self.deadline:  # else send_timeout's business
            self.transport.close()
            return
        self.timer = self.loop.call_at(max(self.deadline, now + 1.0), self._idle)
