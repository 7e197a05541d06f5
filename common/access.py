"""One JSON access-log line per request."""

from __future__ import annotations

import logging
import time

from aiohttp import web

from common.problem import Handler

log = logging.getLogger("mediacdn.access")


@web.middleware
async def access_log_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
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
            log.info("%s %s %d", request.method, request.path, status, extra={
                "method": request.method, "path": request.path, "status": status,
                "ms": round((time.perf_counter() - t0) * 1000, 2), "remote": request.remote})
