"""One JSON access-log line per request."""

from __future__ import annotations

import logging
import time

from aiohttp import web
from aiohttp.typedefs import Middleware

from common.auth import KEY_USED
from common.forwarded import client_address
from common.problem import Handler
from config.schema import Network

log = logging.getLogger("mediacdn.access")


def access_log(trusted: tuple[Network, ...]) -> Middleware:  # aiohttp's own middleware type
    """The line names the client behind `trusted` proxies (common/forwarded.py)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        return await _logged(request, handler, trusted)
    return middleware


async def _logged(request: web.Request, handler: Handler,
                  trusted: tuple[Network, ...]) -> web.StreamResponse:
    t0 = time.perf_counter()
    status = 500
    try:
        resp = await handler(request)
        status = resp.status
        return resp
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        if log.isEnabledFor(logging.INFO):
            # The key's name, never its value: which client, and whether a revoked one.
            key = request.get(KEY_USED)
            log.info("%s %s %d%s", request.method, request.path, status,
                     f" key={key}" if key else "", extra={
                         "method": request.method, "path": request.path, "status": status,
                         "ms": round((time.perf_counter() - t0) * 1000, 2),
                         "remote": client_address(request, trusted), "key": key})
