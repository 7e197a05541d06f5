"""WAN latency without netem (this kernel has none): a TCP relay that holds every chunk for
the link's one-way delay, in both directions, the delay chosen by the client's real source
address. A new connection also waits one round trip before its first byte moves (the TCP
handshake a real WAN would cost). It listens in one network namespace and connects in
another (`tests.netns.socket_in`), so it can stand where a WAN link would."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable

from tests.netns import socket_in

CHUNK = 65536


class DelayLink:
    def __init__(self, listen_ns: str | None, listen: tuple[str, int],
                 upstream_ns: str | None, upstream: tuple[str, int],
                 one_way: Callable[[str], float]) -> None:
        self.listen_ns, self.listen = listen_ns, listen
        self.upstream_ns, self.upstream = upstream_ns, upstream
        self.one_way = one_way  # client address -> one-way delay in seconds
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        sock = socket_in(self.listen_ns)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(self.listen)
        sock.listen(128)
        self._server = await asyncio.start_server(self._accept, sock=sock)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(self._relay(reader, writer))
        self._conns.add(task)
        task.add_done_callback(self._conns.discard)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        delay = self.one_way(writer.get_extra_info("peername")[0])
        up_writer: asyncio.StreamWriter | None = None
        try:
            await asyncio.sleep(2 * delay)  # the handshake's round trip
            sock = socket_in(self.upstream_ns)
            async with asyncio.timeout(5):
                await asyncio.get_running_loop().sock_connect(sock, self.upstream)
            up_reader, up_writer = await asyncio.open_connection(sock=sock)
            pipes = [asyncio.create_task(_pipe(reader, up_writer, delay)),
                     asyncio.create_task(_pipe(up_reader, writer, delay))]
            try:
                await asyncio.gather(*pipes)
            finally:
                for task in pipes:
                    task.cancel()
        except (OSError, TimeoutError):
            pass  # either side went away: close both, as a broken path would
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    w.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._conns):
            task.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await self._server.wait_closed()


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, delay: float) -> None:
    """Every chunk leaves `delay` s after it arrived, in order; chunks behind it are read
    meanwhile (a delay, not a bandwidth limit). EOF is passed on as a half-close."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def read() -> None:
        try:
            while chunk := await src.read(CHUNK):
                queue.put_nowait((loop.time() + delay, chunk))
        finally:
            queue.put_nowait((loop.time() + delay, b""))

    reading = asyncio.create_task(read())
    try:
        while True:
            due, chunk = await queue.get()
            await asyncio.sleep(max(0.0, due - loop.time()))
            if not chunk:
                if dst.can_write_eof():
                    dst.write_eof()
                break
            dst.write(chunk)
            await dst.drain()
        await reading
    finally:
        reading.cancel()
