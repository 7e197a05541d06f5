"""Tiered fetch inside a region: a miss on an edge that does not own the id asks the owner
first, so the origin sees one GET per object per region.

Nothing the owner says is trusted. A HEAD to the origin runs beside the request and gives
the blake3 and the size: the owner's body is read up to that size and no further, its
bytes are checked (`Verifying`), and its 404 counts only if the origin's HEAD agrees.
Requests between edges carry PEER_HEADER and an edge never forwards such a request again,
so edges whose configs disagree about the owner cannot forward in a loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp

from common.errors import IntegrityError, NotFound, OriginUnavailable
from common.hashing import is_content_id
from config.schema import EdgeNode
from edge.entry import Entry, content_type_for
from edge.fill import ORIGINAL, Upstream, origin_key_for, timed_out
from edge.stats import EdgeStats
from origin import ObjectInfo, Origin

log = logging.getLogger("mediacdn.edge.peer")
PEER_HEADER = "X-MediaCDN-Peer"
# The owner gets this share of what is left of the miss's deadline; the origin gets the
# rest, so a hung owner costs one deadline in all, never two.
PEER_SHARE = 0.5


class PeerFailed(OriginUnavailable):
    """The owner edge gave no usable answer: ask the origin instead."""


def trusted_blake3(key: str, info: ObjectInfo) -> str:
    image_id, name = key.split("/", 1)
    if name == ORIGINAL:
        return image_id  # the id is the original's own blake3
    expected = info.metadata.get("blake3", "")
    if not is_content_id(expected):
        raise IntegrityError(f"origin object for {key} carries no blake3")
    return expected


async def read_capped(response: aiohttp.ClientResponse, size: int, who: str) -> bytes:
    """The body, if it is exactly `size` bytes; reading stops at the first byte beyond."""
    declared = response.content_length
    if declared is not None and declared != size:
        raise PeerFailed(f"{who} declared {declared} bytes for a {size}-byte object")
    parts, got = [], 0
    async for chunk in response.content.iter_chunked(256 * 1024):
        got += len(chunk)
        if got > size:
            raise PeerFailed(f"{who} sent more than the object's {size} bytes")
        parts.append(chunk)
    if got != size:
        raise PeerFailed(f"{who} sent {got} of the object's {size} bytes")
    return b"".join(parts)


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


class PeerUpstream:
    """The owner edge's copy, with the blake3 and size the origin's HEAD gives."""

    def __init__(self, session: aiohttp.ClientSession, origin: Origin, me: EdgeNode,
                 owner_of: Callable[[str], EdgeNode], stats: EdgeStats,
                 role: str = "owner edge") -> None:
        self.session, self.origin, self.me = session, origin, me
        self.owner_of, self.stats, self.role = owner_of, stats, role

    async def fetch(self, key: str, deadline: float) -> Entry:
        owner = self.owner_of(key)
        who = f"{self.role} {owner.name}"
        head = asyncio.ensure_future(self.origin.head(origin_key_for(key)))
        try:
            async with asyncio.timeout_at(deadline):
                async with self.session.get(f"{owner.url}/i/{key}",
                                            headers={PEER_HEADER: self.me.name}) as r:
                    if r.status == 404:
                        await head  # NotFound if the origin agrees: then it is one
                        raise PeerFailed(f"{who} answered 404 for {key}, which the origin has")
                    if r.status != 200:
                        raise PeerFailed(f"{who} answered {r.status} for {key}")
                    info = await head
                    body = await read_capped(r, info.size, who)
                    content_type = r.headers.get("Content-Type", "application/octet-stream")
        except TimeoutError:
            raise timed_out(who) from None
        finally:
            head.cancel()  # no-op when it is done; its error, if unread, is read below
            head.add_done_callback(_retrieve)
        if not key.endswith("/" + ORIGINAL):
            content_type = content_type_for(key)
        self.stats.peer_fetches += 1
        return Entry(key, body, trusted_blake3(key, info), content_type, time.time())


class PeerWithFallback:
    """Ask `peer`; if it fails, ask `fallback`. If it has not answered after its share of
    the deadline, ask `fallback` too and take the first good answer (a hedged request): a
    hung owner costs one deadline in all, never two, and a slow one is not wasted."""

    def __init__(self, peer: Upstream, fallback: Upstream, share: float = PEER_SHARE) -> None:
        self.peer, self.fallback, self.share = peer, fallback, share

    async def fetch(self, key: str, deadline: float) -> Entry:
        loop = asyncio.get_running_loop()
        tasks = [asyncio.ensure_future(self.peer.fetch(key, deadline))]
        try:
            await asyncio.wait(tasks, timeout=(deadline - loop.time()) * self.share)
            if not tasks[0].done():
                log.info("owner edge slow for %s: asking the origin too", key)
            elif _usable(tasks[0]):
                return tasks[0].result()
            tasks.append(asyncio.ensure_future(self.fallback.fetch(key, deadline)))
            return await _first_good(tasks)
        finally:
            for t in tasks:
                t.cancel()
                t.add_done_callback(_retrieve)


def _usable(task: asyncio.Future[Entry], peer: bool = True) -> bool:
    """Done with an entry, or with the origin's own 404 (an answer too)."""
    exc = task.exception()
    if exc is None or isinstance(exc, NotFound):
        return True
    if peer:
        log.warning("%s: using the origin", exc, extra={"error": type(exc).__name__})
    return False


async def _first_good(tasks: Sequence[asyncio.Future[Entry]]) -> Entry:
    """The first entry (or origin 404) among `tasks`; else the last one's error (the
    origin's: it says more than the peer's)."""
    pending = {t for t in tasks if not t.done()}  # a done one was judged already
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            if _usable(t, peer=t is not tasks[-1]):
                return t.result()
    return tasks[-1].result()
