"""Faults, with the project's own processes and a real S3 server: nothing lost, nothing
corrupt, everything recovers by itself."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from common.hashing import content_id
from config import Config
from edge.app import create_app as create_edge
from ingest.app import create_app as create_ingest
from origin import keys as K
from origin import open_origin
from origin.fs import FsOrigin
from tests import images
from tests.conftest import s3_origin_config
from tests.helpers import ADMIN, AUTH, make_config
from tests.proxy import CountingProxy
from tests.s3server import S3Server
from tests.topology import Service, env, write_config

Client = TestClient[Any, Any]
MakeClient = Callable[..., Awaitable[Client]]
pytestmark = pytest.mark.timeout(180)


async def test_s3_failing_mid_upload_is_503_nothing_published_then_recovers(
    aiohttp_client: MakeClient, tmp_path: Path, s3_server: S3Server, proxy: CountingProxy
) -> None:
    cfg = make_config(tmp_path, s3_origin_config(s3_server, endpoint_url=proxy.url,
                                                 max_attempts=1))
    client = await aiohttp_client(create_ingest(cfg))
    data = images.jpeg()
    image_id = content_id(data)
    proxy.fail_after_puts = sum(n for (m, _), n in proxy.counts.items() if m == "PUT") + 3
    async with client.post("/v1/images", data=data, headers=AUTH) as r:
        assert r.status == 503
        assert r.content_type == "application/problem+json"
        assert r.headers["Retry-After"]
    proxy.fail_after_puts = None
    async with open_origin(cfg.origin) as o:  # some objects may be there, the manifest not
        assert await o.list("manifests/") == []
    async with client.get(f"/v1/images/{image_id}") as r:
        assert r.status == 404
    async with client.post("/v1/images", data=data, headers=AUTH) as r:
        assert r.status == 201  # no restart needed
        manifest = await r.json()
    async with open_origin(cfg.origin) as o:
        for v in manifest["variants"]:
            info, body = await o.read(K.variant(image_id, v["name"], v["format"]))
            assert content_id(body) == v["blake3"] == info.metadata["blake3"]


async def test_edge_killed_twenty_times_during_fills_never_serves_a_bad_body(
    tmp_path: Path
) -> None:
    config, _ = write_config(tmp_path, f'kind = "fs"\npath = "{tmp_path / "origin"}"')
    origin = FsOrigin(tmp_path / "origin")
    objects: dict[str, str] = {}
    for i in range(24):
        data = os.urandom(random.randint(50_000, 400_000))
        image_id = content_id(i.to_bytes(2, "big") + b"kill")
        await origin.put(K.variant(image_id, "w1080", "webp"), data, "image/webp",
                         {"blake3": content_id(data)})
        objects[f"/i/{image_id}/w1080.webp"] = content_id(data)

    async def start() -> Service:
        return await Service(["edge", "--node", "eu-west-a", "--config", str(config)],
                             env()).start()

    async def check_all(s: aiohttp.ClientSession, url: str, paths: list[str]) -> int:
        """Every path served whole and right by an edge that was not killed; returns how
        many came from the cache the killed edges left (HITs)."""
        hits = 0
        for path in paths:
            async with s.get(url + path) as r:
                body = await r.read()
                assert r.status == 200, (path, r.status)
                assert content_id(body) == objects[path] == r.headers["ETag"].strip('"')
                hits += r.headers["X-Cache"] == "HIT"
        return hits

    answered = cut = hits = 0
    previous: list[str] = []
    async with aiohttp.ClientSession() as s:
        for round_ in range(20):
            edge = await start()
            # What the last round's killed edge was filling: served whole now (from the
            # disk it left, or refetched), never a torn body.
            hits += await check_all(s, edge.url, previous)
            sample = random.sample([p for p in objects if p not in previous], 12)

            async def fetch(path: str, url: str = edge.url, n: int = round_) -> bool:
                try:
                    async with s.get(url + path) as r:
                        body = await r.read()
                except (TimeoutError, aiohttp.ClientError):
                    return False  # cut off by the kill: a failure, not bad bytes
                assert r.status == 200, (n, path, r.status)
                assert content_id(body) == objects[path] == r.headers["ETag"].strip('"')
                return True

            tasks = [asyncio.create_task(fetch(p)) for p in sample]
            await asyncio.sleep(random.uniform(0.0, 0.05))
            await edge.stop(signal.SIGKILL)
            done = await asyncio.gather(*tasks)
            answered += sum(done)
            cut += len(done) - sum(done)
            previous = sample
        edge = await start()
        try:
            hits += await check_all(s, edge.url, list(objects))
        finally:
            await edge.stop()
    # The kills landed both after answers and in the middle of fills, and what killed
    # edges had cached was read back, checked, by the next one.
    print(f"answered {answered}, cut off {cut}, read back {hits}")
    assert answered > 0 and cut > 0, (answered, cut)
    assert hits > 0


async def test_flipped_bytes_in_the_disk_cache_are_detected_and_refetched(
    aiohttp_client: MakeClient, tmp_path: Path
) -> None:
    cfg = make_config(tmp_path)
    node = replace(cfg.edges[0], memory_bytes=0)  # every hit reads the disk tier
    data = os.urandom(200_000)
    image_id = content_id(b"flip")
    await FsOrigin(cfg.origin.path).put(K.variant(image_id, "w640", "jpg"), data,
                                        "image/jpeg", {"blake3": content_id(data)})
    client = await aiohttp_client(create_edge(cfg, node))
    path = f"/i/{image_id}/w640.jpg"
    async with client.get(path) as r:
        assert r.status == 200 and r.headers["X-Cache"] == "MISS"
    vals = list((node.cache_dir / "objects").rglob("*.val"))
    assert len(vals) == 1
    raw = bytearray(vals[0].read_bytes())
    raw[12345] ^= 0x01  # one bit
    vals[0].write_bytes(bytes(raw))
    async with client.get(path) as r:
        body = await r.read()
        assert r.status == 200 and body == data  # refetched, not the damaged copy
        assert r.headers["X-Cache"] == "MISS"
    async with client.get(path) as r:
        assert r.headers["X-Cache"] == "HIT" and await r.read() == data
    async with client.get("/_admin/stats", headers=ADMIN) as r:
        assert (await r.json())["disk_corrupt"] == 1
    async with client.get("/metrics") as r:
        assert "mediacdn_edge_disk_corrupt_total 1.0" in await r.text()


def _mount_tmpfs(where: Path, options: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    where.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                      capture_output=True).returncode != 0:
        pytest.skip("this machine does not allow mounting a tmpfs")


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    mount = tmp_path / "small"
    _mount_tmpfs(mount, "size=1536k")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def read_only_disk(tmp_path: Path) -> Any:
    mount = tmp_path / "ro"
    _mount_tmpfs(mount, "ro,size=1m")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


async def _seed_big(cfg: Config, n: int, size: int) -> dict[str, bytes]:
    origin = FsOrigin(cfg.origin.path)
    paths = {}
    for i in range(n):
        data = os.urandom(size)
        image_id = content_id(bytes([i]) + b"full")
        await origin.put(K.variant(image_id, "w1080", "jpg"), data, "image/jpeg",
                         {"blake3": content_id(data)})
        paths[f"/i/{image_id}/w1080.jpg"] = data
    return paths


async def test_full_cache_disk_serves_from_upstream(
    aiohttp_client: MakeClient, tmp_path: Path, small_disk: Path
) -> None:
    cfg = make_config(tmp_path)
    node = replace(cfg.edges[0], cache_dir=small_disk / "edge", memory_bytes=0)
    paths = await _seed_big(cfg, 6, 400_000)  # 6 x 400 KB into 1.5 MB
    client = await aiohttp_client(create_edge(cfg, node))
    for _ in range(2):
        for path, data in paths.items():
            async with client.get(path) as r:
                assert r.status == 200 and await r.read() == data
    async with client.get("/_admin/stats", headers=ADMIN) as r:
        assert (await r.json())["disk_write_errors"] >= 1
    async with client.get("/healthz") as r:
        assert r.status == 200


async def test_unwritable_cache_dir_serves_uncached_and_says_so(
    aiohttp_client: MakeClient, tmp_path: Path, read_only_disk: Path
) -> None:
    cfg = make_config(tmp_path)
    node = replace(cfg.edges[0], cache_dir=read_only_disk / "edge")
    paths = await _seed_big(cfg, 2, 100_000)
    client = await aiohttp_client(create_edge(cfg, node))
    for path, data in paths.items():
        async with client.get(path) as r:
            assert r.status == 200 and await r.read() == data
    async with client.get("/metrics") as r:
        assert "mediacdn_edge_disk_unavailable 1.0" in await r.text()
    async with client.get("/readyz") as r:  # not ready, says why, and still serves media
        body = await r.json()
        assert r.status == 503 and body["media"] is True and "disk" in body["reason"]


async def test_slow_clients_are_cut_off_and_others_are_served(tmp_path: Path) -> None:
    config, _ = write_config(tmp_path, f'kind = "fs"\npath = "{tmp_path / "origin"}"')
    config.write_text(config.read_text().replace("[edge]\n", "[edge]\nidle_timeout = 1.0\n"))
    edge = await Service(["edge", "--node", "eu-west-a", "--config", str(config)],
                         env()).start()
    host, port = edge.url.split("//")[1].split(":")
    slow = []
    try:
        for _ in range(50):  # a slowloris: a request that never ends
            s = socket.create_connection((host, int(port)))
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            slow.append(s)
        t0 = time.monotonic()
        async with aiohttp.ClientSession() as session:
            for _ in range(20):
                async with session.get(edge.url + "/healthz") as r:
                    assert r.status == 200
        assert time.monotonic() - t0 < 2  # the others did not wait on the slow ones
        for s in slow:
            s.sendall(b"X-Slow: 1\r\n")  # keep trickling
        await asyncio.sleep(2.5)
        closed = 0
        for s in slow:
            s.settimeout(1)
            try:
                # b"" (orderly close) or a reset: closed. A timeout means it is still open.
                closed += s.recv(100) == b""
            except ConnectionResetError:
                closed += 1
            except TimeoutError:
                pass
        assert closed == len(slow)
    finally:
        for s in slow:
            s.close()
        await edge.stop()


async def test_ingest_recovers_when_s3_comes_back(aiohttp_client: MakeClient, tmp_path: Path,
                                                  s3_server: S3Server,
                                                  proxy: CountingProxy) -> None:
    cfg: Config = make_config(tmp_path, s3_origin_config(
        s3_server, endpoint_url=proxy.url, max_attempts=1, connect_timeout=0.5))
    client = await aiohttp_client(create_ingest(cfg))
    await proxy.stop()
    async with client.post("/v1/images", data=images.png_alpha(), headers=AUTH) as r:
        assert r.status == 503 and r.content_type == "application/problem+json"
    async with client.get("/readyz") as r:
        assert r.status == 503
    await proxy.start()
    async with client.post("/v1/images", data=images.png_alpha(), headers=AUTH) as r:
        assert r.status == 201
    async with client.get("/readyz") as r:
        assert r.status == 200
