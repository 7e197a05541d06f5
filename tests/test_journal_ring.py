"""The node's purge journal (edge/journal.py) read lock-free while another worker appends:
what a reader is told was purged must be what was purged."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

from common.hashing import content_id
from edge.journal import ANNOUNCE, ENTRY, HEADER, PURGE, RING, Journal


def test_an_append_in_progress_never_hides_a_purge_from_a_reader(tmp_path: Path) -> None:
    """A fill took its token, then its image was purged (position 0), then the ring filled
    up with uploads (no overwrite yet: the fill may still ask). Another worker's append
    is writing its entries (the count moves last): the slot of position 0 now holds the
    new entry, the count not yet. Before: the reader checked the count only, took the new
    entry for the old one, and told the fill (inside its disk write, EdgeCache.store) that
    its image was not purged: the purged bytes were written after the purge."""
    path = tmp_path / "journal"
    journal = Journal(path)
    purged, other = content_id(b"purged"), content_id(b"other")
    token = journal.count  # the fill starts
    journal.append([(PURGE, purged)])
    for chunk in (RING // 2, RING // 2 - 1):  # appends are at most RING // 2 entries
        journal.append([(ANNOUNCE, content_id(os.urandom(8))) for _ in range(chunk)])
    assert journal.count == token + RING
    assert journal.dropped_since(purged, token)
    # Another worker's append of one purge, its entry written, its count not yet.
    fd = os.open(path, os.O_RDWR)
    try:
        with mmap.mmap(fd, HEADER + RING * ENTRY) as other_worker:
            at = HEADER + (journal.count % RING) * ENTRY
            other_worker[at:at + ENTRY] = bytes([PURGE]) + bytes(7) + bytes.fromhex(other)
            assert journal.dropped_since(purged, token)  # was False
            entries = journal.read(token, journal.count)
            assert entries is None or entries[0] == (PURGE, purged)
    finally:
        os.close(fd)
        journal.close()
