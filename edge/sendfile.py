"""A 200 response whose body goes out with sendfile(2) from a hot entry's memfd.

uvloop has no loop.sendfile, so aiohttp's FileResponse falls back to reads through a
thread pool there (measured). Here the headers go through aiohttp's writer as usual; then,
if the transport has nothing buffered, the body is handed to the kernel from the memfd in
one call; whatever the socket does not take right away is written through the transport
like any other body, in order.
"""

from __future__ import annotations

import os

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter

from edge.memory import HotEntry


class HotResponse(web.StreamResponse):
    def __init__(self, hot: HotEntry, headers: dict[str, str]) -> None:
        super().__init__(status=200, headers=headers)
        self.content_length = hot.size
        self._hot = hot

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self.prepared:
            return self._payload_writer
        writer = await super().prepare(request)
        if writer is None or request.method == hdrs.METH_HEAD:
            await super().write_eof()
            return writer
        hot = self._hot
        transport = request.transport
        if hot.closed or transport is None:
            # Retired long ago between the handler and here (practically never): end the
            # connection rather than send anything else; the client retries.
            if transport is not None:
                transport.close()
            return writer
        writer.send_headers()
        sent = 0
        sock = transport.get_extra_info("socket")
        if sock is not None and transport.get_write_buffer_size() == 0:
            try:
                sent = os.sendfile(sock.fileno(), hot.fd, 0, hot.size)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:  # the peer went away: let the transport report it
                sent = 0
        if sent < hot.size:
            await writer.write(hot.read(sent))
        await super().write_eof()
        return writer
