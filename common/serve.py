"""Run one aiohttp app until SIGINT/SIGTERM, announcing `SERVICE NAME URL` once it listens."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys

from aiohttp import web

from common.backpressure import drop_stalled_clients

log = logging.getLogger("mediacdn.serve")


def announce(service: str, name: str, url: str) -> None:
    # The supervisor (`mediacdn up`) and tests read this line to learn a child is ready.
    sys.stdout.write(f"{service} {name} {url}\n")
    sys.stdout.flush()


# A connection that has not sent a complete request this long after connecting (or after
# its last response) is closed: aiohttp arms this timer at connect, and it fires whatever
# trickle of bytes a slow client (slowloris) sends. aiohttp's default is an hour.
IDLE_TIMEOUT = 20.0


async def listen(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    loop = asyncio.get_running_loop()
    family = (await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM))[0][0]
    sock = socket.create_server((host, port), family=family, backlog=1024,
                                reuse_port=reuse_port)
    sock.setblocking(False)
    return sock


async def serve(app: web.Application, *, service: str, name: str, host: str, port: int,
                sock: socket.socket | None = None, reuse_port: bool = False,
                shutdown_timeout: float = 10.0, idle_timeout: float = IDLE_TIMEOUT,
                send_timeout: float | None = None) -> None:
    """`send_timeout`: drop connections whose client takes nothing for that long."""
    runner = web.AppRunner(app, handle_signals=False, access_log=None,
                           keepalive_timeout=idle_timeout)
    # Handlers first: a SIGTERM right after the announce must drain, not kill.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await runner.setup()
    try:
        # Our own listening socket, so that its options reach every accepted connection.
        sock = sock or await listen(host, port, reuse_port)
        if send_timeout is not None:
            drop_stalled_clients(sock, send_timeout)
        site = web.SockSite(runner, sock, shutdown_timeout=shutdown_timeout)
        await site.start()
        bound = runner.addresses[0]
        announce(service, name, f"http://{bound[0]}:{bound[1]}")
        log.info("%s %s listening on %s:%s", service, name, bound[0], bound[1])
        await stop.wait()
        log.info("%s %s draining", service, name)
    finally:
        # Stops accepting, lets in-flight requests finish (bounded), then runs cleanup_ctx.
        with contextlib.suppress(Exception):
            await runner.cleanup()


