"""libvips work off the event loop, in worker processes.

Processes, not threads: measured here, two builds on two threads of one process gave
1.69x the throughput of one, two processes 2.0x (libvips and the GIL contend in-process).
A process can also be killed: a decode that outlives its hard deadline, or that crashes
libvips, costs that one worker, never a hung or dead ingest, nor the job beside it.

pebble's ProcessPool does the process work: a per-job timeout that stops only the worker
running that job, cancellation of a running job, workers replaced after `max_jobs` jobs.
What stays here is what an upload needs on top: a bounded wait for a free worker, answers
in the project's errors, and a new pool when pebble's is broken.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

import pyvips
from pebble import ProcessExpired, ProcessPool

from common.errors import ServiceUnavailable, UnprocessableImage
from transcode.orphan import exit_with_parent

T = TypeVar("T")
log = logging.getLogger("mediacdn.transcode.pool")

# Beyond its hard timeout, how long a job may take to be started (a worker being replaced)
# before the pool is taken for stuck and replaced. Never reached in normal operation.
STUCK_GRACE = 15.0
RETRY_AFTER = "2"  # seconds: a worker frees up within a job or two


def configure_libvips() -> None:
    # The pool supplies the parallelism (one image per core); libvips' own threads and its
    # operation cache would only add contention and memory that never shrinks.
    pyvips.concurrency_set(1)
    pyvips.cache_set_max(0)
    pyvips.cache_set_max_mem(0)


def _init_worker(log_level: str, parent: int) -> None:
    # pebble stops an overrunning worker with SIGTERM, then SIGKILL 3 s later; its handler
    # cannot run while libvips is inside a C call, and the pool's channel stays locked
    # meanwhile, holding up every other worker's answer (measured: +2 s on the job beside).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    exit_with_parent(parent)
    from common.logs import setup_logging

    setup_logging("ingest/transcode", log_level)  # pyvips logs through logging: JSON too
    configure_libvips()


def _warm() -> int:
    return os.getpid()


class WorkerPool:
    def __init__(self, workers: int, hard_timeout: float, log_level: str = "warning",
                 max_jobs: int = 200, max_waiting: int = 16, wait_seconds: float = 10.0) -> None:
        self.workers = workers
        self.max_jobs = max_jobs
        self.log_level = log_level
        self.hard_timeout = hard_timeout
        self.max_waiting = max_waiting
        self.wait_seconds = wait_seconds
        self.busy = 0
        self.waiting = 0
        self.restarts = 0  # workers replaced after a failure (killed, died, or a new pool)
        self._slots = asyncio.Semaphore(workers)
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPool:
        # A worker is replaced after max_jobs images: decoding thousands of images of
        # every size fragments a process's heap (the soak saw +10.7% in 10 minutes), and
        # a fresh worker costs ~0.3 s of start-up per max_jobs images.
        return ProcessPool(max_workers=self.workers, max_tasks=self.max_jobs,
                           initializer=_init_worker, initargs=(self.log_level, os.getpid()),
                           context=multiprocessing.get_context("spawn"))  # no fork of a loop

    async def start(self) -> None:
        """Spawn every worker now, so the first upload does not pay for it."""
        await asyncio.gather(*(self.run(_warm) for _ in range(self.workers)))

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        await self._acquire()
        self.busy += 1
        try:
            return await self._execute(fn, args)
        finally:
            self.busy -= 1
            self._slots.release()

    async def _acquire(self) -> None:
        """A free worker, or 503 at once when too many wait already, or after wait_seconds."""
        if self._slots.locked() and self.waiting >= self.max_waiting:
            raise ServiceUnavailable(f"every transcode worker is busy and {self.waiting} "
                                     "uploads wait already; retry later",
                                     headers={"Retry-After": RETRY_AFTER})
        self.waiting += 1
        try:
            async with asyncio.timeout(self.wait_seconds):
                await self._slots.acquire()
        except TimeoutError:
            raise ServiceUnavailable(f"no transcode worker was free within "
                                     f"{self.wait_seconds:g} s; retry later",
                                     headers={"Retry-After": RETRY_AFTER}) from None
        finally:
            self.waiting -= 1

    async def _execute(self, fn: Callable[..., T], args: tuple[object, ...]) -> T:
        pool = self._current_pool()
        try:
            job = pool.schedule(fn, args, timeout=self.hard_timeout)
        except RuntimeError:  # it broke since the check: once more, on a new pool
            self._replace(pool, "the pool broke")
            pool = self._pool
            job = pool.schedule(fn, args, timeout=self.hard_timeout)
        try:
            async with asyncio.timeout(self.hard_timeout + STUCK_GRACE) as stuck:
                # Cancelling this await cancels the job: pebble then stops its worker.
                return await asyncio.wrap_future(job)
        except TimeoutError:
            if stuck.expired():
                self._replace(pool, "a job was neither started nor stopped in time")
                raise ServiceUnavailable("the transcode workers are stuck; retry the upload",
                                         headers={"Retry-After": RETRY_AFTER}) from None
            self.restarts += 1  # pebble stopped that worker and starts another
            log.error("a transcode job ran past %g s: its worker was killed", self.hard_timeout)
            raise UnprocessableImage("the image took too long to process") from None
        except (ProcessExpired, BrokenProcessPool) as exc:
            if isinstance(exc, ProcessExpired):
                self.restarts += 1
                log.error("a transcode worker died (exit code %s)", exc.exitcode)
            else:
                self._replace(pool, "the pool broke")
            raise ServiceUnavailable("a transcode worker died; retry the upload",
                                     headers={"Retry-After": RETRY_AFTER}) from None

    def _current_pool(self) -> ProcessPool:
        # pebble gives up on the whole pool when a worker dies while no job is running
        # (an idle worker killed by the OOM killer or an operator): start a new one.
        if not self._pool.active:
            self._replace(self._pool, "a worker died while idle")
        return self._pool

    def _replace(self, old: ProcessPool, why: str) -> None:
        if old is not self._pool:
            return  # another job replaced it already
        log.error("replacing the transcode pool: %s", why)
        self.restarts += 1
        self._pool = self._new_pool()
        old.stop()  # type: ignore[no-untyped-call]  # pebble leaves it unannotated
        # join() stops its workers and threads; it blocks, so not on the event loop.
        threading.Thread(target=old.join, name="transcode-pool-stop", daemon=True).start()

    def close(self) -> None:
        """Stop every worker (blocking: up to pebble's join of its threads)."""
        self._pool.stop()  # type: ignore[no-untyped-call]
        self._pool.join()
