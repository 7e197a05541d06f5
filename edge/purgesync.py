"""Apply the durable purge log: every record since this node's cursor, before it serves
after a start, then by polling. An edge that was down during a delete never serves the
deleted image again."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

from edge.node import EdgeCache
from origin import keys as K
from origin import purgelog

log = logging.getLogger("mediacdn.edge.purge")


class PurgeSync:
    def __init__(self, cache: EdgeCache, cursor_file: Path, region: str,
                 retention_seconds: float) -> None:
        self.cache = cache
        self.cursor_file = cursor_file
        self.region = region
        self.retention = retention_seconds
        self.cursor = ""
        self.caught_up = False
        self.applied = 0

    def _load_cursor(self) -> str:
        try:
            value = self.cursor_file.read_text().strip()
        except OSError:
            return ""
        return value if value.startswith(K.PURGES_PREFIX) and K.is_valid_key(value) else ""

    def _save_cursor(self, cursor: str) -> None:
        tmp = self.cursor_file.with_suffix(f".{os.getpid()}.tmp")
        try:
            tmp.write_text(cursor)
            os.replace(tmp, self.cursor_file)
        except OSError as exc:
            # The records are applied; only the bookmark is lost, so a restart re-applies
            # them (idempotent). Never a reason to stop serving.
            log.warning("could not save the purge cursor: %s", exc)

    async def start(self) -> None:
        self.cursor = await self.cache.blocking(self._load_cursor)
        if self.cursor and _cursor_age(self.cursor) > self.retention:
            # Records this old may have been compacted away: we cannot know what we
            # missed, so drop everything rather than risk serving a deleted image.
            log.warning("purge cursor older than the log's retention: purging everything")
            await self.cache.purge_all()

    async def sync_once(self) -> int:
        """Apply every record after the cursor; returns how many were applied."""
        applied = 0
        while True:
            records = await purgelog.read_since(self.cache.origin, self.cursor, limit=1000)
            if not records:
                break
            ids: list[str] = []
            purge_all = False
            for r in records:
                if r.applies_to(self.region):
                    purge_all = purge_all or r.all
                    ids.extend(r.ids)
            if purge_all:
                await self.cache.purge_all()
            elif ids:
                await self.cache.purge_ids(sorted(set(ids)))
            self.cursor = records[-1].key
            await self.cache.blocking(self._save_cursor, self.cursor)
            applied += len(records)
        self.caught_up = True
        self.applied += applied
        return applied

    async def poll_forever(self, interval: float) -> None:
        while True:
            try:
                n = await self.sync_once()
                if n:
                    log.info("applied %d purge record(s)", n)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the origin down: keep serving, keep trying
                log.warning("purge log poll failed: %s", exc)
            await asyncio.sleep(interval)


def _cursor_age(cursor: str) -> float:
    try:
        ns = int(cursor[len(K.PURGES_PREFIX):].split("-", 1)[0])
    except ValueError:
        return float("inf")
    return time.time() - ns / 1e9
