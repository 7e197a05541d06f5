"""A child process that ends when the process that started it dies, `kill -9` included.

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


def exit_with_parent(parent: int, sig: signal.Signals = signal.SIGKILL) -> None:
    """Call first thing in the child; `parent` is the pid of the process that started it.
    `sig`: what the child gets then (SIGTERM: a service drains and exits)."""
    if not _death_signal(sig):
        threading.Thread(target=_watch, args=(parent, sig), name="exit-with-parent",
                         daemon=True).start()
    if os.getppid() != parent:  # it died before the signal was armed
        os.kill(os.getpid(), sig)


def _death_signal(sig: signal.Signals) -> bool:
    """Linux: the kernel kills us when our parent ends. Strictly, when the *thread* that
    spawned us ends: pebble spawns from the event loop's thread and from its own manager
    thread, both as long-lived as the pool."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def _watch(parent: int, sig: signal.Signals) -> None:
    # Elsewhere: an orphan is re-parented, so its parent pid changes.
    while os.getppid() == parent:
        time.sleep(POLL_SECONDS)
    os.kill(os.getpid(), sig)
