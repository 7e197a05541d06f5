"""One edge node's cache logic: memory tier -> disk tier -> single-flight verified fill.

Everything here is independent of HTTP; `edge.handlers` speaks HTTP around it.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import aiohttp
from prometheus_client import Histogram

from common.errors import IntegrityError, MediaCDNError, NotFound, OriginTimeout, OriginUnavailable
from config.schema import Config, EdgeNode
from edge.disk import CorruptEntry, DiskTier, NoDiskTier
from edge.entry import Entry, cors_headers
from edge.fill import NegativeCache, SingleFlight, fetch_verified
from edge.invalidation import Invalidation
from edge.journal import Journal
from edge.memory import MemoryTier
from edge.peer import fetch_from_peer
from edge.rendezvous import owner
from edge.shared import COUNTERS, StatsBoard
from edge.stats import EdgeStats
from origin import Origin

log = logging.getLogger("mediacdn.edge")
T = TypeVar("T")


def open_disk_tier(directory: Path, size_limit: int) -> DiskTier:
    try:
        return DiskTier(directory, size_limit)
    except (OSError, sqlite3.Error) as exc:
        log.error("cache directory %s is unusable (%s): serving without a disk cache",
                  directory, exc, extra={"error": type(exc).__name__})
        return NoDiskTier(str(exc))


class EdgeCache:
    def __init__(self, cfg: Config, node: EdgeNode, origin: Origin, stats: EdgeStats,
                 worker: int = 0) -> None:
        self.cfg, self.node, self.origin, self.stats = cfg, node, origin, stats
        region = cfg.region(node.region)
        assert region is not None  # the loader checked it
        self.region_edges = region.edges
        self.journal = Journal(node.cache_dir / "invalidations")
        self.board = StatsBoard(node.cache_dir / "workers", worker, node.workers)
        self.cors = cors_headers(cfg.edge.cors_allow_origin)
        self.memory = MemoryTier(node.memory_bytes, cfg.edge.memory_object_bytes, self.cors)
        self.disk = open_disk_tier(node.cache_dir / "objects", node.cache_bytes)
        self.negative = NegativeCache(cfg.edge.negative_ttl)
        self.flight = SingleFlight()
        self.io = ThreadPoolExecutor(max_workers=4, thread_name_prefix="edge-io")
        self.disk_evictions = 0
        self.fetch_seconds: Histogram | None = None
        self.session: aiohttp.ClientSession | None = None  # for peer fetches
        self.invalidation = Invalidation(self.journal, self.memory, self.negative, self.flight,
                                         self.disk, self.blocking)

    async def blocking(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.io, fn, *args)

    async def get(self, key: str, from_peer: bool = False) -> tuple[Entry, bool]:
        """(entry, hit). Raises NotFound, OriginUnavailable/Timeout or IntegrityError.

        `from_peer`: the request came from another edge, so fill from the origin only.
        """
        token = self.invalidation.token()
        hot = self.memory.get(key)
        if hot is not None:
            self.disk.touch(key)
            return hot.to_entry(), True
        try:
            entry = await self.blocking(self.disk.get, key)
        except CorruptEntry:
            self.stats.disk_corrupt += 1
            log.error("cached entry %s failed its blake3 check; dropped and refetched", key)
            entry = None
        if entry is not None:
            if self.invalidation.still_valid(key, token):  # else a purge raced the read
                self.memory.put(entry)
            return entry, True
        if self.negative.hit(key):
            self.stats.negative_hits += 1
            raise NotFound("no such image or variant")
        fill = self._fill_from_origin if from_peer else self._fill
        entry, _ = await self.flight.run(key, fill)
        return entry, False

    def owner_of(self, key: str) -> EdgeNode:
        return owner(self.region_edges, key.split("/", 1)[0])

    async def _fill(self, key: str) -> Entry:
        token = self.invalidation.token()
        owner_edge = self.owner_of(key)
        if owner_edge.name != self.node.name and self.session is not None:
            try:
                entry = await fetch_from_peer(self.session, self.origin, self.node, owner_edge,
                                              key, self.cfg.edge.origin_timeout)
            except NotFound:
                self._remember_missing(key, token)
                raise NotFound("no such image or variant") from None
            except IntegrityError as exc:
                self.stats.verify_failures += 1
                log.error("%s; using the origin", exc)
            except (MediaCDNError, aiohttp.ClientError, TimeoutError, OSError) as exc:
                log.warning("owner edge %s failed for %s (%s); using the origin",
                            owner_edge.name, key, type(exc).__name__)
            else:
                self.stats.peer_fetches += 1
                await self.store(entry, token)
                return entry
        return await self._fill_from_origin(key, token)

    async def _fill_from_origin(self, key: str, token: int | None = None) -> Entry:
        token = self.invalidation.token() if token is None else token
        t0 = time.perf_counter()
        self.stats.origin_fetches += 1
        try:
            entry = await fetch_verified(self.origin, key, self.cfg.edge.origin_timeout)
        except NotFound:
            self._remember_missing(key, token)
            raise NotFound("no such image or variant") from None
        except IntegrityError:
            self.stats.verify_failures += 1
            raise
        except (OriginUnavailable, OriginTimeout):
            raise
        finally:
            if self.fetch_seconds is not None:
                self.fetch_seconds.observe(time.perf_counter() - t0)
        await self.store(entry, token)
        return entry

    def _remember_missing(self, key: str, token: int) -> None:
        if self.invalidation.still_missing(key, token):  # else: uploaded meanwhile
            self.negative.add(key)

    async def store(self, entry: Entry, token: int) -> None:
        """Cache a fetched entry unless a purge of its id came after the fill started."""
        valid = self.invalidation.still_valid
        if not valid(entry.key, token):
            return
        try:
            self.disk_evictions += await self.blocking(self.disk.put, entry)
        except Exception as exc:  # disk full or unwritable: serve it anyway, uncached on disk
            self.stats.disk_write_errors += 1
            log.error("could not cache %s on disk: %s", entry.key, exc,
                      extra={"error": type(exc).__name__})
        if not valid(entry.key, token):
            # A purge landed while the row was written: its delete may have run before our
            # write, so undo it ourselves.
            await self.blocking(self.disk.delete, entry.key)
            return
        self.memory.put(entry)

    async def purge_ids(self, ids: list[str]) -> int:
        removed = await self.invalidation.purge_ids(ids)
        self.stats.purged += removed
        return removed

    async def purge_all(self) -> int:
        removed = await self.invalidation.purge_all()
        self.stats.purged += removed
        return removed

    async def housekeeping(self) -> None:
        """Once a second: write batched recency, close retired memfds, publish counters."""
        self.memory.reap()
        await self.blocking(self.disk.flush_recency)
        await self.blocking(self.board.publish, self.stats, self.gauges())

    def responses(self) -> Counter[tuple[int, str]]:
        """Answers by (status, cache result), every worker of the node added up."""
        out = self.stats.responses.copy()
        out[(200, "HIT")] += self.stats.fast_hits
        for snap in self.board.others():
            for status, cache, n in snap.get("responses", []):
                out[(int(status), str(cache))] += int(n)
            out[(200, "HIT")] += int(snap.get("fast_hits", 0))
        return out

    def totals(self) -> dict[str, int]:
        """This worker's live counters plus every other worker's latest snapshot."""
        own = {k: int(getattr(self.stats, k)) for k in COUNTERS} | {
            k: int(v) for k, v in self.gauges().items()}
        for snap in self.board.others():
            for k in own:
                own[k] += int(snap.get(k, 0))
        return own

    def gauges(self) -> dict[str, int]:
        return {
            "memory_entries": len(self.memory),
            "memory_bytes": self.memory.bytes,
            "memory_evictions": self.memory.evictions,
            "disk_evictions": self.disk_evictions,
            "collapsed_waiters": self.flight.collapsed,
            "disk_unavailable": int(isinstance(self.disk, NoDiskTier)),
        }

    async def disk_usage(self) -> tuple[int, int]:
        return await self.blocking(self.disk.count), await self.blocking(self.disk.volume)

    async def close(self) -> None:
        self.memory.close()
        self.journal.close()
        await self.blocking(self.disk.close)
        self.io.shutdown(wait=True)
