"""The durable purge log: one small JSON object per purge or delete, under `purges/`.

Keys sort by time (nanoseconds, zero-padded), so an edge's cursor is simply the last key
it applied, and "what did I miss" is one list call with StartAfter.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from dataclasses import dataclass

from common.errors import NotFound
from common.hashing import is_content_id
from origin import keys as K
from origin.base import Origin

log = logging.getLogger("mediacdn.purgelog")


@dataclass(frozen=True)
class PurgeRecord:
    key: str
    ids: tuple[str, ...]
    all: bool
    region: str | None
    reason: str
    at_ns: int

    def applies_to(self, region: str) -> bool:
        return self.region is None or self.region == region


async def append(origin: Origin, *, ids: list[str], purge_all: bool = False,
                 region: str | None = None, reason: str = "purge") -> PurgeRecord:
    if not purge_all and not all(is_content_id(i) for i in ids):
        raise ValueError("purge records name content ids only")
    at = time.time_ns()
    key = K.purge_record(at, secrets.token_hex(4))
    body = {"ids": ids, "all": purge_all, "region": region, "reason": reason, "at_ns": at}
    await origin.put(key, json.dumps(body).encode(), "application/json", {})
    return PurgeRecord(key, tuple(ids), purge_all, region, reason, at)


async def read_since(origin: Origin, cursor: str, limit: int = 1000,
                     parallel: int = 32) -> list[PurgeRecord]:
    """Records after `cursor`, in order; fetched `parallel` at a time (a catch-up over
    thousands of records must not cost thousands of sequential round trips)."""
    keys = await origin.list(K.PURGES_PREFIX, start_after=cursor, limit=limit)
    slots = asyncio.Semaphore(parallel)

    async def fetch(key: str) -> PurgeRecord | None:
        async with slots:
            try:
                _, data = await origin.read(key)
            except NotFound:  # compacted between list and read
                return None
        try:
            raw = json.loads(data)
            ids = tuple(i for i in raw.get("ids", []) if isinstance(i, str) and is_content_id(i))
            region = raw.get("region")
            return PurgeRecord(key, ids, raw.get("all") is True,
                               region if isinstance(region, str) else None,
                               str(raw.get("reason", "purge")), int(raw.get("at_ns", 0)))
        except (ValueError, TypeError, AttributeError):
            # A record nobody can read may have named anything: the safe reading is
            # "purge everything" (content-addressed bytes just refill), never "skip it",
            # and never a catch-up that stops on it forever.
            log.error("purge record %s is damaged; applying it as a purge of everything", key)
            return PurgeRecord(key, (), True, None, "damaged", 0)

    found = await asyncio.gather(*(fetch(k) for k in keys))
    return [r for r in found if r is not None]


async def compact(origin: Origin, older_than_seconds: float) -> int:
    """Drop records older than the retention; an edge down longer than that purges all."""
    cutoff = K.purge_record(time.time_ns() - int(older_than_seconds * 1e9), "0" * 8)
    removed = 0
    for key in await origin.list(K.PURGES_PREFIX, limit=100_000):
        if key >= cutoff:
            break
        await origin.delete(key)
        removed += 1
    return removed
