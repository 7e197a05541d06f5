"""A miss: fetch from upstream, verify the bytes against their blake3, then cache.

Concurrent misses for one object share one upstream fetch (single-flight). Unknown objects
are remembered for a short TTL (negative cache), so a flood of them stays off the origin.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from common.errors import IntegrityError, OriginTimeout, ServiceUnavailable
from common.hashing import Hasher, is_content_id
from edge.entry import Entry, content_type_for
from origin import Origin
from origin import keys as K

log = logging.getLogger("mediacdn.edge.fill")
MAX_OBJECT_BYTES = 256 * 1024 * 1024


class NegativeCache:
    def __init__(self, ttl: float, max_items: int = 100_000) -> None:
        self.ttl = ttl
        self.max_items = max_items
        self._until: OrderedDict[str, float] = OrderedDict()

    def hit(self, key: str) -> bool:
        until = self._until.get(key)
        if until is None:
            return False
        if until < time.monotonic():
            del self._until[key]
            return False
        return True

    def add(self, key: str) -> None:
        if self.ttl <= 0:
            return
        self._until[key] = time.monotonic() + self.ttl
        self._until.move_to_end(key)
        while len(self._until) > self.max_items:
            self._until.popitem(last=False)

    def discard_prefix(self, prefix: str) -> None:
        for k in [k for k in self._until if k.startswith(prefix)]:
            del self._until[k]

    def clear(self) -> None:
        self._until.clear()


ORIGINAL = "original"  # the reserved name of the uploaded bytes: /i/{id}/original


def origin_key_for(key: str) -> str:
    image_id, name = key.split("/", 1)
    if name == ORIGINAL:
        return K.original(image_id)
    variant, ext = name.rsplit(".", 1)
    return K.variant(image_id, variant, ext)


async def fetch_verified(origin: Origin, key: str, limit_seconds: float) -> Entry:
    """The object's bytes from the origin, verified before anyone sees them: a variant
    against the blake3 stored with it, an original against its id (its own blake3)."""
    image_id, name = key.split("/", 1)
    origin_key = origin_key_for(key)
    try:
        async with asyncio.timeout(limit_seconds):
            async with origin.open(origin_key) as reader:
                if name == ORIGINAL:
                    expected = image_id
                    content_type = reader.info.content_type
                else:
                    expected = reader.info.metadata.get("blake3", "")
                    content_type = content_type_for(key)
                if not is_content_id(expected):
                    raise IntegrityError(f"origin object {origin_key} carries no blake3")
                if reader.info.size > MAX_OBJECT_BYTES:
                    raise IntegrityError(f"origin object {origin_key} is implausibly large")
                hasher, parts = Hasher(), []
                async for chunk in reader.iter_chunks():
                    hasher.update(chunk)
                    parts.append(chunk)
    except TimeoutError:
        raise OriginTimeout(f"the origin did not answer within {limit_seconds:g} s") from None
    body = b"".join(parts)
    if hasher.hexdigest() != expected:
        raise IntegrityError(f"bytes of {origin_key} do not match their blake3; not served")
    return Entry(key, body, expected, content_type, time.time())


Fetcher = Callable[[str], Awaitable[Entry]]


class SingleFlight:
    """One upstream fetch per key at a time; every waiter gets its result or its error.

    The fetch runs as its own task, so a client that goes away cancels only its wait,
    never the fill the others are waiting on.
    """

    def __init__(self, max_waiters: int = 10_000) -> None:
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

    def forget_prefix(self, prefix: str) -> None:
        """A purge: fills already running finish for their waiters, but requests from now
        on start a fresh one (they must not get bytes fetched before the purge)."""
        for key in [k for k in self._inflight if k.startswith(prefix)]:
            del self._inflight[key]
            self._waiters.pop(key, None)

    async def run(self, key: str, fetch: Fetcher) -> tuple[Entry, bool]:
        """(entry, True if this call started the fetch)."""
        task = self._inflight.get(key)
        leader = task is None
        if task is None:
            task = asyncio.ensure_future(fetch(key))
            self._inflight[key] = task
            self._waiters[key] = 0
            task.add_done_callback(lambda t: self._done(key, t))
        else:
            if self._waiters[key] >= self.max_waiters:
                raise ServiceUnavailable("too many requests waiting for this object")
            self.collapsed += 1
        self._waiters[key] += 1
        return await asyncio.shield(task), leader
