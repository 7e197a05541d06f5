"""The edge service: `create_app(cfg, node)`, used by `mediacdn edge` and by the tests."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from common.auth import KEYRING, KeyRing
from common.backpressure import SendLimits
from common.errors import MediaCDNError, NotFound
from common.ops import add_ops_routes
from common.problem import from_error, with_problems
from common.surface import admin_guard, identify
from common.tls import client_context
from config.schema import Config, EdgeNode
from edge import admin, handlers
from edge.disk import NoDiskTier
from edge.follower import Follower, FollowerSettings
from edge.frontdoor import FrontDoor
from edge.journal import ORIGIN_DOWN
from edge.keys import CACHE, CONFIG, FOLLOWER, FRONT_DOOR, NODE, STATS, TRANSCODE
from edge.node import EdgeCache
from edge.openapi import OPENAPI
from edge.stats import EdgeStats, register
from edge.transforms import TransformHandler
from origin import open_origin

log = logging.getLogger("mediacdn.edge")
RECENCY_FLUSH_SECONDS = 1.0


async def _not_found(request: web.Request) -> web.Response:
    return from_error(NotFound(f"no route {request.path[:200]}"))


def create_app(cfg: Config, node: EdgeNode, worker: int = 0,
               run: int | None = None) -> web.Application:
    # No app-wide middleware: each non-media route is wrapped by with_problems, and the
    # media handler renders its own errors, so a hit pays for no middleware at all.
    app = web.Application(client_max_size=1 << 20)
    app[CONFIG], app[NODE], app[TRANSCODE] = cfg, node, cfg.transcode
    keys = app[KEYRING] = KeyRing(cfg.secrets)  # swapped whole on SIGHUP (common/serve.py)
    run = run if run is not None else secrets.randbits(62) + 1
    stats = EdgeStats()
    app[STATS] = stats
    limits = SendLimits(cfg.edge.connection_buffer_bytes)
    media = handlers.MediaHandler(stats, cfg.transcode, run, limits,
                                  log_hits=cfg.edge.access_log == "all",
                                  tls=node.listener.tls,
                                  trusted=node.listener.trusted_proxies)
    if cfg.edge.front_door:  # common/serve.py puts it in front of the media listener
        app[FRONT_DOOR] = FrontDoor(media, limits, log_hits=cfg.edge.access_log == "all",
                                    trusted=bool(node.listener.trusted_proxies))
    registry = CollectorRegistry()

    async def resources(app: web.Application) -> AsyncIterator[None]:
        async with open_origin(cfg.origin) as origin, aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=64, ssl=client_context(cfg.tls_ca)),
            auto_decompress=False
        ) as session:
            cache = EdgeCache(cfg, node, origin, stats, worker, keys)
            cache.session = session
            cache.fetch_seconds = register(
                registry, cache.totals, cache.responses,
                lambda: (cache.disk.count(), cache.disk.volume()))
            app[CACHE] = cache
            media.cache = cache
            tasks = [asyncio.create_task(_housekeeping_forever(cache))]
            if worker == 0:  # one follower per node; the other workers read its journal
                follower = Follower(cache, FollowerSettings(
                    node.name, node.region, cfg.ingest.listener.admin_url, keys,
                    cfg.edge.purge_follow_seconds, cfg.edge.purge_poll_seconds,
                    cfg.edge.origin_timeout, cfg.edge.origin_probe_seconds),
                    node.cache_dir / "purge.cursor", session, run)
                app[FOLLOWER] = follower
                # What a previous run last saw of the origin says nothing now.
                await follower.probe_origin()
                with contextlib.suppress(MediaCDNError, OSError, aiohttp.ClientError,
                                         TimeoutError):
                    async with asyncio.timeout(cfg.edge.origin_timeout):
                        await follower.catch_up()  # before the first request if we can
                following = asyncio.create_task(follower.run_forever())
                tasks += [following, asyncio.create_task(follower.beat_forever(following)),
                          asyncio.create_task(follower.probe_origin_forever())]
            try:
                yield
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                door = app.get(FRONT_DOOR)
                if door is not None:  # its answers in flight send from the memfds
                    await door.drained()
                await cache.close()

    app.cleanup_ctx.append(resources)

    async def ready(app: web.Application) -> str | None:
        # Cheap: what the node's follower last saw; never an origin request per probe.
        cache = app[CACHE]
        if cache.journal.ready_run != run:
            return "catching up on the purge log"
        if not cache.journal.serving(run, int(time.time())):
            return "the node's purge follower is not running or has no purge feed"
        if isinstance(cache.disk, NoDiskTier):
            return f"disk cache unusable: {cache.disk.reason}"
        state, at = cache.journal.origin_state()
        if state == ORIGIN_DOWN:
            return f"origin unreachable (last probe {int(time.time()) - at} s ago)"
        return None

    # The media route first: aiohttp tries resources in the order they were added.
    app.router.add_get("/i/{id}/{name}", media.handle)
    app.router.add_route("*", "/i/{id}/{name}",
                         handlers.Preflight(cfg.edge.cors_allow_origin).handle)
    transforms = TransformHandler(media, cfg, keys)
    app.router.add_get("/i/{id}/t/{sig}/{spec}", transforms.handle)
    app.router.add_get(r"/i/{id}/t/{tail:[\s\S]*}", transforms.unsigned)
    guard = admin_guard(node.listener)
    add_ops_routes(app, registry, ready,
                   serving=lambda app: app[CACHE].journal.serving(run, int(time.time())),
                   admin=guard)
    app.router.add_post("/_admin/purge", with_problems(guard(admin.purge)))
    app.router.add_get("/_admin/stats", with_problems(guard(admin.stats)))
    app.router.add_get("/openapi.json", with_problems(_openapi))
    identify(app, {"service": "mediacdn edge", "name": node.name, "region": node.region,
                   "about": "image CDN edge cache: GET /i/{id}/{variant}.{ext}",
                   "openapi": "/openapi.json", "health": "/healthz"})
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
