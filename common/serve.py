"""Run one aiohttp app until SIGINT/SIGTERM, announcing `SERVICE NAME URL` once it listens."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import ssl
import sys
from collections.abc import Callable
from typing import Protocol

from aiohttp import web

from common import tls
from common.auth import KEYRING
from common.backpressure import drop_stalled_clients
from common.errors import ConfigError
from config.schema import PLAIN, Listener, Secrets

log = logging.getLogger("mediacdn.serve")


def announce(service: str, name: str, url: str) -> None:
    # The supervisor (`mediacdn up`) and tests read this line to learn a child is ready.
    sys.stdout.write(f"{service} {name} {url}\n")
    sys.stdout.flush()


# A connection that has not sent a complete request this long after connecting (or after
# its last response) is closed: aiohttp arms this timer at connect, and it fires whatever
# trickle of bytes a slow client (slowloris) sends. aiohttp's default is an hour.
IDLE_TIMEOUT = 20.0


async def listen(host: str, port: int, reuse_port: bool = False,
                 key: str = "port") -> socket.socket:
    """A listening socket; a port in use is a config error naming `key` (one line, exit 2,
    so a second `mediacdn up` stops instead of restarting in a loop)."""
    loop = asyncio.get_running_loop()
    try:
        family = (await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM))[0][0]
        sock = socket.create_server((host, port), family=family, backlog=1024,
                                    reuse_port=reuse_port)
    except OSError as exc:
        raise ConfigError(key, f"cannot listen on {host}:{port}: "
                          f"{exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


class Front(Protocol):
    """Something that answers some requests itself before aiohttp (the edge's front door,
    edge/frontdoor.py), handing aiohttp's protocol (`runner.server()`) the rest."""

    def factory(self, inner: Callable[[], asyncio.Protocol], tls: bool,
                idle_timeout: float) -> Callable[[], asyncio.Protocol]: ...

    def drain(self, grace: float) -> None:
        """Start closing its connections: at once if idle, else once their answer is out,
        cut after `grace` seconds."""

    async def drained(self) -> None: ...


def config_key(service: str, name: str) -> str:
    return f"edges.{name}" if service == "edge" else service


def _on_hangup(app: web.Application, ssl_ctx: ssl.SSLContext | None, listener: Listener,
               reload_secrets: Callable[[], Secrets] | None) -> None:
    log.info("SIGHUP: reloading%s%s", " the TLS certificate" if ssl_ctx else "",
             " the keys" if reload_secrets else "")
    if ssl_ctx is not None:
        # On the loop, not a thread: two small PEM reads, and OpenSSL must not swap the
        # context's certificate while a handshake on this loop is reading it.
        tls.reload(ssl_ctx, listener)
    ring = app.get(KEYRING)
    if reload_secrets is not None and ring is not None:
        ring.reload_soon(reload_secrets)


async def serve(app: web.Application, *, service: str, name: str, host: str, port: int,
                sock: socket.socket | None = None, reuse_port: bool = False,
                shutdown_timeout: float = 10.0, idle_timeout: float = IDLE_TIMEOUT,
                send_timeout: float | None = None, listener: Listener = PLAIN,
                reload_secrets: Callable[[], Secrets] | None = None,
                front: Front | None = None) -> None:
    """`send_timeout`: drop connections whose client takes nothing for that long.
    `listener`: TLS (reloaded on SIGHUP) and the admin listener, when configured.
    `reload_secrets`: reads the keys again (the config file, the key files) on SIGHUP, into
    the app's KeyRing; a bad result is logged and the old keys kept.
    `front`: in front of aiohttp on the main listener (not the admin one)."""
    key = config_key(service, name)
    ssl_ctx = tls.server_context(listener, key)
    # shutdown_timeout on the runner: with the front door no SockSite carries it, and
    # aiohttp's default is 60 s (waited twice: for the handler, then for it to cancel).
    runner = web.AppRunner(app, handle_signals=False, access_log=None,
                           keepalive_timeout=idle_timeout, shutdown_timeout=shutdown_timeout)
    # Handlers first: a SIGTERM right after the announce must drain, not kill.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # Always ours: SIGHUP's default action would kill the process, connections and all.
    loop.add_signal_handler(signal.SIGHUP, _on_hangup, app, ssl_ctx, listener, reload_secrets)
    await runner.setup()
    front_server: asyncio.Server | None = None
    try:
        # Our own listening socket, so that its options reach every accepted connection.
        sock = sock or await listen(host, port, reuse_port, f"{key}.port")
        if send_timeout is not None:
            drop_stalled_clients(sock, send_timeout)
        if front is None:
            site = web.SockSite(runner, sock, ssl_context=ssl_ctx)
            await site.start()
        else:
            # aiohttp's protocol factory is public (`runner.server`); the front door drives
            # the RequestHandlers it makes only through the asyncio Protocol interface.
            assert runner.server is not None
            front_server = await loop.create_server(
                front.factory(runner.server, ssl_ctx is not None, idle_timeout),
                sock=sock, ssl=ssl_ctx, backlog=1024)
        if listener.admin_port is not None:
            admin = await listen(listener.admin_host, listener.admin_port, reuse_port,
                                 f"{key}.admin_port")
            await web.SockSite(runner, admin, ssl_context=ssl_ctx).start()
        bound = sock.getsockname()
        scheme = "https" if ssl_ctx is not None else "http"
        announce(service, name, f"{scheme}://{bound[0]}:{bound[1]}")
        log.info("%s %s listening on %s:%s", service, name, bound[0], bound[1])
        await stop.wait()
        log.info("%s %s draining", service, name)
    finally:
        try:
            if front is not None:
                if front_server is not None:
                    front_server.close()  # stop accepting
                # Its answers in flight finish (bounded) while aiohttp's do; the app's
                # cleanup awaits them before it closes what they send from.
                front.drain(shutdown_timeout)
        finally:
            # aiohttp's connections, taken before its shutdown forgets them.
            transports = _transports(runner.server)
            deadline = loop.time() + shutdown_timeout
            # Stops accepting, lets in-flight requests finish (bounded), then runs
            # cleanup_ctx.
            with contextlib.suppress(Exception):
                await runner.cleanup()
            if front is not None:
                await front.drained()
            await _flushed(transports, deadline)


def _transports(server: web.Server | None) -> list[asyncio.Transport]:
    if server is None:
        return []
    return [h.transport for h in server.connections if h.transport is not None]


async def _flushed(transports: list[asyncio.Transport], deadline: float) -> None:
    """Until what aiohttp's connections buffered has reached the kernel (which sends it
    after we exit), or the deadline. aiohttp's shutdown ends once a handler wrote its
    last piece and closed the transport, with up to the connection's buffer limit still
    waiting for a slow reader: exiting then cut the body's end (a clean EOF, 16-32 KB
    short)."""
    loop = asyncio.get_running_loop()
    # Polled: no event says "flushed" (resume_writing is only for a paused protocol, and
    # these are aiohttp's, closed).
    while loop.time() < deadline:
        if not any(_buffered(t) for t in transports):
            return
        await asyncio.sleep(0.02)


def _buffered(transport: asyncio.Transport) -> int:
    try:
        return transport.get_write_buffer_size()
    except Exception:  # a transport already gone holds nothing
        return 0


