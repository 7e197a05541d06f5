"""The admin surface on its own listener: with `admin_port` set, admin routes answer only
on a connection to that port, and 404 (as any unknown path) on the public one."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from common.errors import NotFound
from common.problem import Handler
from config.schema import Listener


def admin_guard(listener: Listener) -> Callable[[Handler], Handler]:
    port = listener.admin_port
    if port is None:
        return lambda handler: handler

    def wrap(handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            transport = request.transport
            sockname = transport.get_extra_info("sockname") if transport else None
            if not sockname or sockname[1] != port:
                raise NotFound(f"no route {request.path[:200]}")
            return await handler(request)
        return guarded
    return wrap


SERVER = "mediacdn"  # no versions: they only help an attacker pick an exploit


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    # aiohttp would send `Server: Python/3.x aiohttp/3.x`; a header set first is kept.
    response.headers["Server"] = SERVER


def identify(app: web.Application, about: dict[str, str]) -> None:
    """`Server: mediacdn` on every response aiohttp prepares, and `GET /` saying what this
    is. (The edge's pre-rendered hits carry the same header in their cached head.)"""
    app.on_response_prepare.append(_server_header)

    async def root(request: web.Request) -> web.Response:
        return web.json_response(about)

    app.router.add_get("/", root)
