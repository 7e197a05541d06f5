"""The router service: 302 to the chosen edge; `/v1/route` explains the choice."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from common.auth import KEYRING, KeyRing
from common.errors import BadRequest, Forbidden, NotFound
from common.forwarded import client_address
from common.hashing import is_content_id
from common.ops import add_ops_routes
from common.problem import problem_middleware
from common.signing import verify
from common.surface import admin_guard, identify
from common.tls import client_context
from common.variants import on_demand
from config.schema import Config
from edge.paths import parse_name
from edge.router.choose import decide, nearest_first
from edge.router.geo import RegionChoice, choose_region
from edge.router.health import HealthMonitor
from edge.router.openapi import OPENAPI

CONFIG = web.AppKey("config", Config)
HEALTH = web.AppKey("health", HealthMonitor)
NEAREST = web.AppKey("nearest", dict)
ROUTED = web.AppKey("routed", Counter)
COUNTRY_HEADER = "X-Client-Country"


def _client(request: web.Request) -> str | None:
    """?ip= (to ask about an address), else the client behind trusted proxies."""
    return request.query.get("ip") or client_address(
        request, request.app[CONFIG].router.listener.trusted_proxies)


def _region_choice(request: web.Request) -> RegionChoice:
    cfg = request.app[CONFIG]
    return choose_region(cfg, param=request.query.get("region"),
                         country=request.headers.get(COUNTRY_HEADER) or request.query.get(
                             "country"),
                         client_ip=_client(request))


async def redirect(request: web.Request) -> web.Response:
    cfg = request.app[CONFIG]
    image_id, name = request.match_info["id"], request.match_info["name"]
    if not is_content_id(image_id):
        raise BadRequest("an image id is 64 lowercase hex characters (its blake3)")
    variant, _ = parse_name(name)
    if cfg.transcode.variant(variant) is None and on_demand(variant, cfg.transcode) is None:
        raise NotFound(f"no variant {variant!r}")
    decision = decide(cfg, request.app[HEALTH], _region_choice(request), image_id,
                      request.app[NEAREST])
    request.app[ROUTED].labels(decision.served_by_region).inc()
    location = f"{decision.edge.url}/i/{image_id}/{name}"
    # The choice depends on the client's country and on edge health: cache it briefly,
    # privately, and per country.
    return web.Response(status=302, headers={
        "Location": location, "Cache-Control": "private, max-age=60",
        "Vary": COUNTRY_HEADER, "X-Edge": decision.edge.name})


async def redirect_transform(request: web.Request) -> web.Response:
    """A signed transform goes to the edge like a variant; a bad signature stops here."""
    cfg = request.app[CONFIG]
    info = request.match_info
    image_id = info["id"]
    spec, _, ext = info["spec"].rpartition(".")
    if not verify(request.app[KEYRING].secrets.signing_values, image_id, spec, ext, info["sig"]):
        raise Forbidden("missing or wrong signature (see docs/api.md)")
    if not is_content_id(image_id):
        raise BadRequest("an image id is 64 lowercase hex characters (its blake3)")
    decision = decide(cfg, request.app[HEALTH], _region_choice(request), image_id,
                      request.app[NEAREST])
    request.app[ROUTED].labels(decision.served_by_region).inc()
    return web.Response(status=302, headers={
        "Location": decision.edge.url + request.raw_path.partition("?")[0],
        "Cache-Control": "private, max-age=60", "Vary": COUNTRY_HEADER,
        "X-Edge": decision.edge.name})


async def route(request: web.Request) -> web.Response:
    cfg = request.app[CONFIG]
    image_id = request.query.get("id", "")
    if image_id and not is_content_id(image_id):
        raise BadRequest("id must be 64 lowercase hex characters")
    decision = decide(cfg, request.app[HEALTH], _region_choice(request), image_id,
                      request.app[NEAREST])
    return web.json_response({**decision.explain(image_id), "client": _client(request)})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(OPENAPI)


def create_app(cfg: Config) -> web.Application:
    app = web.Application(middlewares=[problem_middleware])
    app[CONFIG] = cfg
    app[KEYRING] = KeyRing(cfg.secrets)  # the signing keys; swapped whole on SIGHUP
    app[NEAREST] = nearest_first(cfg)
    registry = CollectorRegistry()
    app[ROUTED] = Counter("mediacdn_router_redirects", "Redirects by serving region",
                          ["region"], registry=registry)

    async def health_ctx(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(ssl=client_context(cfg.tls_ca))
        async with aiohttp.ClientSession(connector=connector) as session:
            monitor = HealthMonitor(cfg.edges, cfg.router, session)
            app[HEALTH] = monitor
            await monitor.initial()
            task = asyncio.create_task(monitor.run_forever())
            yield
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    app.cleanup_ctx.append(health_ctx)

    async def ready(app: web.Application) -> str | None:
        if not any(app[HEALTH].is_up(e.name) for e in cfg.edges):
            return "no healthy edge"
        return None

    add_ops_routes(app, registry, ready, admin=admin_guard(cfg.router.listener))
    app.router.add_get("/i/{id}/{name}", redirect)
    app.router.add_get("/i/{id}/t/{sig}/{spec}", redirect_transform)
    app.router.add_get("/v1/route", route)
    app.router.add_get("/openapi.json", openapi)
    identify(app, {"service": "mediacdn router", "name": "router",
                   "about": "sends each client to its nearest healthy edge: GET "
                            "/i/{id}/{variant}.{ext} -> 302; GET /v1/route explains",
                   "openapi": "/openapi.json", "health": "/healthz"})
    return app
