"""The edge's media route. The hit path is the product's hottest code: a lookup in the
memory tier and a response whose headers were built when the entry was stored.

Only validated keys ever enter the cache, so a key found in the memory tier needs no
re-validation; everything else (conditional and range requests, negotiation, disk hits,
misses, errors) takes the full path. Errors become problem+json here: the route carries
no middleware.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable

from aiohttp import web

from common.backpressure import SendLimits
from common.errors import MediaCDNError, ServiceUnavailable
from common.forwarded import client_address
from common.problem import from_error
from common.transform import TRANSFORM_PREFIX
from config.schema import Network, TranscodeConfig
from edge.entry import cors_headers
from edge.node import EdgeCache
from edge.paths import Target, resolve
from edge.peer import PEER_HEADER
from edge.respond import respond
from edge.sendfile import HotResponse, TlsHotResponse
from edge.stats import EdgeStats

log = logging.getLogger("mediacdn.edge.access")
OUT_OF_FDS = (errno.EMFILE, errno.ENFILE)


class MediaHandler:
    def __init__(self, stats: EdgeStats, transcode: TranscodeConfig, run: int,
                 limits: SendLimits, log_hits: bool = False, tls: bool = False,
                 trusted: tuple[Network, ...] = ()) -> None:
        self.stats = stats
        self.transcode = transcode
        self.run = run  # media is served once the node's follower caught up in this run
        self.limits = limits
        self.log_hits = log_hits  # misses and errors are always logged
        # Chosen once: a TLS port must never sendfile (edge/sendfile.py).
        self.hot_response = TlsHotResponse if tls else HotResponse
        self.trusted = trusted  # proxies whose X-Forwarded-For names the client in logs
        # Set when the app starts (it lives in its cleanup context).
        self.cache: EdgeCache | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        cache = self.cache
        assert cache is not None
        cache.invalidation.catch_up()  # purges by other workers or the follower, first
        info = request.match_info
        name = info["name"]
        key = f"{info['id']}/{name}"
        # A signed transform's stored name is no variant (404): never answered from memory
        # here, where the signature is not checked.
        hot = None if name.startswith(TRANSFORM_PREFIX) else cache.memory.get(key)
        now = int(time.time())
        if hot is not None and cache.journal.serving(self.run, now):
            headers = request.headers
            if "If-None-Match" not in headers and "Range" not in headers:
                cache.disk.touch(key)
                stats = self.stats
                stats.fast_hits += 1
                if request.method == "GET":
                    stats.bytes_served += hot.size
                if self.log_hits:
                    log.info("%s %s -> 200 HIT", request.method, request.path,
                             extra={"status": 200, "cache": "HIT", "bytes": hot.size,
                                    "remote": client_address(request, self.trusted)})
                return self.hot_response(hot, now, self.limits)
        if request.transport is not None:  # aiohttp writes what we return: at our mark
            self.limits.mark(request.transport)
        return await self.full(request, cache)

    def target(self, request: web.Request) -> Target:
        return resolve(request.match_info["id"], request.match_info["name"],
                       request.headers.get("Accept", ""), self.transcode)

    async def full(self, request: web.Request, cache: EdgeCache,
                   target_of: Callable[[web.Request], Target] | None = None
                   ) -> web.StreamResponse:
        stats = self.stats
        try:
            if not cache.journal.serving(self.run, int(time.time())):
                raise ServiceUnavailable("catching up on purges before serving",
                                         headers={"Retry-After": "1"})
            target = (target_of or self.target)(request)
            try:
                peer = request.headers.get(PEER_HEADER)
                entry, hit = await cache.get(target.cache_key, peer is not None,
                                             cache.in_region(peer))
            except OSError as exc:
                if exc.errno not in OUT_OF_FDS:
                    raise
                # A passing condition, not a bug: say so, and when to come back.
                raise ServiceUnavailable("the edge is out of file descriptors; retry shortly",
                                         headers={"Retry-After": "1"}) from exc
            resp = respond(request, entry, hit, target.negotiated, cache.cors)
        except MediaCDNError as exc:
            exc.headers.update(cache.cors)  # errors readable cross-origin too
            if exc.status >= 500:
                stats.errors += 1
                log.warning("%s %s -> %d %s", request.method, request.path, exc.status,
                            exc.detail, extra={"remote": client_address(request, self.trusted)})
            stats.responses[(exc.status, "NONE")] += 1
            return from_error(exc)
        if hit:
            stats.hits += 1
            if self.log_hits:
                log.info("%s %s -> %d HIT", request.method, request.path, resp.status,
                         extra={"status": resp.status, "cache": "HIT", "bytes": entry.size,
                                "remote": client_address(request, self.trusted)})
        else:
            stats.misses += 1
            log.info("%s %s -> %d MISS", request.method, request.path, resp.status,
                     extra={"status": resp.status, "cache": "MISS", "bytes": entry.size,
                            "remote": client_address(request, self.trusted)})
        if request.method == "GET" and isinstance(resp.body, bytes):
            stats.bytes_served += len(resp.body)
        stats.responses[(resp.status, "HIT" if hit else "MISS")] += 1
        return resp


class Preflight:
    """CORS preflight for the media route (a browser sends one before a GET with Range)."""

    def __init__(self, allow_origin: str) -> None:
        self.headers = cors_headers(allow_origin)

    async def handle(self, request: web.Request) -> web.Response:
        if request.method != "OPTIONS" or not self.headers:
            return await method_not_allowed(request)
        return web.Response(status=204, headers={
            **self.headers, "Access-Control-Allow-Methods": "GET, HEAD",
            "Access-Control-Allow-Headers": "Range, If-None-Match, If-Range, Accept",
            "Access-Control-Expose-Headers": "ETag, Content-Range, X-Cache, Age",
            "Access-Control-Max-Age": "86400"})


async def method_not_allowed(request: web.Request) -> web.Response:
    from common.errors import PROBLEM_BASE
    from common.problem import problem

    return problem(405, "Method Not Allowed", f"{request.method} is not allowed here; use GET "
                   "or HEAD", PROBLEM_BASE + "method-not-allowed", {"Allow": "GET, HEAD"})
