"""The disk tier on a real diskcache: what it reads and writes in diskcache's SQLite table
through its own connection (edge/disk.py, _Table) instead of diskcache's private `_sql`.
The first test pins the table's layout: a diskcache release that changes it fails here,
before an edge evicts or purges the wrong entries."""

from __future__ import annotations

import functools
import sqlite3
import threading
import time
from pathlib import Path

import diskcache

from common.hashing import content_id
from edge.disk import DiskTier, _Table
from edge.entry import Entry
from edge.journal import PURGE, Journal


def _entry(key: str, size: int = 100_000) -> Entry:
    body = key.encode().ljust(size, b".")
    return Entry(key, body, content_id(body), "image/webp", time.time())


def test_diskcache_table_has_the_columns_the_tier_uses(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, 10 << 20)
    tier.put(_entry("a/w320.webp"))
    tier.close()
    db = sqlite3.connect(tmp_path / diskcache.core.DBNAME)
    columns = {row[1] for row in db.execute("PRAGMA table_info(Cache)")}
    assert columns >= _Table.COLUMNS, columns
    [(raw,)] = db.execute("SELECT raw FROM Cache WHERE key = ?", ("a/w320.webp",)).fetchall()
    assert raw == 1  # str keys are stored raw, which every query of ours filters on
    db.close()


def test_eviction_follows_what_was_served_not_what_was_stored(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, 350_000)  # room for three 100 KB entries, not four
    for name in ("a", "b", "c"):
        tier.put(_entry(f"{name}/w320.webp"))
        time.sleep(0.01)
    assert tier.get("a/w320.webp") is not None  # served: a is now the most recent
    assert tier.flush_recency() == 1
    assert tier.put(_entry("d/w320.webp")) == 1
    assert [tier.contains(f"{n}/w320.webp") for n in "abcd"] == [True, False, True, True]
    tier.close()


def test_a_purge_removes_every_variant_of_its_ids_and_nothing_else(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, 10 << 20)
    keys = ["id1/w320.webp", "id1/w640.jpg", "id10/w320.webp", "id2/w320.webp"]
    for key in keys:
        tier.put(_entry(key, 1000))
    assert tier.keys_with_prefix("id1/") == ["id1/w320.webp", "id1/w640.jpg"]
    assert tier.delete_prefixes(["id1/", "id2/"]) == 3
    assert [tier.contains(k) for k in keys] == [False, False, True, False]
    tier.close()


def test_recency_flushes_while_threads_store_and_purge(tmp_path: Path) -> None:
    """The node's I/O threads share the tier: flushes, puts and purges at once neither
    fail nor lose an entry they did not remove."""
    tier = DiskTier(tmp_path, 100 << 20)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(40):
                key = f"t{n}-{i}/w320.webp"
                tier.put(_entry(key, 2000))
                tier.touch(key)
                if i % 5 == 0:
                    tier.flush_recency()
                if i % 7 == 0:
                    tier.delete_prefixes([f"t{n}-{i}/"])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    tier.flush_recency()
    assert tier.count() == 4 * (40 - 6)  # i = 0, 7, 14, 21, 28, 35 purged in each thread
    tier.close()


def test_a_fill_written_while_its_image_is_purged_never_leaves_a_readable_row(
        tmp_path: Path) -> None:
    """The race a purge must win: a fill fetched before the purge is written while the
    purge runs (it publishes, then deletes under the write lock). Here the purge's delete
    gets the lock first and finds no row yet; the fill's write, asked inside its own
    transaction whether a purge came, writes nothing. Checked after the write instead (as
    the edge did), the row was there until an undo, and any read meanwhile put the purged
    bytes back in memory after the purge was answered."""
    journal = Journal(tmp_path / "journal")
    tier = DiskTier(tmp_path / "objects", 10 << 20)
    image_id = content_id(b"purged while written")
    entry = _entry(f"{image_id}/w320.webp")
    token = journal.count  # the fill starts
    # Another writer holds the lock: the fill's write waits for it.
    blocker = sqlite3.connect(tmp_path / "objects" / diskcache.core.DBNAME,
                              isolation_level=None, timeout=10)
    blocker.execute("BEGIN IMMEDIATE")
    result: list[int | None] = []
    writer = threading.Thread(target=lambda: result.append(
        tier.put(entry, functools.partial(journal.dropped_since, image_id, token))))
    writer.start()
    time.sleep(0.3)
    journal.append([(PURGE, image_id)])  # the purge publishes...
    blocker.execute("DELETE FROM Cache WHERE key >= ? AND key < ?",  # ...and deletes first
                    (f"{image_id}/", f"{image_id}/\uffff"))
    blocker.execute("COMMIT")
    writer.join(15)
    assert result == [None]  # not written
    assert not tier.contains(entry.key) and tier.get(entry.key) is None
    # A fill of another image is written as usual meanwhile.
    other = _entry(f"{content_id(b'other')}/w320.webp")
    assert tier.put(other, functools.partial(journal.dropped_since, other.key[:64], token)) == 0
    assert tier.contains(other.key)
    tier.close()
    journal.close()
    blocker.close()
