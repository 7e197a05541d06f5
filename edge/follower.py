"""The node's follower of the invalidation log: one per edge node (its worker 0).

It follows ingest's ordered record stream over one WebSocket (`/_internal/purges/stream`):
records are pushed as they land and the node sends back the cursor it has applied, so a
purge costs ingest one write and one small read per node, and an idle fleet costs the origin
nothing per edge. Catching up after a start reads pages (`GET /_internal/purges?after=N`).
While ingest cannot be reached it reads the log at the origin instead, slowly.
Either way records are applied strictly in sequence, each complete on the node (every
worker, both tiers) before the cursor moves past it; the cursor is kept on disk, so a node
that was down applies everything it missed before it serves again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from common.auth import KeyRing
from common.errors import MediaCDNError
from edge.journal import ORIGIN_DOWN, ORIGIN_OK
from edge.node import EdgeCache
from origin import purgelog
from origin.purgelog import Batch, Record

log = logging.getLogger("mediacdn.edge.purge")
ORIGIN_PROBE_SECONDS = 5.0
ORIGIN_BATCH = 200  # records read from the origin's log per deadline
HUB_RETRY_SECONDS = 1.0
BEAT_SECONDS = 1.0
BEAT_GRACE_SECONDS = 5  # media is refused once the follower's heartbeat is this old
GONE = 4410  # ingest's close code: it no longer holds the records after our cursor


@dataclass(frozen=True)
class FollowerSettings:
    node: str
    region: str
    hub_url: str  # ingest
    keys: KeyRing  # the first usable admin token is what ingest asks for (read per request)
    follow_seconds: float  # the stream's heartbeat: a silent ingest is left after 1.5x
    fallback_seconds: float  # origin polling while ingest is away
    timeout: float  # one request to ingest or the origin
    probe_seconds: float  # the origin, while it answers: only if nothing proved it this long


class Follower:
    def __init__(self, cache: EdgeCache, settings: FollowerSettings, cursor_file: Path,
                 session: aiohttp.ClientSession, run: int) -> None:
        self.cache = cache
        self.s = settings
        self.cursor_file = cursor_file
        self.session = session
        self.run = run
        self.cursor = -1  # -1: unknown (no cursor kept): drop everything once, then follow
        self.applied = 0
        self.hub_last = 0  # the newest record ingest has told us about
        self.via = "none"
        self._next_origin_read = 0.0
        self._refused_key = ""

    # -- the cursor on disk ------------------------------------------------------------
    def _load_cursor(self) -> int:
        try:
            text = self.cursor_file.read_text().strip()
        except OSError:
            return -1
        return int(text) if text.isdigit() else -1  # an older format: unknown

    def _save_cursor(self, seq: int) -> None:
        tmp = self.cursor_file.with_suffix(f".{os.getpid()}.tmp")
        try:
            tmp.write_text(str(seq))
            os.replace(tmp, self.cursor_file)
        except OSError as exc:
            # The records are applied; only the bookmark is lost, so a restart re-applies
            # them (idempotent). Never a reason to stop serving.
            log.warning("could not save the purge cursor: %s", exc)

    # -- applying ----------------------------------------------------------------------
    async def apply(self, batch: Batch) -> int:
        """Apply a batch, complete on the node, then move the cursor. If anything fails
        (a locked or broken disk), the node stops serving media until a retry succeeds: its
        hot tiers are already dropped, but the disk may still hold the rows."""
        try:
            return await self._apply(batch)
        except BaseException:
            self.cache.journal.set_ready(0)
            raise

    async def _apply(self, batch: Batch) -> int:
        if batch.missed:
            log.warning("purge records after %d are gone from the log (compacted or reset): "
                        "dropping the whole cache", self.cursor)
            await self.cache.purge_all()
        if not batch.records:
            if batch.missed:
                last = batch.last
                if last is None:
                    async with asyncio.timeout(self.s.timeout):
                        last = await purgelog.last_seq(self.cache.origin)
                await self._advance(last)
            return 0
        mine = [r for r in batch.records if r.applies_to(self.s.region)]
        if any(r.all for r in mine):
            await self.cache.purge_all()
        else:
            drop = sorted({i for r in mine if r.kind != "announce" for i in r.ids})
            new = sorted({i for r in mine if r.kind == "announce" for i in r.ids} - set(drop))
            if drop:
                await self.cache.purge_ids(drop)
            if new:
                await self.cache.invalidation.announce(new)
        await self._advance(batch.records[-1].seq)
        self.applied += len(batch.records)
        return len(batch.records)

    async def _advance(self, seq: int) -> None:
        self.cursor = seq
        self.cache.journal.set_cursor(seq)
        await self.cache.blocking(self._save_cursor, seq)

    # -- reading: ingest first, the origin when ingest is away -------------------------
    async def from_hub(self) -> Batch:
        """A page of records after the cursor from ingest, without waiting.
        Raises on any failure (the caller then reads the origin)."""
        params = {"after": str(self.cursor), "node": self.s.node, "region": self.s.region}
        headers = self._auth()
        timeout = aiohttp.ClientTimeout(total=self.s.timeout)
        async with self.session.get(f"{self.s.hub_url}/_internal/purges", params=params,
                                    headers=headers, timeout=timeout) as r:
            if r.status == 410:  # ingest no longer holds that range in memory
                return await self.from_origin()
            if r.status == 401:
                self._refused()
            if r.status != 200:
                raise OSError(f"ingest answered {r.status}")
            self._refused_key = ""
            body: dict[str, Any] = await r.json()
        batch = self._checked(body)
        return await self.from_origin() if batch is None else batch

    def _auth(self) -> dict[str, str]:
        # Read at each request: after a reload (SIGHUP) the next poll sends the new token.
        token = self.s.keys.admin_token()
        return {"Authorization": f"Bearer {token}"} if token else {}

    def _refused(self) -> None:
        name = self.s.keys.admin_token_name()
        if name != self._refused_key:  # once per key, not once per retry
            self._refused_key = name
            log.warning("ingest refused this edge's admin token %s (revoked?): following "
                        "the origin's log until a reload (SIGHUP) brings one it accepts",
                        name, extra={"key": name})

    async def from_origin(self) -> Batch:
        # Small batches, each under its own deadline: a slow origin still makes progress
        # (one batch of 1,000 reads under one deadline could time out forever).
        async with asyncio.timeout(self.s.timeout):
            if self.cursor < 0:
                return Batch([], missed=True)
            batch = await purgelog.read_after(self.cache.origin, self.cursor, ORIGIN_BATCH)
        self.via = "origin"
        self._next_origin_read = time.monotonic() + self.s.fallback_seconds
        return batch

    async def step(self) -> int:
        """One catch-up page read and applied; the first read of an unknown cursor drops
        everything."""
        if self.cursor < 0:
            # No cursor kept (a new cache, or an older version's): we cannot know what
            # this cache missed. Learn the newest number first, then drop everything: a
            # record landing in between is applied after, not skipped.
            last = await self._last_known()
            await self.apply(Batch([], missed=True, last=last))
            return 0
        try:
            batch = await self.from_hub()
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError, KeyError) as exc:
            log.debug("ingest's purge log unavailable (%s): reading the origin", exc)
            batch = await self.from_origin()
        return await self.apply(batch)

    async def follow(self) -> None:
        """Follow ingest's stream until it ends; read the origin when ingest cannot be
        reached (at most every fallback_seconds) or no longer holds what we lack."""
        try:
            gone = await self._stream()
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError, KeyError) as exc:
            if time.monotonic() < self._next_origin_read:
                # Ingest away: try it again soon, but the origin's log only every
                # fallback_seconds (its listing is what a fleet must not multiply).
                await asyncio.sleep(HUB_RETRY_SECONDS)
                return
            log.debug("ingest's purge stream unavailable (%s): reading the origin", exc)
            gone = True
        if gone:
            n = await self.apply(await self.from_origin())
            if n:
                log.info("applied %d purge record(s) up to %d (origin)", n, self.cursor)

    async def _stream(self) -> bool:
        """Apply what the stream pushes, acknowledging each message once it is applied.
        Returns True when ingest no longer holds the records we lack (read the origin)."""
        params = {"after": str(self.cursor), "node": self.s.node, "region": self.s.region}
        try:
            ws = await self.session.ws_connect(
                f"{self.s.hub_url}/_internal/purges/stream", params=params,
                headers=self._auth(), heartbeat=self.s.follow_seconds, max_msg_size=0,
                autoping=True, timeout=aiohttp.ClientWSTimeout(ws_close=self.s.timeout))
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status == 401:
                self._refused()
            raise
        self._refused_key = ""
        async with ws:
            async for msg in ws:
                if msg.type is not aiohttp.WSMsgType.BINARY:
                    break
                body: dict[str, Any] = json.loads(msg.data)
                batch = self._checked(body)
                if batch is None:
                    return True
                n = await self.apply(batch)
                if n:
                    log.info("applied %d purge record(s) up to %d", n, self.cursor)
                await ws.send_str(str(self.cursor))
            if ws.close_code == GONE:
                return True
            raise OSError(f"ingest closed the purge stream ({ws.close_code})")

    def _checked(self, body: dict[str, Any]) -> Batch | None:
        """The records of one answer, checked against the cursor; None: read the origin."""
        self.hub_last = int(body.get("last", 0))
        records = [_record(raw) for raw in body.get("records", [])]
        if self.cursor >= 0 and self.hub_last < self.cursor:
            return None  # ingest knows less than we do: ask the source
        if records and self.cursor >= 0 and records[0].seq != self.cursor + 1:
            raise OSError("ingest's stream skipped records")  # never expected: use the origin
        self.via = "ingest"
        return Batch(records)

    async def _last_known(self) -> int:
        """The newest record's number: from ingest (`after=-1` asks only that), else the
        origin."""
        headers = self._auth()
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError, ValueError):
            async with self.session.get(
                    f"{self.s.hub_url}/_internal/purges", headers=headers,
                    params={"after": "-1", "node": self.s.node, "region": self.s.region},
                    timeout=aiohttp.ClientTimeout(total=self.s.timeout)) as r:
                if r.status == 200:
                    self.hub_last = int((await r.json())["last"])
                    return self.hub_last
        async with asyncio.timeout(self.s.timeout):
            return await purgelog.last_seq(self.cache.origin)

    async def catch_up(self) -> None:
        """Before the node serves media: everything up to the newest record."""
        self.cursor = await self.cache.blocking(self._load_cursor)
        while True:
            n = await self.step()
            if n == 0 and (self.via != "ingest" or self.cursor >= self.hub_last):
                break
        self.cache.journal.beat(int(time.time()))
        self.cache.journal.set_ready(self.run)
        log.info("caught up with the purge log at record %d (via %s)", self.cursor, self.via)

    async def run_forever(self) -> None:
        while True:
            try:
                if not self.caught_up:
                    await self.catch_up()
                    continue
                await self.follow()
            except asyncio.CancelledError:
                raise
            except (MediaCDNError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                log.warning("purge log unreachable (%s): retrying", exc)
                await asyncio.sleep(min(1.0, self.s.fallback_seconds))
            except Exception as exc:  # a locked or broken disk: never stop following
                log.error("applying purge records failed (%s: %s): media refused until a "
                          "retry succeeds", type(exc).__name__, exc)
                await asyncio.sleep(1.0)

    async def beat_forever(self, following: asyncio.Task[None]) -> None:
        """The node's other workers serve media only while this beats: a follower that
        died or a worker 0 that stalled must not leave them serving what it no longer
        purges."""
        while not following.done():
            self.cache.journal.beat(int(time.time()))
            await asyncio.sleep(BEAT_SECONDS)
        log.error("the purge follower stopped: this node refuses media")

    @property
    def caught_up(self) -> bool:
        return self.cache.journal.ready_run == self.run

    async def probe_origin(self) -> None:
        """Readiness without an origin request per probe: this probe's last word, shared
        with every worker through the journal (and fills update it as they go)."""
        try:
            async with asyncio.timeout(self.s.timeout):
                await self.cache.origin.ping()
            state = ORIGIN_OK
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure is "down", with the reason in the log
            log.debug("origin probe failed: %s", exc)
            state = ORIGIN_DOWN
        self.cache.journal.set_origin_state(state, int(time.time()))

    async def probe_origin_forever(self) -> None:
        """Every few seconds while the origin is down (to see it come back); while it
        answers, only when neither real traffic nor a probe proved it for probe_seconds."""
        while True:
            await asyncio.sleep(ORIGIN_PROBE_SECONDS)
            state, at = self.cache.journal.origin_state()
            if state == ORIGIN_OK and time.time() - at < self.s.probe_seconds:
                continue
            await self.probe_origin()


def _record(raw: Any) -> Record:
    if not isinstance(raw, dict) or not isinstance(raw.get("seq"), int):
        raise ValueError("a record without a sequence number")
    try:
        return Record.from_json(raw, raw["seq"])
    except (ValueError, TypeError):
        return Record.damaged(raw["seq"])
