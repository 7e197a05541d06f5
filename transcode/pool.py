"""libvips work off the event loop, in worker processes.

Processes, not threads: measured here, two builds on two threads of one process gave
1.69x the throughput of one, two processes 2.0x (libvips and the GIL contend in-process).
A process can also be killed: a decode that outlives its hard deadline, or that crashes
libvips, costs a restarted worker, never a hung or dead ingest.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

import pyvips

from common.errors import ServiceUnavailable, UnprocessableImage

T = TypeVar("T")
log = logging.getLogger("mediacdn.transcode.pool")


def configure_libvips() -> None:
    # The pool supplies the parallelism (one image per core); libvips' own threads and its
    # operation cache would only add contention and memory that never shrinks.
    pyvips.concurrency_set(1)
    pyvips.cache_set_max(0)
    pyvips.cache_set_max_mem(0)


def _init_worker(log_level: str) -> None:
    from common.logs import setup_logging

    setup_logging("ingest/transcode", log_level)  # pyvips logs through logging: JSON too
    configure_libvips()


def _warm() -> int:
    return os.getpid()


class WorkerPool:
    def __init__(self, workers: int, hard_timeout: float, log_level: str = "warning",
                 max_jobs: int = 200) -> None:
        self.workers = workers
        self.max_jobs = max_jobs
        self.log_level = log_level
        self.hard_timeout = hard_timeout
        self._slots = asyncio.Semaphore(workers)
        self._ctx = multiprocessing.get_context("spawn")  # no fork of a running event loop
        self._pool = self._new_pool()
        self.restarts = 0

    def _new_pool(self) -> ProcessPoolExecutor:
        # A worker is replaced after max_jobs images: decoding thousands of images of
        # every size fragments a process's heap (the soak saw +10.7% in 10 minutes), and
        # a fresh worker costs ~0.3 s of start-up per max_jobs images.
        return ProcessPoolExecutor(max_workers=self.workers, mp_context=self._ctx,
                                   initializer=_init_worker, initargs=(self.log_level,),
                                   max_tasks_per_child=self.max_jobs)

    @property
    def busy(self) -> int:
        return self.workers - self._slots._value

    async def start(self) -> None:
        """Spawn every worker now, so the first upload does not pay for it."""
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self._pool, _warm)
                               for _ in range(self.workers)))

    def _restart(self, why: str) -> None:
        log.error("restarting the transcode workers: %s", why)
        old = self._pool
        self._pool = self._new_pool()
        self.restarts += 1
        for proc in list(getattr(old, "_processes", {}).values()):
            if proc.is_alive():
                proc.kill()
        old.shutdown(wait=False, cancel_futures=True)

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        async with self._slots:
            loop = asyncio.get_running_loop()
            pool = self._pool
            try:
                return await asyncio.wait_for(loop.run_in_executor(pool, fn, *args),
                                              self.hard_timeout)
            except TimeoutError:
                if pool is self._pool:
                    self._restart(f"a job ran past {self.hard_timeout:g} s")
                raise UnprocessableImage("the image took too long to process") from None
            except BrokenProcessPool:
                if pool is self._pool:
                    self._restart("a worker died")
                raise ServiceUnavailable("a transcode worker died; retry the upload",
                                         headers={"Retry-After": "1"}) from None

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
