"""The edge's media route: validate, look up, answer. Errors become problem+json here (the
hot path carries no middleware)."""

from __future__ import annotations

import logging

from aiohttp import web

from common.errors import MediaCDNError, ServiceUnavailable
from common.problem import from_error
from edge.keys import CACHE, STATS, SYNC, TRANSCODE
from edge.paths import resolve
from edge.peer import PEER_HEADER
from edge.respond import respond

log = logging.getLogger("mediacdn.edge.access")


async def media(request: web.Request) -> web.StreamResponse:
    app = request.app
    stats = app[STATS]
    try:
        if not app[SYNC].caught_up:
            raise ServiceUnavailable("catching up on purges before serving",
                                     headers={"Retry-After": "1"})
        target = resolve(request.match_info["id"], request.match_info["name"],
                         request.headers.get("Accept", ""), app[TRANSCODE])
        from_peer = PEER_HEADER in request.headers
        entry, hit = await app[CACHE].get(target.cache_key, from_peer)
    except MediaCDNError as exc:
        if exc.status >= 500:
            stats.errors += 1
            log.warning("%s %s -> %d %s", request.method, request.path, exc.status, exc.detail)
        stats.responses[(exc.status, "NONE")] += 1
        return from_error(exc)
    resp = respond(request, entry, hit, target.negotiated)
    if hit:
        stats.hits += 1
    else:
        stats.misses += 1
        log.info("%s %s -> %d MISS", request.method, request.path, resp.status,
                 extra={"status": resp.status, "cache": "MISS", "bytes": entry.size})
    if request.method == "GET" and resp.body is not None:
        stats.bytes_served += len(resp.body)  # type: ignore[arg-type]
    stats.responses[(resp.status, "HIT" if hit else "MISS")] += 1
    return resp
