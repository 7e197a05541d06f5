"""/healthz, /readyz and /metrics: the same three routes on every service."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from common.problem import Handler, with_problems

ReadyCheck = Callable[[web.Application], Awaitable[str | None]]
REGISTRY = web.AppKey("registry", CollectorRegistry)
READY_CHECK = web.AppKey("ready_check", object)


def add_ops_routes(app: web.Application, registry: CollectorRegistry, ready: ReadyCheck,
                   serving: Callable[[web.Application], bool] | None = None,
                   admin: Callable[[Handler], Handler] = lambda h: h) -> None:
    """`serving`: whether the service answers its main requests even while not ready (an
    edge with its origin away still serves its cache); /readyz says so as `"media"`, so
    a router can tell "degraded" from "refuses everything"."""
    app[REGISTRY] = registry
    app[READY_CHECK] = ready

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        reason = await ready(request.app)
        extra = {} if serving is None else {"media": serving(request.app)}
        if reason is None:
            return web.json_response({"status": "ready", **extra})
        return web.json_response({"status": "not ready", "reason": reason, **extra},
                                 status=503)

    async def metrics(request: web.Request) -> web.Response:
        # Collectors may read files (the edge adds up its workers' snapshots): a thread.
        body = await asyncio.get_running_loop().run_in_executor(None, generate_latest, registry)
        resp = web.Response(body=body)
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    app.router.add_get("/healthz", with_problems(healthz))
    app.router.add_get("/readyz", with_problems(readyz))
    app.router.add_get("/metrics", with_problems(admin(metrics)))
