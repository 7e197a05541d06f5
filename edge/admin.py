"""`/_admin/purge` and `/_admin/stats`, behind the admin token."""

from __future__ import annotations

import logging

from aiohttp import web

from common.auth import require
from common.purgebody import read_purge_body
from edge.keys import CACHE, NODE

log = logging.getLogger("mediacdn.edge.admin")


def _admin(request: web.Request) -> None:
    name = require(request, "admin_tokens", "admin token")
    # The edge's routes have no access log: this line names the token, never its value.
    log.info("%s %s key=%s", request.method, request.path, name,
             extra={"key": name, "path": request.path})


async def purge(request: web.Request) -> web.Response:
    """This node only, complete on it when answered (every worker, the disk, fills in
    flight); the durable, everywhere purge is ingest's `POST /v1/purges`."""
    _admin(request)
    body = await read_purge_body(request)
    cache = request.app[CACHE]
    if body.all:
        return web.json_response({"purged": await cache.purge_all()})
    return web.json_response({"purged": await cache.purge_ids(body.ids)})


async def stats(request: web.Request) -> web.Response:
    _admin(request)
    cache = request.app[CACHE]
    node = request.app[NODE]
    t = await cache.blocking(cache.totals)  # every worker of this node, added up
    entries, volume = await cache.disk_usage()
    hits = t["hits"] + t["fast_hits"]
    served = hits + t["misses"]
    return web.json_response({
        "node": node.name,
        "region": node.region,
        "workers": node.workers,
        "hits": hits,
        "misses": t["misses"],
        "hit_ratio": round(hits / served, 4) if served else 0.0,
        "bytes_served": t["bytes_served"],
        "cache_entries": entries,
        "cache_bytes": volume,
        "cache_limit_bytes": node.cache_bytes,
        "memory_entries": t["memory_entries"],
        "memory_bytes": t["memory_bytes"],
        "evictions": t["disk_evictions"],
        "memory_evictions": t["memory_evictions"],
        "origin_fetches": t["origin_fetches"],
        "peer_fetches": t["peer_fetches"],
        "collapsed_waiters": t["collapsed_waiters"],
        "errors": t["errors"],
        "verify_failures": t["verify_failures"],
        "disk_corrupt": t["disk_corrupt"],
        "disk_write_errors": t["disk_write_errors"],
        "negative_hits": t["negative_hits"],
        "front_door_hits": t["front_door_hits"],
        "front_door_handoffs": t["front_door_handoffs"],
        "purge_cursor": cache.journal.cursor,
    })
