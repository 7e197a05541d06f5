"""What the worker processes of one edge node share about invalidation: a small mmap'd file.

    header (64 bytes): count, ready_run, origin_state, origin_checked, cursor, heartbeat
                       (u64 each)
    ring of RING entries of 40 bytes: kind (1 byte), 7 spare, id (32 bytes)

Whoever purges on the node (the node's log follower, or a worker answering an admin purge)
appends the ids it drops, under an flock, and bumps `count`. Every worker compares `count`
with what it last applied at the start of each request (one memory read) and drops exactly
those ids from its hot tier, its negative cache and its in-flight fills. A worker that fell
more than RING - MAX_APPEND entries behind cannot know what it missed and drops everything.

`ready_run` says the node's follower has caught up with the log in this run of the node
(each run has its own token), `heartbeat` that it is still alive (a stalled or dead
follower must not leave its siblings serving what it no longer purges), `origin_state` what
the follower's probe last saw of the origin, `cursor` the last log record applied.

The file lives in the node's cache directory; if that is unusable, in a directory shared by
the node's workers under the system temp dir, so the workers still share one journal.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import mmap
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

RING = 65536
MAX_APPEND = RING // 2  # more at once is written as one ALL
HEADER = 64
ENTRY = 40
PURGE, ALL, ANNOUNCE = 1, 2, 3
ORIGIN_UNKNOWN, ORIGIN_OK, ORIGIN_DOWN = 0, 1, 2
_COUNT, _READY, _ORIGIN, _CHECKED, _CURSOR, _BEAT = range(6)


def _fallback_path(path: Path) -> Path:
    digest = hashlib.blake2b(str(path.resolve()).encode(), digest_size=8).hexdigest()
    return Path(tempfile.gettempdir()) / f"mediacdn-journal-{digest}" / path.name


class Journal:
    def __init__(self, path: Path) -> None:
        size = HEADER + RING * ENTRY
        self._fd = -1
        for candidate in (path, _fallback_path(path)):
            try:
                candidate.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(candidate, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                if os.fstat(self._fd).st_size < size:
                    os.ftruncate(self._fd, size)
                self._map = mmap.mmap(self._fd, size)
                break
            except OSError:
                if self._fd >= 0:
                    os.close(self._fd)
                    self._fd = -1
        else:  # nowhere to share it: one worker still works with private memory
            self._map = mmap.mmap(-1, size)
        self._head = memoryview(self._map)[:HEADER].cast("Q")

    # -- header (plain u64 loads and stores: aligned, so never torn) ---------------------
    @property
    def count(self) -> int:
        return int(self._head[_COUNT])

    @property
    def ready_run(self) -> int:
        return int(self._head[_READY])

    def set_ready(self, run: int) -> None:
        self._head[_READY] = run

    def origin_state(self) -> tuple[int, int]:
        return int(self._head[_ORIGIN]), int(self._head[_CHECKED])

    def set_origin_state(self, state: int, at: int) -> None:
        self._head[_CHECKED] = at
        self._head[_ORIGIN] = state

    def serving(self, run: int, now: int, grace: int = 5) -> bool:
        """Media may be served: the follower caught up in this run and is alive."""
        return self._head[_READY] == run and now - self._head[_BEAT] <= grace

    @property
    def heartbeat(self) -> int:
        return int(self._head[_BEAT])

    def beat(self, now: int) -> None:
        self._head[_BEAT] = now

    @property
    def cursor(self) -> int:
        return int(self._head[_CURSOR])

    def set_cursor(self, seq: int) -> None:
        self._head[_CURSOR] = seq

    # -- entries -----------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if self._fd < 0:
            yield
            return
        fcntl.flock(self._fd, fcntl.LOCK_EX)  # blocking: call from a thread
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def append(self, entries: list[tuple[int, str]]) -> int:
        """Write (kind, id) entries; returns the new count. Blocking (flock)."""
        if len(entries) > MAX_APPEND:
            entries = [(ALL, "")]  # more than a reader could keep up with: say "all"
        with self._locked():
            n = self.count
            for i, (kind, image_id) in enumerate(entries):
                at = HEADER + ((n + i) % RING) * ENTRY
                raw = bytes.fromhex(image_id) if image_id else bytes(32)
                self._map[at:at + ENTRY] = bytes([kind]) + bytes(7) + raw
            # The count moves last: a reader never sees an entry before it is written.
            self._head[_COUNT] = n + len(entries)
            return n + len(entries)

    def read(self, start: int, end: int) -> list[tuple[int, str]] | None:
        """Entries [start, end); None if some were overwritten (the reader fell behind).
        An append writes its entries (up to MAX_APPEND) before it moves the count: a
        reader more than RING - MAX_APPEND behind the count may be reading slots being
        rewritten, and cannot tell."""
        if end - start > RING - MAX_APPEND:
            return None
        out = []
        for n in range(start, end):
            at = HEADER + (n % RING) * ENTRY
            raw = self._map[at:at + ENTRY]
            out.append((raw[0], raw[8:].hex() if raw[0] != ALL else ""))
        if self.count - start > RING - MAX_APPEND:  # (being) overwritten while we read
            return None
        return out

    def dropped_since(self, image_id: str, start: int) -> bool:
        """Whether an entry from position `start` on drops `image_id` (a purge of it, or
        of everything; True too if they were overwritten). Lock-free: an I/O thread asks
        this inside the disk tier's write transaction (EdgeCache.store)."""
        entries = self.read(start, self.count)
        if entries is None:
            return True
        return any(kind != ANNOUNCE and (kind != PURGE or found == image_id)
                   for kind, found in entries)

    def close(self) -> None:
        self._head.release()
        self._map.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
