"""The ingest service: `create_app(cfg)` builds it; tests and `mediacdn ingest` both use it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from common.access import access_log
from common.auth import KEYRING, KeyRing
from common.errors import MediaCDNError
from common.ops import add_ops_routes
from common.problem import problem_middleware
from common.surface import admin_guard, identify
from common.tls import client_context
from config.schema import Config
from ingest import derive, handlers, purges, reprocess
from ingest.keys import CONFIG, HUB, METRICS, ORIGIN, PEERS, POOL, IngestMetrics
from ingest.peers import Peers
from ingest.purgehub import PurgeHub
from ingest.spooldir import SPOOL_DIR, claim
from origin import open_origin
from transcode.pool import WorkerPool

log = logging.getLogger("mediacdn.ingest")


async def _release_long_polls(app: web.Application) -> None:
    # on_shutdown runs before aiohttp waits for the handlers in flight (the drain).
    if HUB in app:
        app[HUB].close()


def _metrics(registry: CollectorRegistry) -> IngestMetrics:
    return IngestMetrics(
        uploads=Counter("mediacdn_ingest_uploads", "Upload answers by status", ["status"],
                        registry=registry),
        bytes_in=Counter("mediacdn_ingest_bytes_received", "Upload bytes accepted",
                         registry=registry),
        transcode_seconds=Histogram("mediacdn_ingest_transcode_seconds",
                                    "Time to build the ladder of one image", registry=registry,
                                    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)),
        derivations=Counter("mediacdn_ingest_derivations", "Variants derived from a stored "
                            "original after the upload (a ladder change)", registry=registry),
    )


def create_app(cfg: Config) -> web.Application:
    app = web.Application(middlewares=[access_log(cfg.ingest.listener.trusted_proxies),
                                       problem_middleware],
                          client_max_size=cfg.ingest.max_bytes)
    app[CONFIG] = cfg
    app[KEYRING] = KeyRing(cfg.secrets)  # swapped whole on SIGHUP (common/serve.py)
    registry = CollectorRegistry()
    app[METRICS] = _metrics(registry)

    async def origin_ctx(app: web.Application) -> AsyncIterator[None]:
        async with open_origin(cfg.origin) as origin:
            app[ORIGIN] = origin
            yield

    async def spool_ctx(app: web.Application) -> AsyncIterator[None]:
        spool, removed = await asyncio.to_thread(claim, cfg.ingest.spool_dir)
        if removed:
            log.warning("removed the upload spool of %d ingest process(es) that died", removed)
        app[SPOOL_DIR] = spool
        yield
        await asyncio.to_thread(spool.close)

    async def pool_ctx(app: web.Application) -> AsyncIterator[None]:
        # The steps check the deadline cooperatively; past twice that, the worker is killed.
        t = cfg.transcode
        pool = WorkerPool(t.workers, hard_timeout=2 * t.deadline_seconds,
                          log_level=cfg.log_level, max_jobs=t.worker_max_jobs,
                          max_waiting=t.max_waiting, wait_seconds=t.wait_seconds)
        app[POOL] = pool
        Gauge("mediacdn_ingest_worker_restarts", "Transcode workers replaced after a failure "
              "(a job killed past its deadline, or a worker that died)", registry=registry
              ).set_function(lambda: pool.restarts)
        Gauge("mediacdn_ingest_transcode_waiting", "Uploads waiting for a free transcode "
              "worker", registry=registry).set_function(lambda: pool.waiting)
        await pool.start()
        yield
        await asyncio.to_thread(pool.close)

    async def hub_ctx(app: web.Application) -> AsyncIterator[None]:
        hub = PurgeHub(app[ORIGIN], cfg.ingest.log_poll_seconds,
                       cfg.edge.purge_retention_seconds,
                       expected={e.name: e.region for e in cfg.edges},
                       warmup_seconds=cfg.edge.purge_follow_seconds + cfg.edge.origin_timeout)
        app[HUB] = hub
        with contextlib.suppress(MediaCDNError, OSError, TimeoutError):
            async with asyncio.timeout(cfg.edge.origin_timeout):
                await hub.load()  # else the poll loop loads it when the origin answers
        tasks = [asyncio.create_task(hub.poll_forever()),
                 asyncio.create_task(hub.compact_forever())]
        async with contextlib.AsyncExitStack() as stack:
            if cfg.ingest.peers:
                session = await stack.enter_async_context(aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(ssl=client_context(cfg.tls_ca))))
                app[PEERS] = Peers(cfg.ingest.peers, app[KEYRING].admin_token, session)
            yield
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    app.cleanup_ctx.extend([origin_ctx, spool_ctx, pool_ctx, hub_ctx])
    app.on_shutdown.append(_release_long_polls)

    async def ready(app: web.Application) -> str | None:
        try:
            await app[ORIGIN].ping()
        except Exception as exc:  # any failure means "not ready", with the reason
            return f"origin: {exc}"
        return None

    guard = admin_guard(cfg.ingest.listener)
    add_ops_routes(app, registry, ready, admin=guard)
    handlers.add_routes(app)
    purges.add_routes(app, guard)
    derive.add_routes(app, guard)
    reprocess.add_routes(app, guard)
    identify(app, {"service": "mediacdn ingest", "name": "ingest",
                   "about": "image upload API: POST /v1/images (API key)",
                   "openapi": "/openapi.json", "health": "/healthz"})
    return app
