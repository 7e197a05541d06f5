"""The disk tier: diskcache, LRU, of the node's configured size, kept across restarts.

diskcache's least-recently-used policy turns every `get` into a SQLite write transaction
(measured: 94 us per get vs 26 us, and processes queueing on the write lock). So:
  - reads go through a handle whose *local* policy is "none" (its fast path: one SELECT);
  - recency is recorded in memory on every hit (both tiers) and written in one
    transaction per flush interval, so LRU order still reflects what is served;
  - the writer handle keeps the LRU policy (and its access_time index) but never culls
    inside `set` (cull_limit=0): after a write that crosses the limit we evict the least
    recently used entries one by one, counting them (the evictions metric).
Every method blocks: call them from the node's I/O threads, never on the event loop.

Four things diskcache has no public call for (the least recently used key, a batched
access-time update, the keys under a prefix, an entry's size) go to its SQLite table
through a connection of our own (_Table), not its private `_sql`: the table's layout is
diskcache's on-disk format, stable since 3.0, and tests/test_disk_table.py pins the
columns we rely on.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import diskcache

from common.hashing import content_id
from edge.entry import Entry

# A value file is written before its row is inserted, and the insert may wait up to
# diskcache's SQLite timeout (60 s) for the lock: a file younger than this with no row may
# be another worker's write in flight, not an orphan.
ORPHAN_MIN_AGE = 120.0


LOCK_SECONDS = 10.0


class _Table:
    """Our own connections to diskcache's database, one per thread as diskcache keeps
    them: a thread waiting for SQLite's write lock must hold no lock another thread needs
    to finish its transaction (a purge reads keys inside one). WAL, so reads never wait
    for a writer. Opened again after a fork."""

    COLUMNS = frozenset({"key", "raw", "access_time", "filename", "size"})

    def __init__(self, directory: Path) -> None:
        self.path = directory / diskcache.core.DBNAME
        self._local = threading.local()
        self._opened: list[tuple[int, sqlite3.Connection]] = []  # (pid, connection)
        self._lock = threading.Lock()  # guards _opened only

    def _connection(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None or self._local.pid != os.getpid():
            # isolation_level=None: statements commit on their own unless we BEGIN.
            db = sqlite3.connect(self.path, timeout=LOCK_SECONDS, isolation_level=None,
                                 check_same_thread=False)
            db.execute("PRAGMA synchronous = NORMAL")  # what diskcache runs WAL with
            self._local.db, self._local.pid = db, os.getpid()
            with self._lock:
                self._opened.append((os.getpid(), db))
        return db

    def rows(self, query: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        return self._connection().execute(query, args).fetchall()

    def update_many(self, statement: str, args: list[tuple[object, ...]]) -> None:
        """All in one write transaction (one fsync, the writer lock taken once)."""
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(statement, args)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            opened, self._opened = self._opened, []
        for pid, db in opened:
            if pid == os.getpid():  # a parent's, inherited by a fork, is not ours to close
                db.close()
        self._local = threading.local()


class CorruptEntry(Exception):
    """Cached bytes that no longer hash to their recorded blake3."""


class DiskTier:
    def __init__(self, directory: Path, size_limit: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        settings = {"size_limit": size_limit, "eviction_policy": "least-recently-used",
                    "cull_limit": 0, "statistics": False, "sqlite_mmap_size": 1 << 26}
        # A lock held longer than LOCK_SECONDS (another process, a stalled disk) fails the
        # operation instead of holding an I/O thread for diskcache's default minute: a
        # read is then a miss, a write is skipped, a purge is retried by the follower.
        self._writer = diskcache.Cache(str(directory), timeout=LOCK_SECONDS, **settings)
        self._reader = diskcache.Cache(str(directory), timeout=LOCK_SECONDS, **settings)
        self._reader.reset("eviction_policy", "none", update=False)  # local only: fast gets
        self.directory = directory
        self._table = _Table(directory)
        self._touched: set[str] = set()
        self._lock = threading.Lock()
        self.size_limit = size_limit

    def get(self, key: str) -> Entry | None:
        """The entry, verified against its blake3; None if absent; CorruptEntry if damaged."""
        try:
            found = self._reader.get(key, default=None, tag=True)
        except (sqlite3.Error, OSError, diskcache.Timeout):
            return None
        body, tag = found
        if body is None or tag is None:
            return None
        entry = Entry.from_tag(key, bytes(body), str(tag))
        if content_id(entry.body) != entry.blake3:
            self.delete(key)
            raise CorruptEntry(key)
        self.touch(key)
        return entry

    def get_to_keep(self, key: str, keeps: Callable[[int], bool]) -> Entry | None:
        """get(), if `keeps` the entry's stored size (0 for a value small enough to live in
        the table itself); else None, unread: the front door reads an entry only to keep it
        in memory, and one too large for that is read by whoever answers it."""
        try:
            rows = self._table.rows("SELECT size FROM Cache WHERE key = ? AND raw = 1", (key,))
        except sqlite3.Error:
            return None
        if not rows or not keeps(int(cast(int, rows[0][0]))):
            return None
        return self.get(key)

    def put(self, entry: Entry, dropped: Callable[[], bool] | None = None) -> int | None:
        """Store and evict to the size limit; returns how many entries were evicted, or
        None if `dropped()` said a purge came since the entry was fetched. It is asked
        inside the write transaction: a purge publishes before its delete takes the write
        lock, so either it is seen here, or the row is written before the delete removes
        it. (Checked after the write instead, a purge's delete could run first and the
        purged row stay readable until an undo.)"""
        with self._writer.transact():
            if dropped is not None and dropped():
                return None
            self._writer.set(entry.key, entry.body, tag=entry.tag())
        if self._writer.volume() <= self.size_limit:
            return 0
        return self.evict_to_limit()

    def evict_to_limit(self) -> int:
        """Least recently used first, one at a time (diskcache's `cull()` drops ten per
        round, which empties a small cache)."""
        self.flush_recency()  # so the order reflects what was served until now
        evicted = 0
        lru = "SELECT key FROM Cache WHERE raw = 1 ORDER BY access_time LIMIT 1"
        while self._writer.volume() > self.size_limit:
            rows = self._table.rows(lru)
            if not rows:
                break
            evicted += bool(self._writer.delete(rows[0][0]))
        return evicted

    def touch(self, key: str) -> None:
        self._touched.add(key)  # hot path: a set add; the time is taken at flush

    def flush_recency(self) -> int:
        """Write the access times gathered since the last flush, in one transaction."""
        with self._lock:
            touched, self._touched = self._touched, set()
        if not touched:
            return 0
        at = time.time()
        # diskcache has no public "touch access time"; this is the UPDATE its LRU `get`
        # runs, batched. Keys are str, stored with raw=1.
        self._table.update_many("UPDATE Cache SET access_time = ? WHERE key = ? AND raw = 1",
                                [(at, key) for key in touched])
        return len(touched)

    def reclaim_orphans(self, min_age: float = ORPHAN_MIN_AGE) -> int:
        """Remove value files that no row names, older than `min_age`: what a process
        killed between writing a value file and inserting its row leaves, and diskcache
        never reclaims. Returns how many were removed.

        Not `Cache.check(fix=True)`: it also runs a VACUUM and an integrity check under the
        write lock (2.9 s vs 1.9 s for this on 20,000 entries), and it removes every file
        without a row, including another worker's write in flight.
        """
        known = self._value_files()
        cutoff = time.time() - min_age
        removed = 0
        for dirpath, _, files in os.walk(self.directory):
            for name in files:
                path = os.path.join(dirpath, name)
                if not name.endswith(".val") or os.path.relpath(path, self.directory) in known:
                    continue
                with contextlib.suppress(FileNotFoundError):
                    if os.stat(path).st_mtime < cutoff:
                        os.remove(path)
                        removed += 1
        return removed

    def _value_files(self) -> set[str]:
        # diskcache has no public listing of its files; its table names them (relative paths).
        rows = self._table.rows("SELECT filename FROM Cache WHERE filename IS NOT NULL")
        return {str(r[0]) for r in rows}

    def contains(self, key: str) -> bool:
        return key in self._reader

    def delete(self, key: str) -> bool:
        return bool(self._writer.delete(key))

    def delete_prefix(self, prefix: str) -> int:
        return self.delete_prefixes([prefix])

    def delete_prefixes(self, prefixes: list[str]) -> int:
        """Every entry under any of `prefixes`, in one transaction (a purge of thousands
        of ids must not cost thousands of round trips)."""
        removed = 0
        with self._writer.transact():
            for prefix in prefixes:
                for key in self.keys_with_prefix(prefix):
                    removed += self.delete(key)
        return removed

    def keys_with_prefix(self, prefix: str) -> list[str]:
        rows = self._table.rows("SELECT key FROM Cache WHERE raw = 1 AND key >= ? AND key < ?",
                                (prefix, prefix + "\uffff"))
        return [str(r[0]) for r in rows]

    def clear(self) -> int:
        return int(self._writer.clear())

    def count(self) -> int:
        return len(self._reader)

    def volume(self) -> int:
        return int(self._reader.volume())

    def close(self) -> None:
        # A full or broken disk: recency is advisory, and closing must not fail.
        with contextlib.suppress(sqlite3.Error, OSError):
            self.flush_recency()
        self._table.close()
        self._reader.close()
        self._writer.close()


class NoDiskTier(DiskTier):
    """Stands in when the cache directory cannot be opened (unwritable, full, broken): the
    node serves from upstream without caching on disk, and says so in logs and metrics."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.size_limit = 0
        self._touched = set()
        self._lock = threading.Lock()

    def get(self, key: str) -> Entry | None:
        return None

    def get_to_keep(self, key: str, keeps: Callable[[int], bool]) -> Entry | None:
        return None

    def put(self, entry: Entry, dropped: Callable[[], bool] | None = None) -> int | None:
        raise OSError(f"no disk tier: {self.reason}")

    def evict_to_limit(self) -> int:
        return 0

    def reclaim_orphans(self, min_age: float = ORPHAN_MIN_AGE) -> int:
        return 0

    def flush_recency(self) -> int:
        self._touched = set()
        return 0

    def contains(self, key: str) -> bool:
        return False

    def delete(self, key: str) -> bool:
        return False

    def delete_prefixes(self, prefixes: list[str]) -> int:
        return 0

    def keys_with_prefix(self, prefix: str) -> list[str]:
        return []

    def clear(self) -> int:
        return 0

    def count(self) -> int:
        return 0

    def volume(self) -> int:
        return 0

    def close(self) -> None:
        pass
