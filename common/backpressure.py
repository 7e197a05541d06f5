"""Backpressure on responses: a connection whose client does not read gets no further
request processed until it takes what is waiting, and is dropped if it takes nothing for
too long.

aiohttp 3.14 parses at most 32 pipelined requests ahead per connection, and its writer waits
for the client only while the transport is paused (over its high-water mark); a response
written to the transport directly (the edge's pre-rendered hits) never waits at all. Without
this, 20 sockets that pipelined GETs of a 20 KB object and never read made an edge buffer
~600 MB (tests/test_backpressure.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import struct
import termios
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web


@dataclass(frozen=True, slots=True)
class SendLimits:
    buffer_bytes: int  # unsent bytes a connection may hold before we wait for its client
    timeout: float  # a wait for the client longer than this drops the connection

    async def settle(self, request: web.BaseRequest) -> None:
        """Return once the connection holds at most `buffer_bytes` unsent. Costs one call
        when it already does (the hot path's case)."""
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("the client went away")
        if transport.get_write_buffer_size() > self.buffer_bytes:
            async with self.bounded(transport):
                # Paused over the high-water mark just set; drain() returns at low water.
                await request.writer.drain()

    @contextlib.asynccontextmanager
    async def bounded(self, transport: asyncio.Transport) -> AsyncIterator[None]:
        """Writes (aiohttp's included) under our high-water mark, and a deadline `timeout`
        after the client last took something; past it the connection is aborted and
        ConnectionResetError raised, which aiohttp's connection loop takes as the client
        having gone. A slow but steady client is never cut off."""
        # The transport pauses its protocol above `high` and resumes it at high / 4; aiohttp's
        # writer and drain() wait on that pause.
        transport.set_write_buffer_limits(high=self.buffer_bytes)
        deadline = asyncio.timeout(self.timeout)
        watch = _Progress(transport, deadline, self.timeout)
        try:
            async with deadline:
                yield
        except TimeoutError:
            if not deadline.expired():
                raise
            # abort(), not close(): close() keeps the unsent bytes until they are sent.
            transport.abort()
            raise ConnectionResetError("the client took nothing within send_timeout") from None
        finally:
            watch.cancel()


def unsent(transport: asyncio.Transport) -> int:
    """Bytes not yet taken by the client: the transport's buffer plus the kernel's send
    queue (SIOCOUTQ, Linux). The kernel's can hold megabytes and the transport writes to it
    only once a good part has gone, so the transport's alone can sit still for seconds
    while a slow client reads steadily."""
    size = transport.get_write_buffer_size()
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            size += struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ,
                                                   b"\0\0\0\0"))[0]
    return size


class _Progress:
    """Pushes a deadline back each time fewer bytes are waiting for the client than at
    the last look (a few looks per timeout; asyncio counts no bytes sent)."""

    def __init__(self, transport: asyncio.Transport, deadline: asyncio.Timeout,
                 timeout: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._transport, self._deadline, self._timeout = transport, deadline, timeout
        self._period = min(1.0, timeout / 4)
        self._size = -1  # first look: after the writes of the block
        self._handle = self._loop.call_later(self._period, self._check)

    def _check(self) -> None:
        size = unsent(self._transport)
        if 0 <= size < self._size:
            self._deadline.reschedule(self._loop.time() + self._timeout)
        self._size = size
        self._handle = self._loop.call_later(self._period, self._check)

    def cancel(self) -> None:
        self._handle.cancel()
