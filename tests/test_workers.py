"""One edge node as several worker processes sharing its port and its disk tier."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import aiohttp
import pytest

from common.hashing import content_id
from origin import keys as K
from origin.fs import FsOrigin
from tests.helpers import ADMIN
from tests.topology import Service, env, write_config

pytestmark = pytest.mark.timeout(120)


def _workers_of(config: Path) -> list[int]:
    pids = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if str(config) in cmd and "--worker" in cmd:
                pids.append(int(pid))
    return pids


async def _get(url: str) -> tuple[int, str, int]:
    # A new connection per request, so the kernel spreads them over the workers.
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        await r.read()
        return r.status, r.headers.get("X-Cache", ""), int(r.headers.get("Age", "0"))


async def test_two_workers_share_port_cache_purges_and_stats(tmp_path: Path) -> None:
    config, ports = write_config(tmp_path, f'kind = "fs"\npath = "{tmp_path / "origin"}"')
    text = config.read_text().replace('name = "eu-west-a"\nregion = "eu-west"\n',
                                      'name = "eu-west-a"\nregion = "eu-west"\nworkers = 2\n')
    config.write_text(text)
    origin = FsOrigin(tmp_path / "origin")
    image_id = content_id(b"workers")
    data = os.urandom(50_000)
    await origin.put(K.variant(image_id, "w320", "webp"), data, "image/webp",
                     {"blake3": content_id(data)})
    edge = await Service(["edge", "--node", "eu-west-a", "--config", str(config)],
                         env()).start()
    try:
        assert edge.url == f"http://127.0.0.1:{ports.edges['eu-west-a']}"
        assert len(_workers_of(config)) == 2
        url = f"{edge.url}/i/{image_id}/w320.webp"
        first = [await _get(url) for _ in range(30)]
        assert first[0][:2] == (200, "MISS")
        assert all(r[:2] == (200, "HIT") for r in first[1:])  # the other worker: disk tier
        await asyncio.sleep(2.2)
        async with aiohttp.ClientSession() as s, s.post(
            f"{edge.url}/_admin/purge", json={"ids": [image_id]}, headers=ADMIN
        ) as r:
            assert r.status == 200
        after = [await _get(url) for _ in range(30)]
        assert after[0][:2] == (200, "MISS")
        # No worker answers from a hot tier filled before the purge (Age would show it).
        assert all(age < 2 for status, cache, age in after if cache == "HIT")
        await asyncio.sleep(1.5)  # the workers' counters are published once a second
        async with aiohttp.ClientSession() as s, s.get(f"{edge.url}/_admin/stats",
                                                       headers=ADMIN) as r:
            stats = await r.json()
        assert stats["workers"] == 2
        assert stats["hits"] + stats["misses"] == 60
        assert stats["misses"] == 2
    finally:
        assert await edge.stop(signal.SIGTERM) == 0
    assert _workers_of(config) == []
