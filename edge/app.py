"""The edge service: `create_app(cfg, node)`, used by `mediacdn edge` and by the tests."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from common.backpressure import SendLimits
from common.errors import MediaCDNError, NotFound
from common.ops import add_ops_routes
from common.problem import from_error, with_problems
from config.schema import Config, EdgeNode
from edge import admin, handlers
from edge.keys import CACHE, CONFIG, NODE, STATS, SYNC, TRANSCODE
from edge.node import EdgeCache
from edge.openapi import OPENAPI
from edge.purgesync import PurgeSync
from edge.stats import EdgeStats, register
from origin import open_origin

log = logging.getLogger("mediacdn.edge")
RECENCY_FLUSH_SECONDS = 1.0


async def _not_found(request: web.Request) -> web.Response:
    return from_error(NotFound(f"no route {request.path[:200]}"))


def create_app(cfg: Config, node: EdgeNode, worker: int = 0) -> web.Application:
    # No app-wide middleware: each non-media route is wrapped by with_problems, and the
    # media handler renders its own errors, so a hit pays for no middleware at all.
    app = web.Application(client_max_size=1 << 20)
    app[CONFIG], app[NODE], app[TRANSCODE] = cfg, node, cfg.transcode
    stats = EdgeStats()
    app[STATS] = stats
    limits = SendLimits(cfg.edge.connection_buffer_bytes)
    media = handlers.MediaHandler(stats, cfg.transcode, limits,
                                  log_hits=cfg.edge.access_log == "all")
    registry = CollectorRegistry()

    async def resources(app: web.Application) -> AsyncIterator[None]:
        async with open_origin(cfg.origin) as origin, aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=64), auto_decompress=False
        ) as session:
            cache = EdgeCache(cfg, node, origin, stats, worker)
            cache.session = session
            cache.fetch_seconds = register(
                registry, cache.totals, cache.responses,
                lambda: (cache.disk.count(), cache.disk.volume()))
            app[CACHE] = cache
            sync = PurgeSync(cache, node.cache_dir / "purge.cursor", node.region,
                             cfg.edge.purge_retention_seconds)
            app[SYNC] = sync
            media.cache, media.sync = cache, sync
            await sync.start()
            with contextlib.suppress(MediaCDNError, OSError):
                async with asyncio.timeout(cfg.edge.origin_timeout):
                    await sync.sync_once()  # catch up before the first request if we can
            tasks = [asyncio.create_task(sync.poll_forever(cfg.edge.purge_poll_seconds)),
                     asyncio.create_task(_housekeeping_forever(cache))]
            try:
                yield
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await cache.close()

    app.cleanup_ctx.append(resources)

    async def ready(app: web.Application) -> str | None:
        if not app[SYNC].caught_up:
            return "catching up on the purge log"
        try:
            async with asyncio.timeout(cfg.edge.origin_timeout):
                await app[CACHE].origin.ping()
        except Exception as exc:  # any failure means "not ready", with the reason
            return f"origin: {type(exc).__name__}: {exc}"
        return None

    # The media route first: aiohttp tries resources in the order they were added.
    app.router.add_get("/i/{id}/{name}", media.handle)
    app.router.add_route("*", "/i/{id}/{name}",
                         handlers.Preflight(cfg.edge.cors_allow_origin).handle)
    add_ops_routes(app, registry, ready)
    app.router.add_post("/_admin/purge", with_problems(admin.purge))
    app.router.add_get("/_admin/stats", with_problems(admin.stats))
    app.router.add_get("/openapi.json", with_problems(_openapi))
    # Any path at all, newlines included ("." would not match an encoded %0A).
    app.router.add_route("*", r"/{tail:[\s\S]*}", _not_found)
    return app


async def _openapi(request: web.Request) -> web.Response:
    return web.json_response(OPENAPI)


async def _housekeeping_forever(cache: EdgeCache) -> None:
    while True:
        await asyncio.sleep(RECENCY_FLUSH_SECONDS)
        try:
            await cache.housekeeping()
        except Exception as exc:  # a locked or full disk must not stop the node
            log.warning("cache housekeeping failed: %s", exc)
