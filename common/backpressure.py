"""Backpressure on responses: a connection whose client does not read gets no further
request processed until it takes what is waiting.

aiohttp 3.14 parses at most 32 pipelined requests ahead per connection, and its writer waits
for the client only while the transport is paused (over its high-water mark); a response
written to the transport directly (the edge's pre-rendered hits) never waits at all. Without
this, 20 sockets that pipelined GETs of a 20 KB object and never read made an edge buffer
~600 MB (tests/test_backpressure.py).

Waits end when the client reads, or when the kernel drops a client that took nothing for
`send_timeout` (TCP_USER_TIMEOUT, set on the listening socket by common/serve.py), which
wakes every waiter with ConnectionError.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

from aiohttp import web


@dataclass(frozen=True, slots=True)
class SendLimits:
    buffer_bytes: int  # unsent bytes a connection may hold before we wait for its client

    def mark(self, transport: asyncio.Transport) -> None:
        """Make aiohttp's own writer wait at our mark too: the transport pauses its protocol
        above `high` and resumes it at high / 4, and aiohttp's writer and drain() wait on
        that pause."""
        transport.set_write_buffer_limits(high=self.buffer_bytes)

    async def settle(self, request: web.BaseRequest) -> None:
        """Return once the connection holds at most `buffer_bytes` unsent. Costs one call
        when it already does (the hot path's case)."""
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client went away")
        if transport.get_write_buffer_size() > self.buffer_bytes:
            self.mark(transport)  # paused now if over it
            await request.writer.drain()  # ConnectionError if the connection is lost
            if transport.is_closing():
                raise ConnectionResetError("the client went away")


def drop_stalled_clients(sock: socket.socket, seconds: float) -> None:
    """Connections accepted on `sock` are aborted by the kernel once data sent to the
    client stays unacknowledged, or unsent for want of window, for `seconds` (Linux's
    TCP_USER_TIMEOUT, inherited from the listening socket; zero-window stalls count since
    Linux 5.11). It ends every wait for the client, including aiohttp's own and a close()
    that would otherwise keep unsent bytes for good, at no cost per request; a client that
    reads, however slowly, keeps its connection."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, max(1, round(seconds * 1000)))
