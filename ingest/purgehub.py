"""Ingest's side of invalidation: the only writer of the log, and the stream edges follow.

- `append` claims the next sequence number at the origin (see `origin.purgelog`) and puts
  the record in memory, from where it is pushed down every follower's stream at once.
- Followers (one per edge node) hold one stream each (`feed`): records are pushed down it
  as they land, and the follower sends back the cursor it has applied, so
  `wait_applied(seq)` can answer a purge or delete only once every connected edge has
  applied it (or say which did not, in time). A plain read (`records_after`, long-poll)
  serves catch-up pages and simple clients; its cursor is an acknowledgement too.
- The log is re-read at the origin every `poll_seconds` (one LIST, whatever the number of
  edges) for records other ingest replicas wrote; records older than the retention are
  compacted away (an edge that missed them drops its whole cache when it returns).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from common.errors import OriginUnavailable
from origin import Origin, purgelog
from origin.purgelog import Kind, Record

log = logging.getLogger("mediacdn.ingest.purges")
KEEP_IN_MEMORY = 10_000
MAX_PER_ANSWER = 1000
MAX_IDS_PER_ANSWER = 20_000  # one answer stays a few MB however large the purges were
BETWEEN_POLLS_SECONDS = 3.0
RECHECK_SECONDS = 0.2  # how often a waiting purge notices a follower that went away
OWES_ACK_SECONDS = 60.0
WRITE_ATTEMPTS = 50
MAX_IDS_PER_RECORD = 10_000  # appends waiting together share a record up to this many ids
COMPACT_BATCH = 1000  # records looked at per compaction round


class Gone(Exception):
    """The records after this cursor are no longer held in memory: read the origin."""


@dataclass
class FollowerState:
    name: str
    region: str
    acked: int
    seen_at: float
    transport: asyncio.BaseTransport | None = None  # of its stream or pending long-poll
    delivered: int = 0  # the newest record handed to it

    def connected(self, now: float) -> bool:
        # Mid-poll on a live connection; applying what it was handed (an apply may take
        # a while: it owes us an ack, so it counts, as "pending"); or between two polls.
        if self.transport is not None:
            return not self.transport.is_closing()  # its connection went away: it did
        if self.delivered > self.acked and now - self.seen_at <= OWES_ACK_SECONDS:
            return True
        return now - self.seen_at <= BETWEEN_POLLS_SECONDS


class PurgeHub:
    def __init__(self, origin: Origin, poll_seconds: float, retention_seconds: float,
                 expected: dict[str, str] | None = None, warmup_seconds: float = 0.0) -> None:
        """`expected`: the configured edges (name -> region). For `warmup_seconds` after a
        start, before they have had time to reconnect, a purge waits for them too."""
        self.expected = expected or {}
        self.warm_at = time.monotonic() + warmup_seconds
        self.origin = origin
        self.poll_seconds = poll_seconds
        self.retention = retention_seconds
        self.tail: deque[Record] = deque(maxlen=KEEP_IN_MEMORY)
        self.last = 0  # the newest sequence number known, whether held in memory or not
        self.followers: dict[str, FollowerState] = {}
        self._write = asyncio.Lock()
        # Replaced each time records arrive: every stream and pending long-poll waits on it.
        # Acks do not touch it (with 1,000 followers each ack waking every pending poll was
        # a million wake-ups per purge: scripts/bench/fanout.py).
        self._news = asyncio.Event()
        self._waiters: list[_Waiter] = []  # purges waiting for acks
        self._batches: dict[tuple[Kind, bool, str | None], _Batch] = {}  # not yet written
        self._answers: dict[tuple[int, int], bytes] = {}  # (cursor, last) -> encoded answer
        self.loaded = False
        self.closing = False

    # -- the log -----------------------------------------------------------------------
    async def load(self) -> None:
        """The newest records into memory (followers further behind read the origin)."""
        self.last = await purgelog.last_seq(self.origin)
        start = max(0, self.last - KEEP_IN_MEMORY)
        self.tail.clear()
        await self._read_from(start)
        self.loaded = True
        log.info("purge log loaded: newest record %d, %d held in memory", self.last,
                 len(self.tail))

    async def _read_from(self, cursor: int) -> int:
        added = 0
        while True:
            batch = await purgelog.read_after(self.origin, cursor, MAX_PER_ANSWER)
            if batch.missed:
                self.tail.clear()  # compacted under us: what we hold is no longer a prefix
            if not batch.records:
                return added
            for rec in batch.records:
                self._hold(rec)
            added += len(batch.records)
            cursor = batch.records[-1].seq

    def _hold(self, rec: Record) -> None:
        if self.tail and rec.seq != self.tail[-1].seq + 1:
            if rec.seq <= self.tail[-1].seq:
                return  # already held
            self.tail.clear()  # a hole: keep only a contiguous run
        self.tail.append(rec)
        self.last = max(self.last, rec.seq)
        self._notify()

    def _notify(self) -> None:
        self._answers.clear()
        self._news.set()
        self._news = asyncio.Event()

    async def refresh(self) -> int:
        """Records other writers added since what we hold."""
        return await self._read_from(self.tail[-1].seq if self.tail else self.last)

    async def append(self, kind: Kind, ids: list[str], purge_all: bool = False,
                     region: str | None = None) -> Record:
        """Durably record it at the origin with the next free sequence number.

        Appends that arrive while a write is under way share the next record (group
        commit): numbers are claimed one at a time, each a round trip to the origin, so at
        10 purges/s one record each queued them behind each other (scripts/bench/fanout.py).
        """
        key = (kind, purge_all, region)
        batch = self._batches.get(key)
        if batch is None or len(batch.ids) + len(ids) > MAX_IDS_PER_RECORD:
            batch = self._batches[key] = _Batch(set(ids))
            batch.task = asyncio.create_task(self._write_batch(key, batch))
        else:
            batch.ids.update(ids)
        assert batch.task is not None
        # Shielded: one caller going away does not cancel the record the others wait for.
        return await asyncio.shield(batch.task)

    async def _write_batch(self, key: tuple[Kind, bool, str | None], batch: _Batch) -> Record:
        async with self._write:
            if self._batches.get(key) is batch:
                del self._batches[key]  # from here on, joiners start the next record
            kind, purge_all, region = key
            ids = sorted(batch.ids)
            seq = self.last + 1
            failures = 0
            for _ in range(WRITE_ATTEMPTS):
                rec = purgelog.new_record(seq, kind, ids, purge_all, region)
                try:
                    written = await purgelog.try_write(self.origin, rec)
                except OriginUnavailable:
                    # Not a "no": the number may or may not be ours. Ask again for the same
                    # one (skipping it could leave a hole every reader takes for a reset).
                    failures += 1
                    if failures >= 3:
                        raise
                    await asyncio.sleep(0.1 * failures)
                    continue
                if written:
                    self._hold(rec)
                    return rec
                # Another ingest took that number: learn what it wrote, take the next one.
                await self.refresh()
                seq = max(seq, self.last) + 1
            raise OriginUnavailable("could not claim a purge log sequence number")

    async def poll_forever(self) -> None:
        while True:
            try:
                if not self.loaded:
                    await self.load()
                else:
                    await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the origin away: followers keep what we hold
                log.warning("reading the purge log failed: %s", exc)
            await asyncio.sleep(self.poll_seconds)

    async def compact_forever(self) -> None:
        while True:
            await asyncio.sleep(min(3600.0, max(1.0, self.retention / 10)))
            try:
                removed = await self.compact()
                if removed:
                    log.info("compacted %d purge record(s)", removed)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the origin away: try again next round
                log.warning("purge log compaction failed: %s", exc)

    async def compact(self) -> int:
        """Drop records older than the retention, never the newest (it carries the number).
        Records not held in memory (a log longer than we hold) are read to learn their age."""
        cutoff = time.time_ns() - int(self.retention * 1e9)
        held = {r.seq: r for r in self.tail}
        old: list[int] = []
        for seq in await purgelog.list_seqs(self.origin, -1, COMPACT_BATCH):
            if seq >= self.last:
                break
            rec = held.get(seq) or await purgelog.read_one(self.origin, seq)
            if rec is not None and rec.at_ns >= cutoff:
                break  # the log is in order: everything after is younger
            old.append(seq)
        await purgelog.delete_through(self.origin, old)
        gone = set(old)
        while self.tail and self.tail[0].seq in gone:
            self.tail.popleft()
        self._answers.clear()
        return len(old)

    # -- followers ---------------------------------------------------------------------
    def ack(self, name: str, region: str, cursor: int,
            transport: asyncio.BaseTransport | None = None) -> None:
        """A follower asked for records after `cursor`: it has applied everything up to it."""
        state = self.followers.get(name)
        if state is None:
            state = self.followers[name] = FollowerState(name, region, cursor, 0.0)
        if cursor > self.last:
            cursor = -1  # it knows of records we do not (a reset log): it has applied none
        moved = cursor > state.acked
        state.region, state.seen_at, state.acked = region, time.monotonic(), cursor
        state.transport = transport
        if moved:
            for w in self._waiters:  # a few purges in flight, not one per follower
                if cursor >= w.seq and name in w.pending:
                    w.pending.discard(name)
                    if not w.pending:
                        w.done.set()

    def delivered(self, name: str, seq: int) -> None:
        state = self.followers.get(name)
        if state is not None:
            state.delivered = max(state.delivered, seq)

    async def records_after(self, cursor: int, wait: float) -> list[Record]:
        """Records after `cursor`, waiting up to `wait` s for one. Raises Gone when the
        next one is no longer in memory."""
        deadline = time.monotonic() + wait
        while True:
            if cursor > self.last:
                return []  # the follower knows more than we do: it reads the origin
            if cursor < self.last:
                return self._slice(cursor)
            left = deadline - time.monotonic()
            if left <= 0 or self.closing:
                return []
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._news.wait()

    def close(self) -> None:
        """Shutting down: streams close and pending long-polls answer now (their followers
        simply ask again, elsewhere or later) instead of holding the drain."""
        self.closing = True
        self._notify()

    def _slice(self, cursor: int) -> list[Record]:
        if not self.tail or self.tail[0].seq > cursor + 1:
            raise Gone(f"records after {cursor} are not held in memory")
        first = self.tail[0].seq
        out: list[Record] = []
        ids = 0
        for i in range(cursor + 1 - first, len(self.tail)):
            rec = self.tail[i]
            ids += len(rec.ids)
            if out and ids > MAX_IDS_PER_ANSWER:
                break
            out.append(rec)
            if len(out) >= MAX_PER_ANSWER:
                break
        return out

    async def feed(self, name: str, after: int,
                   send: Callable[[bytes], Awaitable[None]]) -> None:
        """Push one follower's stream: what it lacks after `after` at once (an empty answer
        when nothing, so it learns `last`), then each record as it lands, in order, until
        shutdown. Raises Gone when its next record is no longer held in memory.

        One task per stream, each waiting on the shared event: a follower that stops reading
        stalls only its own task (its socket's buffer is bounded by the writer's drain), and
        a record costs one wake-up and one write per follower, not a request cycle."""
        sent = after
        records = self._slice(sent) if sent < self.last else []
        await send(self.answer(records, sent))
        if records:
            sent = records[-1].seq
            self.delivered(name, sent)
        while not self.closing:
            if sent >= self.last:  # also: it knows more than we do; it reads the origin
                await self._news.wait()
                continue
            records = self._slice(sent)
            await send(self.answer(records, sent))
            sent = records[-1].seq
            self.delivered(name, sent)

    def poll_ended(self, name: str, transport: asyncio.BaseTransport | None) -> None:
        state = self.followers.get(name)
        if state is not None and state.transport is transport:  # not a newer poll's
            state.transport, state.seen_at = None, time.monotonic()

    def connected(self, region: str | None) -> list[FollowerState]:
        now = time.monotonic()
        return [f for f in self.followers.values()
                if f.connected(now) and (region is None or f.region == region)]

    def answer(self, records: list[Record], cursor: int) -> bytes:
        """The encoded answer (a stream message or a long-poll's body): followers at one
        cursor share it (encoding it
        once per follower was most of a purge's cost at 1,000 followers)."""
        key = (cursor, self.last)
        body = self._answers.get(key)
        if body is None:
            body = json.dumps({"last": self.last, "records": [r.to_json() for r in records]},
                              separators=(",", ":")).encode()
            if records:  # empty answers differ only by `last`: cheap, and not worth holding
                self._answers[key] = body
        return body

    async def wait_applied(self, seq: int, region: str | None, limit: float,
                           expect: bool = True) -> dict[str, bool]:
        """Wait until every connected follower record `seq` (for `region`) applies to has
        acknowledged it, at most `limit` s. {node: applied}. With `expect`, just after a
        start, configured edges that have not reconnected yet are waited for too (they are
        not gone, we just restarted); replicas asking each other leave that to the asker."""
        rec = _Target(seq, region, expect)
        deadline = time.monotonic() + limit
        waiter = _Waiter(rec.seq, self._pending(rec))
        self._waiters.append(waiter)
        try:
            while waiter.pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(left, RECHECK_SECONDS)):
                        await waiter.done.wait()
                # A follower that went away no longer holds the answer back; one that
                # came back (or was expected) and has not applied it yet does.
                waiter.pending = self._pending(rec)
                if waiter.pending:
                    waiter.done.clear()
        finally:
            self._waiters.remove(waiter)
        return self._status(rec)

    def _status(self, rec: _Target) -> dict[str, bool]:
        status = {f.name: f.acked >= rec.seq for f in self.connected(rec.region)}
        if rec.expect:
            for name in self.expected_now(rec.region):
                status.setdefault(name, False)
        return status

    def expected_now(self, region: str | None) -> list[str]:
        """Configured edges of `region` (None: all) still expected to reconnect after our
        start."""
        if time.monotonic() >= self.warm_at:
            return []
        return [name for name, r in self.expected.items() if region in (None, r)]

    def _pending(self, rec: _Target) -> set[str]:
        return {name for name, ok in self._status(rec).items() if not ok}


@dataclass(frozen=True)
class _Target:
    seq: int
    region: str | None
    expect: bool


@dataclass
class _Waiter:
    seq: int
    pending: set[str]  # connected followers that have not acknowledged seq yet
    done: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class _Batch:
    ids: set[str]
    task: asyncio.Task[Record] | None = None
