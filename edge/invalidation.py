"""The one owner of invalidation inside an edge worker.

Every drop of cached state goes through here, whoever asked (the node's log follower, an
admin purge): the ids go into the node's journal first, so every worker of the node sees
them, then this worker's tiers are cleared and the disk rows deleted, and only then is the
purge answered. A purge answered is therefore complete on the node:

- a request that starts after it applies the journal first (`catch_up`), so no worker's
  hot tier, negative cache or in-flight fill outlives it;
- a fill or a disk read that started before it is never stored nor promoted after it
  (`token` at the start, `still_valid` before keeping anything; a disk write is checked
  again after it lands, and undone if a purge slipped in between);
- the purge is published to the journal before and after its disk rows are deleted, so
  nothing read from disk in between survives either.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TypeVar

from edge.disk import DiskTier
from edge.fill import NegativeCache
from edge.journal import ALL, ANNOUNCE, PURGE, Journal
from edge.memory import MemoryTier

log = logging.getLogger("mediacdn.edge.purge")
T = TypeVar("T")
Blocking = Callable[..., Awaitable[object]]
MAX_REMEMBERED = 200_000


class Invalidation:
    def __init__(self, journal: Journal, memory: MemoryTier, negative: NegativeCache,
                 forget_flights: Callable[[set[str] | None], None], disk: DiskTier,
                 blocking: Callable[..., Awaitable[object]]) -> None:
        self.journal = journal
        self.memory, self.negative, self.disk = memory, negative, disk
        self.forget_flights = forget_flights  # in-flight fills of these ids (None: all)
        self._blocking = blocking
        self.seen = journal.count  # a new worker's tiers are empty: nothing to apply
        self._dropped_at: OrderedDict[str, int] = OrderedDict()  # id -> journal position
        self._announced_at: OrderedDict[str, int] = OrderedDict()
        self._all_at = 0
        self._horizon = 0  # positions up to here were forgotten: older tokens are void

    # -- every request -----------------------------------------------------------------
    def catch_up(self) -> None:
        """Apply what other workers (or the follower) wrote to the journal since last time:
        one pass per table for the whole batch (ids are indexed), so a purge of thousands
        of ids never freezes the loop."""
        count = self.journal.count
        if count == self.seen:
            return
        entries = self.journal.read(self.seen, count)
        if entries is None:
            log.warning("fell behind the node's purge journal: dropping this worker's tiers")
            self._drop_everything(count)
            self.seen = count
            return
        purged: set[str] = set()
        announced: set[str] = set()
        for offset, (kind, image_id) in enumerate(entries):
            position = self.seen + offset + 1
            if kind == PURGE:
                purged.add(image_id)
                self._remember(self._dropped_at, image_id, position)
            elif kind == ANNOUNCE:
                # A new upload: only 404s are wrong now (cached, or about to be by a fill
                # that started before the upload); fills of real bytes stay good.
                announced.add(image_id)
                self._remember(self._announced_at, image_id, position)
            else:  # ALL, or anything unreadable: the safe reading
                self._drop_everything(position)
                purged.clear()
                announced.clear()
        self.seen = count
        if purged:
            self.memory.discard_ids(purged)
            self.forget_flights(purged)  # later requests start a fresh fill
        if purged or announced:
            self.negative.discard_ids(purged | announced)

    def _remember(self, table: OrderedDict[str, int], image_id: str, position: int) -> None:
        table.pop(image_id, None)
        table[image_id] = position
        while len(table) > MAX_REMEMBERED:
            _, forgotten = table.popitem(last=False)
            self._horizon = max(self._horizon, forgotten)

    def _drop_everything(self, position: int) -> None:
        self.memory.clear()
        self.negative.clear()
        self.forget_flights(None)
        self._all_at = position

    def token(self) -> int:
        """Taken before a lookup or fill: the journal position it started from."""
        self.catch_up()
        return self.seen

    def still_valid(self, key: str, token: int) -> bool:
        """Nothing dropped `key`'s id since `token` was taken: bytes fetched may be kept."""
        self.catch_up()
        if token < self._horizon or self._all_at > token:
            return False
        return self._dropped_at.get(key.split("/", 1)[0], 0) <= token

    def still_missing(self, key: str, token: int) -> bool:
        """...and it was not uploaded since either: a 404 found may be remembered."""
        return (self.still_valid(key, token)
                and self._announced_at.get(key.split("/", 1)[0], 0) <= token)

    # -- purges, complete on the node when they return ---------------------------------
    # Each purge is published twice, around the disk delete: the first drops the hot tiers
    # and voids fills and reads in flight; but a request starting between it and the disk
    # delete may still read an old row and promote it, so the second drops that too.
    async def purge_ids(self, ids: list[str]) -> int:
        wanted = set(ids)
        hot_keys = self.memory.keys()
        in_memory = sum(1 for k in hot_keys if k.split("/", 1)[0] in wanted)
        entries = [(PURGE, i) for i in ids]
        await self._publish(entries)
        on_disk = await self._blocking(self.disk.delete_prefixes, [f"{i}/" for i in ids])
        await self._publish(entries)
        assert isinstance(on_disk, int)
        return max(in_memory, on_disk)  # the hot tier holds a subset of the disk tier

    async def purge_all(self) -> int:
        count = await self._blocking(self.disk.count)
        assert isinstance(count, int)
        count = max(count, len(self.memory))
        await self._publish([(ALL, "")])
        await self._blocking(self.disk.clear)
        await self._publish([(ALL, "")])
        return count

    async def announce(self, ids: list[str]) -> None:
        """New uploads: cached 404s for them go, on every worker."""
        await self._publish([(ANNOUNCE, i) for i in ids])

    async def _publish(self, entries: list[tuple[int, str]]) -> None:
        self.catch_up()
        await self._blocking(self.journal.append, entries)
        self.catch_up()  # this worker applies its own entries like everyone else's
