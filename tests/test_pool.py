"""The transcode worker pool survives a worker that dies and a job that never ends."""

from __future__ import annotations

import asyncio
import os
import signal
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


def _nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


async def test_a_job_past_the_deadline_kills_only_its_own_worker() -> None:
    pool = WorkerPool(2, hard_timeout=2.0)
    await pool.start()
    try:
        hung = asyncio.ensure_future(pool.run(_hang, 0))
        await asyncio.sleep(1.0)
        # Runs from 1 s to 2.5 s: within its own deadline, and across the hung job's kill.
        assert await pool.run(_nap, 1.5) == 1.5
        with pytest.raises(UnprocessableImage):
            await hung
        assert pool.restarts == 1
    finally:
        pool.close()


async def test_waiting_for_a_worker_is_bounded_in_count() -> None:
    pool = WorkerPool(1, hard_timeout=30, max_waiting=2, wait_seconds=20)
    await pool.start()
    try:
        running = asyncio.ensure_future(pool.run(_nap, 2.0))
        await asyncio.sleep(0.2)
        queued = [asyncio.ensure_future(pool.run(_double, i)) for i in range(2)]
        await asyncio.sleep(0.2)
        t0 = time.monotonic()
        refused = await asyncio.gather(*(pool.run(_double, i) for i in range(50)),
                                       return_exceptions=True)
        assert time.monotonic() - t0 < 1.5  # answered at once, while the worker is busy
        assert all(isinstance(r, ServiceUnavailable) for r in refused), refused
        assert all(int(r.headers["Retry-After"]) >= 1 for r in refused  # type: ignore[union-attr]
                   )
        async with asyncio.timeout(20):  # the ones inside the bound still run
            assert await running == 2.0
            assert await asyncio.gather(*queued) == [0, 2]
    finally:
        pool.close()


async def test_waiting_for_a_worker_has_a_deadline() -> None:
    pool = WorkerPool(1, hard_timeout=30, max_waiting=8, wait_seconds=0.5)
    await pool.start()
    try:
        running = asyncio.ensure_future(pool.run(_nap, 3.0))
        await asyncio.sleep(0.2)
        t0 = time.monotonic()
        with pytest.raises(ServiceUnavailable) as info:
            async with asyncio.timeout(10):
                await pool.run(_double, 1)
        assert time.monotonic() - t0 < 2.5  # gave up near wait_seconds, not after the job
        assert info.value.headers["Retry-After"]
        assert await running == 3.0
    finally:
        pool.close()


async def test_a_cancelled_job_frees_its_worker() -> None:
    pool = WorkerPool(1, hard_timeout=30)
    await pool.start()
    try:
        job = asyncio.ensure_future(pool.run(_hang, 0))
        await asyncio.sleep(0.5)
        job.cancel()
        async with asyncio.timeout(10):  # not after the 60 s the cancelled job would take
            assert await pool.run(_double, 4) == 8
    finally:
        pool.close()


async def test_an_idle_worker_killed_from_outside_is_replaced() -> None:
    pool = WorkerPool(1, hard_timeout=30)
    await pool.start()
    try:
        os.kill(await pool.run(_pid, 0), signal.SIGKILL)  # the OOM killer, an operator
        await asyncio.sleep(0.5)
        async with asyncio.timeout(20):
            assert await pool.run(_double, 3) == 6
    finally:
        pool.close()
