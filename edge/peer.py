"""Tiered fetch inside a region: a miss on an edge that does not own the id asks the owner
first, so the origin sees one GET per object per region.

The owner's bytes are checked against the blake3 the origin holds for them (a HEAD, no
body), so a peer never needs to be trusted. Requests between edges carry PEER_HEADER and
an edge never forwards such a request again.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp

from common.errors import IntegrityError, NotFound, OriginUnavailable
from common.hashing import content_id, is_content_id
from config.schema import EdgeNode
from edge.entry import Entry, content_type_for
from edge.fill import ORIGINAL, origin_key_for
from origin import Origin

PEER_HEADER = "X-MediaCDN-Peer"


async def trusted_blake3(origin: Origin, key: str) -> str:
    image_id, name = key.split("/", 1)
    if name == ORIGINAL:
        return image_id  # the id is the original's own blake3: nothing to ask
    info = await origin.head(origin_key_for(key))
    expected = info.metadata.get("blake3", "")
    if not is_content_id(expected):
        raise IntegrityError(f"origin object for {key} carries no blake3")
    return expected


async def fetch_from_peer(session: aiohttp.ClientSession, origin: Origin, me: EdgeNode,
                          owner: EdgeNode, key: str, limit_seconds: float) -> Entry:
    """The owner's copy, verified; raises on any failure so the caller can use the origin."""
    async with asyncio.timeout(limit_seconds):
        expected_task = asyncio.ensure_future(trusted_blake3(origin, key))
        try:
            timeout = aiohttp.ClientTimeout(total=limit_seconds)
            async with session.get(f"{owner.url}/i/{key}", headers={PEER_HEADER: me.name},
                                   timeout=timeout) as r:
                if r.status == 404:
                    raise NotFound(f"the owner edge has no {key}")
                if r.status != 200:
                    raise OriginUnavailable(f"owner edge {owner.name} answered {r.status}")
                body = await r.read()
                content_type = r.headers.get("Content-Type", "application/octet-stream")
        except BaseException:
            expected_task.cancel()
            raise
        expected = await expected_task
    if content_id(body) != expected:
        raise IntegrityError(f"owner edge {owner.name} sent bytes for {key} that fail blake3")
    if not key.endswith("/" + ORIGINAL):
        content_type = content_type_for(key)
    return Entry(key, body, expected, content_type, time.time())
