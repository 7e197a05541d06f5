"""The memory tier's fd lifetimes, in process: a retired entry's memfd stays open while a
response holds it and is closed when the last one lets go."""

from __future__ import annotations

import os
import time

from common.hashing import content_id
from edge.entry import Entry
from edge.memory import MemoryTier


def _entry(key: str, size: int) -> Entry:
    body = os.urandom(size)
    return Entry(key, body, content_id(body), "image/webp", time.time())


def _open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_an_evicted_entry_keeps_its_fd_until_its_last_user_lets_go() -> None:
    tier = MemoryTier(max_bytes=1500, max_object_bytes=1500)
    a = _entry("a/w640.webp", 1000)
    tier.put(a)
    hot = tier.get(a.key)
    assert hot is not None and hot.acquire() and hot.acquire()  # two responses
    tier.put(_entry("b/w640.webp", 1000))  # evicts a
    assert tier.get(a.key) is None and hot.retired
    hot.release()
    assert not hot.closed and hot.read() == a.body  # the other response still sends
    hot.release()
    assert hot.closed and not _open(hot.fd)
    assert not hot.acquire()  # nobody may pick it up again
    tier.close()


def test_an_unused_evicted_entry_is_closed_at_once_and_close_closes_held_ones() -> None:
    tier = MemoryTier(max_bytes=1500, max_object_bytes=1500)
    tier.put(_entry("a/w640.webp", 1000))
    first = tier.get("a/w640.webp")
    assert first is not None
    tier.put(_entry("b/w640.webp", 1000))
    assert first.closed and not _open(first.fd)
    second = tier.get("b/w640.webp")
    assert second is not None and second.acquire()
    tier.close()  # shutdown: held or not, every memfd goes
    assert second.closed

