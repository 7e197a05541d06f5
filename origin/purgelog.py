"""The durable invalidation log at the origin: `purgelog/{seq:020d}.json`, one record each.

Ingest is its only writer. A record's sequence number is claimed by creating its key with
a conditional create (S3 `If-None-Match: *`, `link(2)` on the filesystem): exactly one
writer gets each number, and a writer takes N+1 only after it has seen N exist. So the log
has no holes except at its head, where compaction removes old records, and its order does
not depend on any clock or on the order in which PUTs land.

Records: `purge` (drop cached copies), `delete` (written after the objects are gone: no
refill can resurrect them) and `announce` (a new upload: drop cached 404s for the id).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Literal

from common.errors import NotFound
from common.hashing import is_content_id
from origin.base import Origin

log = logging.getLogger("mediacdn.purgelog")

PREFIX = "purgelog/"
Kind = Literal["purge", "delete", "announce"]
KINDS: tuple[Kind, ...] = ("purge", "delete", "announce")


def key_of(seq: int) -> str:
    return f"{PREFIX}{seq:020d}.json"


def seq_of(key: str) -> int | None:
    name = key[len(PREFIX):].removesuffix(".json")
    return int(name) if key.startswith(PREFIX) and name.isdigit() and len(name) == 20 else None


@dataclass(frozen=True)
class Record:
    seq: int
    kind: Kind
    ids: tuple[str, ...]
    all: bool
    region: str | None
    at_ns: int

    def applies_to(self, region: str) -> bool:
        return self.region is None or self.region == region

    def to_json(self) -> dict[str, object]:
        return {"seq": self.seq, "kind": self.kind, "ids": list(self.ids), "all": self.all,
                "region": self.region, "at_ns": self.at_ns}

    @classmethod
    def from_json(cls, raw: object, seq: int) -> Record:
        """Strict: anything unexpected raises ValueError (the caller decides what that
        means; for an edge, "purge everything")."""
        if not isinstance(raw, dict) or raw.get("seq") != seq:
            raise ValueError("not a record of this sequence number")
        kind, ids, region = raw.get("kind"), raw.get("ids"), raw.get("region")
        if kind not in KINDS or not isinstance(ids, list) or not isinstance(raw.get("all"), bool):
            raise ValueError("bad kind, ids or all")
        if not all(isinstance(i, str) and is_content_id(i) for i in ids):
            raise ValueError("ids must be content ids")
        if region is not None and not isinstance(region, str):
            raise ValueError("bad region")
        at = raw.get("at_ns", 0)
        return cls(seq, kind, tuple(ids), raw["all"], region, at if isinstance(at, int) else 0)

    @classmethod
    def damaged(cls, seq: int) -> Record:
        # A record nobody can read may have named anything: the safe reading is "purge
        # everything" (content-addressed bytes just refill), never "skip it".
        return cls(seq, "purge", (), True, None, 0)


def new_record(seq: int, kind: Kind, ids: list[str], purge_all: bool = False,
               region: str | None = None) -> Record:
    if not purge_all and (not ids or not all(is_content_id(i) for i in ids)):
        raise ValueError("a record names one or more content ids, or everything")
    return Record(seq, kind, tuple(ids), purge_all, region, time.time_ns())


async def try_write(origin: Origin, record: Record) -> bool:
    """Claim `record.seq`; False if another writer holds that number already."""
    body = json.dumps(record.to_json(), separators=(",", ":")).encode()
    return await origin.create(key_of(record.seq), body, "application/json")


async def read_one(origin: Origin, seq: int) -> Record | None:
    """The record at `seq`, None if there is none; damaged ones read as purge-everything."""
    try:
        _, data = await origin.read(key_of(seq))
    except NotFound:
        return None
    try:
        return Record.from_json(json.loads(data), seq)
    except (ValueError, TypeError, UnicodeDecodeError):
        log.error("purge record %d is damaged; applying it as a purge of everything", seq)
        return Record.damaged(seq)


async def list_seqs(origin: Origin, after: int, limit: int = 1000) -> list[int]:
    keys = await origin.list(PREFIX, start_after=key_of(after) if after >= 0 else "",
                             limit=limit)
    return [s for s in (seq_of(k) for k in keys) if s is not None]


async def last_seq(origin: Origin) -> int:
    """The newest sequence number in the log, 0 if it is empty (numbers start at 1)."""
    last, after = 0, -1
    while True:
        seqs = await list_seqs(origin, after, 1000)
        if not seqs:
            return last
        last = after = seqs[-1]


@dataclass(frozen=True)
class Batch:
    """What follows a cursor: `records` in order, contiguous from cursor+1; `missed` is set
    when records after the cursor no longer exist (compacted, or the log was reset): the
    reader cannot know what they named and must drop everything."""

    records: list[Record]
    missed: bool = False
    last: int | None = None  # with `missed` and no records: where the log ends, if known


async def read_after(origin: Origin, cursor: int, limit: int = 1000,
                     parallel: int = 32) -> Batch:
    seqs = await list_seqs(origin, cursor, limit)
    if not seqs:
        # Compaction never removes the newest record, so ours is there unless the log was
        # reset (one HEAD; never a listing of the whole log on an idle poll).
        if cursor > 0:
            try:
                await origin.head(key_of(cursor))
            except NotFound:
                return Batch([], missed=True)
        return Batch([])
    missed = False
    if seqs[0] != cursor + 1:
        # A listing can lag a create; a GET cannot. Still absent: compacted away.
        head = await read_one(origin, cursor + 1)
        if head is None:
            missed = True
        else:
            seqs = [cursor + 1, *[s for s in seqs if s > cursor + 1]]
    slots = asyncio.Semaphore(parallel)

    async def fetch(seq: int) -> Record | None:
        async with slots:
            return await read_one(origin, seq)

    found = await asyncio.gather(*(fetch(s) for s in seqs))
    records: list[Record] = []
    for rec in found:
        expected = (records[-1].seq + 1) if records else (seqs[0])
        if rec is None or rec.seq != expected:
            break  # a hole in the listing: stop at it, the next read fills it in
        records.append(rec)
    return Batch(records, missed)


async def delete_through(origin: Origin, seqs: list[int]) -> None:
    for seq in seqs:
        await origin.delete(key_of(seq))
