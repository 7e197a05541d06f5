"""Where big upload bodies are spooled: one directory per ingest process.

Each process holds an exclusive flock on its own directory for as long as it lives, and the
kernel drops it when the process dies, `kill -9` included. So at start, a directory whose
lock can be taken belongs to a dead process: its files are the bodies of uploads that were
cut off, and are removed.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

PREFIX = "mediacdn-spool-"


@dataclass
class SpoolDir:
    path: Path
    _fd: int  # holds the lock

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        os.close(self._fd)


SPOOL_DIR = web.AppKey("spool_dir", SpoolDir)


def claim(parent: Path | None) -> tuple[SpoolDir, int]:
    """This process's directory under `parent` (None: the temp dir), and how many
    directories of dead processes were removed first. Blocking: call it in a thread."""
    parent = Path(parent or tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    removed = remove_orphans(parent)
    # Made and locked under a name that remove_orphans skips, then renamed: another
    # process starting at the same moment never sees it unlocked.
    staging = Path(tempfile.mkdtemp(prefix="." + PREFIX, dir=parent))
    fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    path = staging.with_name(staging.name[1:])
    os.rename(staging, path)
    return SpoolDir(path, fd), removed


def remove_orphans(parent: Path) -> int:
    removed = 0
    for path in parent.glob(PREFIX + "*"):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:  # gone already, or not a directory
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # its process is alive
            os.close(fd)
            continue
        try:
            shutil.rmtree(path, ignore_errors=True)  # while the lock is ours
            removed += 1
        finally:
            os.close(fd)
    return removed
