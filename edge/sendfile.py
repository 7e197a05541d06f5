"""A 200 HIT whose body goes out with sendfile(2) from a hot entry's memfd.

uvloop has no loop.sendfile, so aiohttp's FileResponse falls back to reads through a
thread pool there (measured). Two ways out, fastest first:

- Pre-rendered: for a plain keep-alive HTTP/1.1 GET with nothing buffered on the
  transport, the status line and headers were rendered once per entry per second; they
  are written to the transport and the body handed to the kernel from the memfd. Measured
  on aiohttp + uvloop with 60 KB bodies: ~31k req/s vs ~25k through aiohttp's header path.
  aiohttp's connection loop only calls prepare() and write_eof() and reads keep_alive,
  all public, so this class overrides those rather than touching aiohttp's internals.
- Otherwise aiohttp writes the headers as usual, then the same sendfile.
- With TLS on the node (TlsHotResponse), never sendfile: the body goes through the SSL
  transport in the same pieces.

Whatever the socket does not take right away goes through the transport in pieces of
`buffer_bytes`, waiting for the client between them (common/backpressure.py), so a
connection holds at most about twice that however large the object; the entry's fd is
held (acquire/release) for as long as that takes, released on every way out (client gone,
dropped after send_timeout, cancelled). With an empty buffer, none of this awaits anything.
"""

from __future__ import annotations

import asyncio
import os

from aiohttp import HttpVersion11, hdrs, web
from aiohttp.abc import AbstractStreamWriter

from common.backpressure import SendLimits
from edge.memory import HotEntry


def send_now(transport: asyncio.Transport, hot: HotEntry) -> int:
    """Bytes the kernel took from the memfd right away (0 if the socket is busy, or the
    transport is closing: it dropped the head just written, and a body sent past it
    would reach the client as if it were a response; a half-closed client's is)."""
    sock = transport.get_extra_info("socket")
    if sock is None or transport.is_closing() or transport.get_write_buffer_size():
        return 0
    return sendfile_to(sock.fileno(), hot)


def sendfile_to(fd: int, hot: HotEntry) -> int:
    """sendfile(2) of the entry to socket `fd`, whose transport has nothing buffered: the
    bytes the kernel took right away."""
    try:
        return os.sendfile(fd, hot.fd, 0, hot.size)
    except (BlockingIOError, InterruptedError):
        return 0
    except OSError:  # the peer went away: the transport will report it
        return 0


class HotResponse(web.StreamResponse):
    # How much of the body the kernel sends straight from the memfd (0: all through the
    # transport). A class attribute: the TLS subclass chooses once, no check per hit.
    _kernel_send = staticmethod(send_now)

    def __init__(self, hot: HotEntry, now: int, limits: SendLimits) -> None:
        super().__init__(status=200)
        self._hot = hot
        self._now = now
        self._limits = limits
        self._started = False
        self._pre_rendered = False

    @property
    def keep_alive(self) -> bool | None:
        # A pre-rendered hit answers a keep-alive HTTP/1.1 GET: what aiohttp would decide.
        return True if self._pre_rendered else super().keep_alive

    @property
    def prepared(self) -> bool:
        return self._started or super().prepared

    async def write_eof(self, data: bytes = b"") -> None:
        if not self._pre_rendered:  # else sent whole by prepare()
            await super().write_eof(data)

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self._started:  # aiohttp calls it again once the handler returned
            return None
        self._started = True
        hot = self._hot
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("the client went away")
        if not hot.acquire():
            # Retired and closed between the handler and here (practically never): end
            # the connection rather than send anything else; the client retries.
            transport.close()
            return None
        try:
            if (request.method == hdrs.METH_GET and request.keep_alive
                    and request.version == HttpVersion11
                    and not transport.get_write_buffer_size()
                    and transport.get_extra_info("socket") is not None):
                self._pre_rendered = True
                transport.write(hot.hit_head(self._now))
                sent = self._kernel_send(transport, hot)
                if sent < hot.size:  # the socket is full: the rest waits for the client
                    await self._send_rest(request, transport, sent)
                return None
            return await self._through_aiohttp(request, transport, hot)
        finally:
            hot.release()

    async def _send_rest(self, request: web.BaseRequest, transport: asyncio.Transport,
                         sent: int) -> None:
        """The rest of the body after `sent` bytes, in pieces, waiting for the client
        whenever the connection holds more than its limit."""
        hot, limits = self._hot, self._limits
        while sent < hot.size:
            end = min(hot.size, sent + limits.buffer_bytes)
            transport.write(hot.read(sent, end))
            sent = end
            await limits.settle(request)

    async def _through_aiohttp(self, request: web.BaseRequest, transport: asyncio.Transport,
                               hot: HotEntry) -> AbstractStreamWriter | None:
        self.headers.update(hot.hit_headers(self._now))
        self.content_length = hot.size
        self._limits.mark(transport)  # aiohttp's writer waits at our mark too
        writer = await super().prepare(request)
        if writer is None or request.method == hdrs.METH_HEAD:
            await super().write_eof()
            return writer
        writer.send_headers()
        await self._send_rest(request, transport, self._kernel_send(transport, hot))
        await super().write_eof()
        return writer


def _never(transport: asyncio.Transport, hot: HotEntry) -> int:
    return 0


class TlsHotResponse(HotResponse):
    """On a TLS port the socket carries ciphertext: sendfile(2) to it would put the plain
    bytes on the wire (and break the stream). Every byte goes through the transport."""

    _kernel_send = staticmethod(_never)
