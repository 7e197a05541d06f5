"""libvips work off the event loop: a thread pool sized from config behind a semaphore."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import pyvips

T = TypeVar("T")


def configure_libvips() -> None:
    # Our pool supplies the parallelism (one image per core); libvips' own threads and its
    # operation cache would only add contention and memory that never shrinks.
    pyvips.concurrency_set(1)
    pyvips.cache_set_max(0)
    pyvips.cache_set_max_mem(0)
    os.environ.setdefault("MALLOC_ARENA_MAX", "2")


class WorkerPool:
    def __init__(self, threads: int) -> None:
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="vips")
        self._slots = asyncio.Semaphore(threads)
        self.threads = threads

    @property
    def busy(self) -> int:
        return self.threads - self._slots._value

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        async with self._slots:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
