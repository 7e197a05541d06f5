"""One edge node's cache logic: memory tier -> disk tier -> single-flight verified fill.

Everything here is independent of HTTP; `edge.handlers` speaks HTTP around it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import aiohttp
from prometheus_client import Histogram

from common.auth import KeyRing
from common.errors import NotFound, OriginTimeout, OriginUnavailable
from common.transform import TRANSFORM_PREFIX
from common.variants import derivable
from config.schema import Config, EdgeNode
from edge.deriving import Deriving
from edge.disk import CorruptEntry, DiskTier, NoDiskTier
from edge.entry import Entry, cors_headers
from edge.fill import (
    NegativeCache,
    OriginUpstream,
    Remembering,
    SingleFlight,
    Upstream,
    Verifying,
)
from edge.invalidation import Invalidation
from edge.journal import ORIGIN_DOWN, ORIGIN_OK, Journal
from edge.memory import MemoryTier
from edge.peer import PeerUpstream, PeerWithFallback
from edge.rendezvous import owner
from edge.shared import COUNTERS, StatsBoard
from edge.stats import EdgeStats
from origin import Origin

log = logging.getLogger("mediacdn.edge")
RECLAIM_SECONDS = 600.0
MAX_TRANSFORMS = 10_000  # canonical specs remembered for misses in flight
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
                 worker: int = 0, keys: KeyRing | None = None) -> None:
        self.cfg, self.node, self.origin, self.stats = cfg, node, origin, stats
        self.keys = keys if keys is not None else KeyRing(cfg.secrets)  # the app's, swapped
        region = cfg.region(node.region)
        assert region is not None  # the loader checked it
        self.region_edges = region.edges
        shield = cfg.region(region.shield) if region.shield else None
        self.shield_edges = shield.edges if shield is not None else ()
        self.journal = Journal(node.cache_dir / "invalidations")
        self.board = StatsBoard(node.cache_dir / "workers", worker, node.workers)
        self.worker = worker
        self._next_reclaim = 0.0  # the first housekeeping round, just after start
        self.cors = cors_headers(cfg.edge.cors_allow_origin)
        self.memory = MemoryTier(node.memory_bytes, cfg.edge.memory_object_bytes, self.cors)
        self.disk = open_disk_tier(node.cache_dir / "objects", node.cache_bytes)
        self.negative = NegativeCache(cfg.edge.negative_ttl)
        self.transforms: OrderedDict[str, str] = OrderedDict()
        self.io = ThreadPoolExecutor(max_workers=4, thread_name_prefix="edge-io")
        self.disk_evictions = 0
        self.fetch_seconds: Histogram | None = None
        # Two chains (see edge.fill), each with its own single-flight: a fill that may ask
        # a peer never shares a flight with one that may not, so a peer's request can never
        # end up waiting on a request to that peer (edges that disagree about the owner).
        self.from_origin = Verifying(OriginUpstream(origin, stats, self._observe_fetch),
                                     "the origin", stats)
        self.via_origin = SingleFlight(self._remembering(self.from_origin))
        self.via_owner: SingleFlight | None = None  # needs the session: see `session`
        self.via_shield: SingleFlight | None = None  # the owner's, when the region has one
        self._session: aiohttp.ClientSession | None = None
        self.invalidation = Invalidation(self.journal, self.memory, self.negative,
                                         self._forget_flights, self.disk, self.blocking)

    def _remembering(self, inner: Upstream) -> Remembering:
        # Ingest's /_internal/derive is on its admin listener when it has one.
        deriving = Deriving(inner, self.origin, self.cfg.ingest.listener.admin_url,
                            self.keys.admin_token, self._derive_body,
                            lambda: self._session)
        return Remembering(deriving, self.store, self._remember_missing,
                           lambda: self.invalidation.token())

    def _derive_body(self, key: str) -> dict[str, str] | None:
        """What ingest needs to derive `key` (the origin may lack it: a newer ladder, a
        width on demand, a signed transform), or None when it is not derivable."""
        variant, dot, ext = key.split("/", 1)[1].rpartition(".")
        if not dot:
            return None
        if variant.startswith(TRANSFORM_PREFIX):
            spec = self.transforms.get(key)
            return None if spec is None else {"spec": spec}
        return {} if derivable(variant, ext, self.cfg.transcode) is not None else None

    def transform(self, key: str, spec: str) -> None:
        """Remember the canonical spec of a signed transform's key (its name is a hash)."""
        self.transforms[key] = spec
        self.transforms.move_to_end(key)
        while len(self.transforms) > MAX_TRANSFORMS:
            self.transforms.popitem(last=False)

    def _forget_flights(self, ids: set[str] | None) -> None:
        for flight in (self.via_origin, self.via_owner, self.via_shield):
            if flight is None:
                continue
            if ids is None:
                flight.forget_prefix("")
            else:
                flight.forget_ids(ids)

    @property
    def session(self) -> aiohttp.ClientSession | None:
        return self._session

    @session.setter
    def session(self, session: aiohttp.ClientSession) -> None:
        """The client for peer fetches; with it, misses on ids we do not own ask the owner."""
        self._session = session
        peer = Verifying(PeerUpstream(session, self.origin, self.node, self.owner_of,
                                      self.stats), "the owner edge", self.stats)
        self.via_owner = SingleFlight(self._remembering(PeerWithFallback(peer,
                                                                         self.from_origin)))
        if self.shield_edges:
            # Shielding: the owner asks the shield region's owner before the origin,
            # trusting it no more than a peer (edge.peer), with the same hedged fallback.
            shield = Verifying(PeerUpstream(session, self.origin, self.node,
                                            self.shield_owner_of, self.stats, "shield edge"),
                               "the shield edge", self.stats)
            self.via_shield = SingleFlight(self._remembering(
                PeerWithFallback(shield, self.from_origin)))

    def _observe_fetch(self, seconds: float) -> None:
        if self.fetch_seconds is not None:
            self.fetch_seconds.observe(seconds)

    async def blocking(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.io, fn, *args)

    async def get(self, key: str, from_peer: bool = False,
                  peer_in_region: bool = False) -> tuple[Entry, bool]:
        """(entry, hit). Raises NotFound, OriginUnavailable/Timeout or IntegrityError.

        `from_peer`: the request came from another edge, so it is not sent to a peer again;
        `peer_in_region`: that edge is of this region, so the owner may still ask its shield.
        """
        token = self.invalidation.token()
        hot = self.memory.get(key)
        if hot is not None:
            self.disk.touch(key)
            return hot.to_entry(), True
        entry = await self._from_disk(key, token)
        if entry is not None:
            return entry, True
        if self.negative.hit(key):
            self.stats.negative_hits += 1
            raise NotFound("no such image or variant")
        # One deadline for the whole miss, whichever upstreams it tries.
        deadline = asyncio.get_running_loop().time() + self.cfg.edge.origin_timeout
        try:
            entry = await self._upstream(key, from_peer, peer_in_region).fetch(key, deadline)
        except (OriginUnavailable, OriginTimeout):
            self._origin_seen(ORIGIN_DOWN)  # readiness follows real traffic too
            raise
        except NotFound:
            self._origin_seen(ORIGIN_OK)
            raise
        self._origin_seen(ORIGIN_OK)
        return entry, False

    async def from_disk(self, key: str) -> Entry | None:
        """The disk tier's entry for `key`, verified, and kept in the memory tier unless
        a purge raced the read (the front door asks for this before it answers a hit).
        None, unread, if the memory tier would not keep it: aiohttp answers that one, and
        reads it itself (read here too, it was read twice per request)."""
        return await self._from_disk(key, self.invalidation.token(), to_keep=True)

    async def _from_disk(self, key: str, token: int, to_keep: bool = False) -> Entry | None:
        try:
            if to_keep:
                entry = await self.blocking(self.disk.get_to_keep, key, self.memory.keeps)
            else:
                entry = await self.blocking(self.disk.get, key)
        except CorruptEntry:
            self.stats.disk_corrupt += 1
            log.error("cached entry %s failed its blake3 check; dropped and refetched", key)
            return None
        if entry is not None and self.invalidation.still_valid(key, token):
            self.memory.put(entry)  # else a purge raced the read: served once, not kept
        return entry

    def _origin_seen(self, state: int) -> None:
        # Each time (two words of shared memory): a fill that proves the origin spares the
        # follower its probe.
        self.journal.set_origin_state(state, int(time.time()))

    def owner_of(self, key: str) -> EdgeNode:
        return owner(self.region_edges, key.split("/", 1)[0])

    def shield_owner_of(self, key: str) -> EdgeNode:
        return owner(self.shield_edges, key.split("/", 1)[0])

    def in_region(self, edge_name: str | None) -> bool:
        return edge_name is not None and any(e.name == edge_name for e in self.region_edges)

    def _upstream(self, key: str, from_peer: bool, peer_in_region: bool) -> SingleFlight:
        # A signed transform is filled here (the owner would want the signature; ingest
        # derives it once anyway).
        if key.split("/", 1)[1].startswith(TRANSFORM_PREFIX):
            return self.via_origin
        if self.via_owner is not None and self.owner_of(key).name != self.node.name:
            # A request from another edge is never forwarded again.
            return self.via_origin if from_peer else self.via_owner
        # The owner: a request leaves the region at most once (for the shield), so edges
        # whose configs disagree cannot forward in a loop.
        if self.via_shield is not None and (not from_peer or peer_in_region):
            return self.via_shield
        return self.via_origin

    def _remember_missing(self, key: str, token: int) -> None:
        if self.invalidation.still_missing(key, token):  # else: uploaded meanwhile
            self.negative.add(key)

    async def store(self, entry: Entry, token: int) -> None:
        """Cache a fetched entry unless a purge of its id came after the fill started."""
        valid = self.invalidation.still_valid
        if not valid(entry.key, token):
            return
        # Asked again inside the disk write's transaction: a purge that lands meanwhile
        # leaves no row behind, not even for a moment (edge/disk.py, put).
        dropped = functools.partial(self.journal.dropped_since, entry.key.split("/", 1)[0],
                                    token)
        try:
            evicted = await self.blocking(self.disk.put, entry, dropped)
        except Exception as exc:  # disk full or unwritable: serve it anyway, uncached on disk
            self.stats.disk_write_errors += 1
            log.error("could not cache %s on disk: %s", entry.key, exc,
                      extra={"error": type(exc).__name__})
        else:
            if evicted is None:
                return  # purged since the fill started
            self.disk_evictions += evicted
        if valid(entry.key, token):
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
        await self._reclaim_orphans_now_and_then()
        await self.blocking(self.disk.flush_recency)
        await self.blocking(self.board.publish, self.stats, self.gauges())

    async def _reclaim_orphans_now_and_then(self) -> None:
        """At start, then every RECLAIM_SECONDS: cache files a killed process left without a
        row (one worker of a node does it: it walks the whole cache directory)."""
        if self.worker != 0 or time.monotonic() < self._next_reclaim:
            return
        self._next_reclaim = time.monotonic() + RECLAIM_SECONDS
        removed = await self.blocking(self.disk.reclaim_orphans)
        if removed:
            log.warning("removed %d orphaned cache file(s) (left by a killed process)",
                        removed)

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
            "collapsed_waiters": self.via_origin.collapsed + (
                self.via_owner.collapsed if self.via_owner is not None else 0),
            "disk_unavailable": int(isinstance(self.disk, NoDiskTier)),
        }

    async def disk_usage(self) -> tuple[int, int]:
        return await self.blocking(self.disk.count), await self.blocking(self.disk.volume)

    async def close(self) -> None:
        self.memory.close()
        self.journal.close()
        await self.blocking(self.disk.close)
        self.io.shutdown(wait=True)
