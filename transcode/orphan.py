"""A worker process that exits when the process that started it dies, `kill -9` included.

Without this, a killed ingest leaves its transcode workers waiting forever on a pipe they
hold both ends of, and with them multiprocessing's resource tracker (~80 MB, measured).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
POLL_SECONDS = 1.0


def exit_with_parent(parent: int) -> None:
    """Call first thing in the child; `parent` is the pid of the process that started it."""
    if not _death_signal():
        threading.Thread(target=_watch, args=(parent,), name="exit-with-parent",
                         daemon=True).start()
    if os.getppid() != parent:  # it died before the signal was armed
        os._exit(1)


def _death_signal() -> bool:
    """Linux: the kernel kills us when our parent ends. Strictly, when the *thread* that
    spawned us ends: pebble spawns from the event loop's thread and from its own manager
    thread, both as long-lived as the pool."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def _watch(parent: int) -> None:
    # Elsewhere: an orphan is re-parented, so its parent pid changes.
    while os.getppid() == parent:
        time.sleep(POLL_SECONDS)
    os._exit(1)
