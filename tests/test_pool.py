"""The transcode worker pool survives a worker that dies and a job that never ends."""

from __future__ import annotations

import os
import time

import pytest

from common.errors import ServiceUnavailable, UnprocessableImage
from transcode.pool import WorkerPool


def _double(x: int) -> int:
    return 2 * x


def _die(_: int) -> int:
    os._exit(1)


def _hang(_: int) -> int:
    time.sleep(60)
    return 0


async def test_a_dead_worker_costs_one_answer_not_the_pool() -> None:
    pool = WorkerPool(1, hard_timeout=30)
    await pool.start()
    try:
        assert await pool.run(_double, 21) == 42
        with pytest.raises(ServiceUnavailable):
            await pool.run(_die, 0)
        assert await pool.run(_double, 2) == 4
        assert pool.restarts == 1
    finally:
        pool.close()


async def test_a_job_past_the_hard_deadline_is_killed() -> None:
    pool = WorkerPool(1, hard_timeout=1.0)
    await pool.start()
    try:
        t0 = time.monotonic()
        with pytest.raises(UnprocessableImage):
            await pool.run(_hang, 0)
        assert time.monotonic() - t0 < 10
        assert await pool.run(_double, 5) == 10
    finally:
        pool.close()


def _pid(_: int) -> int:
    return os.getpid()


async def test_a_worker_is_replaced_after_max_jobs() -> None:
    pool = WorkerPool(1, hard_timeout=30, max_jobs=2)
    try:
        pids = [await pool.run(_pid, 0) for _ in range(5)]
        assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]
        assert pool.restarts == 0  # a planned replacement, not a failure
    finally:
        pool.close()
