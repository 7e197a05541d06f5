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
        """Writes (aiohttp's included) under our high-water mark and `timeout`; on expiry
        the connection is aborted and ConnectionResetError raised, which aiohttp's
        connection loop takes as the client having gone."""
        # The transport pauses its protocol above `high` and resumes it at high / 4; aiohttp's
        # writer and drain() wait on that pause.
        transport.set_write_buffer_limits(high=self.buffer_bytes)
        deadline = asyncio.timeout(self.timeout)
        try:
            async with deadline:
                yield
        except TimeoutError:
            if not deadline.expired():
                raise
            # abort(), not close(): close() keeps the unsent bytes until they are sent.
            transport.abort()
            raise ConnectionResetError("the client took nothing within send_timeout") from None
