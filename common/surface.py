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
