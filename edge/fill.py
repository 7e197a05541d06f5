"""A miss, as layers that share one interface (like httpx's transports): each `Upstream`
answers `fetch(key, deadline)` with an entry or a domain error, and wraps another.

    SingleFlight(Remembering(Verifying(OriginUpstream)))                   owner, peer asks
    SingleFlight(Remembering(PeerWithFallback(Verifying(PeerUpstream),     not the owner
                                              Verifying(OriginUpstream))))

`deadline` is one absolute `loop.time()` for the whole miss, whatever the layers do inside.
Concurrent misses for one object share one upstream fetch (single-flight). Unknown objects
are remembered for a short TTL (negative cache), so a flood of them stays off the origin.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Protocol

from common.errors import IntegrityError, NotFound, OriginTimeout, ServiceUnavailable
from common.hashing import content_id, is_content_id
from common.variants import origin_name
from edge.entry import Entry, content_type_for
from edge.stats import EdgeStats
from origin import Origin
from origin import keys as K

log = logging.getLogger("mediacdn.edge.fill")
MAX_OBJECT_BYTES = 256 * 1024 * 1024


class NegativeCache:
    def __init__(self, ttl: float, max_items: int = 100_000) -> None:
        self.ttl = ttl
        self.max_items = max_items
        self._until: OrderedDict[str, float] = OrderedDict()
        self._by_id: dict[str, set[str]] = {}  # so dropping an id never scans the table

    def hit(self, key: str) -> bool:
        until = self._until.get(key)
        if until is None:
            return False
        if until < time.monotonic():
            self._forget(key)
            return False
        return True

    def add(self, key: str) -> None:
        if self.ttl <= 0:
            return
        self._until[key] = time.monotonic() + self.ttl
        self._until.move_to_end(key)
        self._by_id.setdefault(key.split("/", 1)[0], set()).add(key)
        while len(self._until) > self.max_items:
            self._forget(next(iter(self._until)))

    def _forget(self, key: str) -> None:
        self._until.pop(key, None)
        image_id = key.split("/", 1)[0]
        keys = self._by_id.get(image_id)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_id[image_id]

    def discard_ids(self, ids: set[str]) -> None:
        for image_id in ids:
            for key in list(self._by_id.get(image_id, ())):
                self._forget(key)

    def discard_prefix(self, prefix: str) -> None:
        for k in [k for k in self._until if k.startswith(prefix)]:
            self._forget(k)

    def clear(self) -> None:
        self._until.clear()
        self._by_id.clear()


ORIGINAL = "original"  # the reserved name of the uploaded bytes: /i/{id}/original


def origin_key_for(key: str) -> str:
    image_id, name = key.split("/", 1)
    if name == ORIGINAL:
        return K.original(image_id)
    variant, ext = name.rsplit(".", 1)
    return K.variant(image_id, origin_name(variant), ext)


class Upstream(Protocol):
    async def fetch(self, key: str, deadline: float) -> Entry:
        """The entry for a cache key; its `blake3` is what a trusted source (the origin)
        says the bytes hash to. Raises NotFound only when the origin said so."""
        ...


def timed_out(what: str) -> OriginTimeout:
    return OriginTimeout(f"{what} did not answer within the edge's origin_timeout")


class OriginUpstream:
    """The object's bytes and the blake3 stored with them: the variant's metadata, or for
    an original its id (its own blake3). Not yet checked: `Verifying` does that."""

    def __init__(self, origin: Origin, stats: EdgeStats,
                 observe: Callable[[float], None] | None = None) -> None:
        self.origin, self.stats, self.observe = origin, stats, observe

    async def fetch(self, key: str, deadline: float) -> Entry:
        image_id, name = key.split("/", 1)
        origin_key = origin_key_for(key)
        self.stats.origin_fetches += 1
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout_at(deadline), self.origin.open(origin_key) as reader:
                if name == ORIGINAL:
                    expected, content_type = image_id, reader.info.content_type
                else:
                    expected = reader.info.metadata.get("blake3", "")
                    content_type = content_type_for(key)
                if not is_content_id(expected):
                    raise IntegrityError(f"origin object {origin_key} carries no blake3")
                if reader.info.size > MAX_OBJECT_BYTES:
                    raise IntegrityError(f"origin object {origin_key} is implausibly large")
                parts = [chunk async for chunk in reader.iter_chunks()]
        except TimeoutError:
            raise timed_out("the origin") from None
        finally:
            if self.observe is not None:
                self.observe(time.perf_counter() - t0)
        return Entry(key, b"".join(parts), expected, content_type, time.time())


class Verifying:
    """Bytes are checked against their trusted blake3 before anyone sees or caches them."""

    def __init__(self, inner: Upstream, source: str, stats: EdgeStats) -> None:
        self.inner, self.source, self.stats = inner, source, stats

    async def fetch(self, key: str, deadline: float) -> Entry:
        entry = await self.inner.fetch(key, deadline)
        body = entry.body
        # blake3 releases the GIL on big inputs: hash those off the loop.
        digest = (content_id(body) if len(body) < 1 << 20
                  else await asyncio.to_thread(content_id, body))
        if digest != entry.blake3:
            self.stats.verify_failures += 1
            raise IntegrityError(f"bytes of {key} from {self.source} do not match their "
                                 "blake3; not served")
        return entry


class Remembering:
    """What a fill learnt is kept: the entry through `store` (the node's one place that
    caches a fetched entry), a 404 of the origin's through `missing` (the negative cache).
    Both get the invalidation token taken when the fill started, so nothing learnt before a
    purge (or an upload) of the id is kept after it."""

    def __init__(self, inner: Upstream, store: Callable[[Entry, int], Awaitable[None]],
                 missing: Callable[[str, int], None], token: Callable[[], int]) -> None:
        self.inner, self.store, self.missing, self.token = inner, store, missing, token

    async def fetch(self, key: str, deadline: float) -> Entry:
        token = self.token()
        try:
            entry = await self.inner.fetch(key, deadline)
        except NotFound:
            self.missing(key, token)
            raise NotFound("no such image or variant") from None
        await self.store(entry, token)
        return entry


class SingleFlight:
    """One upstream fetch per key at a time; every waiter gets its result or its error.

    The fetch runs as its own task, so a client that goes away cancels only its wait,
    never the fill the others are waiting on. A waiter shares the first caller's deadline,
    which is never later than its own (every miss gets the same budget).
    """

    def __init__(self, inner: Upstream, max_waiters: int = 10_000) -> None:
        self.inner = inner
        self._inflight: dict[str, asyncio.Task[Entry]] = {}
        self._waiters: dict[str, int] = {}
        self.max_waiters = max_waiters
        self.collapsed = 0

    def _done(self, key: str, task: asyncio.Task[Entry]) -> None:
        if self._inflight.get(key) is task:  # not a newer fill started after a purge
            del self._inflight[key]
            self._waiters.pop(key, None)
        if not task.cancelled():
            task.exception()  # mark retrieved even if every waiter went away

    def forget_ids(self, ids: set[str]) -> None:
        """As forget_prefix, for many ids in one pass over the fills in flight."""
        for key in [k for k in self._inflight if k.split("/", 1)[0] in ids]:
            del self._inflight[key]
            self._waiters.pop(key, None)

    def forget_prefix(self, prefix: str) -> None:
        """A purge: fills already running finish for their waiters, but requests from now
        on start a fresh one (they must not get bytes fetched before the purge)."""
        for key in [k for k in self._inflight if k.startswith(prefix)]:
            del self._inflight[key]
            self._waiters.pop(key, None)

    async def fetch(self, key: str, deadline: float) -> Entry:
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self.inner.fetch(key, deadline))
            self._inflight[key] = task
            self._waiters[key] = 0
            task.add_done_callback(lambda t: self._done(key, t))
        else:
            if self._waiters[key] >= self.max_waiters:
                raise ServiceUnavailable("too many requests waiting for this object")
            self.collapsed += 1
        self._waiters[key] += 1
        return await asyncio.shield(task)
