"""Misses when something upstream is broken or lies: a missing bucket, a peer edge that
answers 404 or too many bytes, a hung or refused origin, two edges whose configs disagree
about who owns an id, an edge started while S3 is down. Real edges on loopback (two per
region, the peer path between them), real S3 (moto) or a real socket that never answers."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiobotocore.session import get_session
from aiohttp import web
from aiohttp.test_utils import TestServer

from common.hashing import content_id
from config import Config
from config.schema import EdgeNode, OriginConfig
from edge.app import create_app
from edge.peer import PEER_HEADER
from edge.rendezvous import owner
from origin import keys as K
from origin import open_origin
from origin.fs import FsOrigin
from tests.conftest import s3_origin_config
from tests.helpers import make_config
from tests.proxy import CountingProxy
from tests.s3server import S3Server, free_port
from tests.topology import Service, env, write_config

pytestmark = pytest.mark.timeout(120)
Serve = Callable[[web.Application, EdgeNode], Awaitable[TestServer]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Runs apps on the ports the config gives their nodes, so edges reach each other."""
    servers: list[TestServer] = []

    async def start(app: web.Application, node: EdgeNode) -> TestServer:
        server = TestServer(app, host="127.0.0.1", port=node.port)
        await server.start_server()
        servers.append(server)
        return server

    yield start
    for s in reversed(servers):
        await s.close()


def with_edge(cfg: Config, **over: Any) -> Config:
    return replace(cfg, edge=replace(cfg.edge, **over))


def region_pair(cfg: Config) -> tuple[EdgeNode, EdgeNode]:
    region = cfg.region("eu-west")
    assert region is not None and len(region.edges) == 2
    return region.edges[0], region.edges[1]


def id_owned_by(edges: tuple[EdgeNode, EdgeNode], name: str, salt: str = "") -> str:
    for i in range(10_000):
        image_id = content_id(f"{salt}{i}".encode())
        if owner(edges, image_id).name == name:
            return image_id
    raise AssertionError("no id found")


async def put_variant(origin_cfg: OriginConfig, image_id: str, size: int = 20_000) -> bytes:
    data = os.urandom(size)
    async with open_origin(origin_cfg) as o:
        await o.put(K.variant(image_id, "w640", "webp"), data, "image/webp",
                    {"blake3": content_id(data)})
    return data


async def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, float]:
    t0 = time.monotonic()
    async with aiohttp.ClientSession() as s, s.get(url, headers=headers) as r:
        body = await r.read()
        return r.status, body, time.monotonic() - t0


async def _drop_bucket(origin: OriginConfig) -> None:
    session = get_session()
    async with session.create_client(
            "s3", endpoint_url=origin.endpoint_url, region_name=origin.region,
            aws_access_key_id=origin.access_key, aws_secret_access_key=origin.secret_key) as s3:
        listed = await s3.list_objects_v2(Bucket=origin.bucket)
        for o in listed.get("Contents", []):
            await s3.delete_object(Bucket=origin.bucket, Key=o["Key"])
        await s3.delete_bucket(Bucket=origin.bucket)


async def test_missing_bucket_is_502_on_every_edge_and_never_a_cached_404(
    serve: Serve, tmp_path: Path, s3_server: S3Server
) -> None:
    origin = s3_origin_config(s3_server, max_attempts=1)
    cfg = with_edge(make_config(tmp_path, origin), origin_timeout=3.0, negative_ttl=60)
    a, b = region_pair(cfg)
    await serve(create_app(cfg, a), a)
    await serve(create_app(cfg, b), b)
    edges = (a, b)
    mine, theirs = id_owned_by(edges, a.name, "m"), id_owned_by(edges, b.name, "t")
    await _drop_bucket(origin)  # a bucket deleted, or a config naming the wrong one
    for image_id in (mine, theirs):  # owner path, then through the owner edge
        status, body, _ = await fetch(f"{a.url}/i/{image_id}/w640.webp")
        assert status == 502, (image_id == mine, body)
    # The operator fixes it (the bucket is made, the images are there): no edge may keep
    # answering 404 from what it learnt while the bucket was missing.
    bodies = {i: await put_variant(origin, i) for i in (mine, theirs)}
    for edge in edges:
        for image_id, data in bodies.items():
            status, body, _ = await fetch(f"{edge.url}/i/{image_id}/w640.webp")
            assert (status, body == data) == (200, True), (edge.name, image_id == mine)


class LyingPeer:
    """Stands where the owner edge should be, and lies about what it holds."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.sent = 0
        self.requests = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        if self.mode == "404":
            return web.json_response({"title": "Not Found"}, status=404)
        if self.mode == "hang":
            await asyncio.sleep(3600)
        resp = web.StreamResponse(headers={"Content-Type": "image/webp"})
        await resp.prepare(request)
        chunk = b"\0" * 65536
        try:
            for _ in range(1024):  # 64 MiB offered for a 20 KB object
                await resp.write(chunk)
                self.sent += len(chunk)
        except (ConnectionError, RuntimeError):
            pass  # the edge hung up: what we count is what it let us send
        return resp

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/i/{id}/{name}", self.handle)
        return app


@pytest.mark.parametrize("mode", ["404", "oversize"])
async def test_a_lying_owner_edge_cannot_make_an_edge_cache_a_404_or_read_past_the_size(
    serve: Serve, tmp_path: Path, mode: str
) -> None:
    cfg = with_edge(make_config(tmp_path), origin_timeout=5.0, negative_ttl=60)
    a, b = region_pair(cfg)
    image_id = id_owned_by((a, b), b.name, mode)
    data = await put_variant(cfg.origin, image_id)
    peer = LyingPeer(mode)
    await serve(peer.app(), b)
    await serve(create_app(cfg, a), a)
    for _ in range(2):  # the second request would be a cached 404 if the first trusted it
        status, body, _ = await fetch(f"{a.url}/i/{image_id}/w640.webp")
        assert status == 200 and body == data
    assert peer.requests == 1
    # The object is 20 KB: once past it, the edge stops reading. What the liar still gets
    # out is what the two sockets' kernel buffers absorb, nowhere near the 64 MiB offered.
    assert peer.sent < 16 * 1024 * 1024


async def test_a_hung_owner_edge_costs_part_of_one_timeout_not_a_whole_one(
    serve: Serve, tmp_path: Path
) -> None:
    cfg = with_edge(make_config(tmp_path), origin_timeout=4.0)
    a, b = region_pair(cfg)
    image_id = id_owned_by((a, b), b.name, "hang")
    data = await put_variant(cfg.origin, image_id)
    await serve(LyingPeer("hang").app(), b)
    await serve(create_app(cfg, a), a)
    status, body, took = await fetch(f"{a.url}/i/{image_id}/w640.webp")
    assert status == 200 and body == data
    assert took < cfg.edge.origin_timeout  # the origin was asked before the owner gave up


async def test_a_request_from_a_peer_is_never_forwarded(serve: Serve, tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    a, b = region_pair(cfg)
    image_id = id_owned_by((a, b), b.name, "fwd")  # a believes b owns it
    data = await put_variant(cfg.origin, image_id)
    owner_edge = LyingPeer("404")  # counts what reaches "b"
    await serve(owner_edge.app(), b)
    await serve(create_app(cfg, a), a)
    status, body, _ = await fetch(f"{a.url}/i/{image_id}/w640.webp",
                                  headers={PEER_HEADER: "eu-west-x"})
    assert status == 200 and body == data
    assert owner_edge.requests == 0  # filled from the origin, not sent on to the owner


async def test_edges_that_disagree_about_the_owner_never_wait_on_each_other(
    serve: Serve, tmp_path: Path, s3_server: S3Server, proxy: CountingProxy
) -> None:
    # A config rollout: edge B runs a config that names it eu-west-c, edge A still calls
    # it eu-west-b. For the id below each believes the other owns it, and both get a
    # request at the same moment, while the origin is slow enough that the fills overlap.
    origin = s3_origin_config(s3_server, endpoint_url=proxy.url, max_attempts=1)
    cfg_a = with_edge(make_config(tmp_path, origin), origin_timeout=6.0)
    a, b = region_pair(cfg_a)
    b_renamed = replace(b, name="eu-west-c", cache_dir=tmp_path / "cache" / "eu-west-c")
    regions = tuple(replace(r, edges=(a, b_renamed)) if r.name == "eu-west" else r
                    for r in cfg_a.regions)
    cfg_b = replace(cfg_a, regions=regions)
    image_id = ""
    for i in range(10_000):
        candidate = content_id(f"rollout{i}".encode())
        if owner((a, b), candidate).name == b.name and owner(
                (a, b_renamed), candidate).name == a.name:
            image_id = candidate
            break
    assert image_id
    data = await put_variant(origin, image_id)
    await serve(create_app(cfg_a, a), a)
    await serve(create_app(cfg_b, b_renamed), b_renamed)
    proxy.delay = 0.3
    results = await asyncio.gather(*(fetch(f"{e.url}/i/{image_id}/w640.webp")
                                     for e in (a, b_renamed)))
    for status, body, took in results:
        assert status == 200 and body == data
        # A wait on each other would last until a peer deadline (3 s or more).
        assert took < 2.5, took


async def _hang(port: int) -> tuple[asyncio.Server, list[asyncio.StreamWriter]]:
    """On `port`: accepts connections, reads nothing, answers nothing (a hung S3)."""
    held: list[asyncio.StreamWriter] = []

    async def accept(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        held.append(w)

    return await asyncio.start_server(accept, "127.0.0.1", port, reuse_address=True), held


@pytest.mark.parametrize("fault", ["refused", "hung"])
async def test_every_miss_answers_within_the_origin_timeout_owner_or_not(
    serve: Serve, tmp_path: Path, s3_server: S3Server, proxy: CountingProxy, fault: str
) -> None:
    origin = s3_origin_config(s3_server, endpoint_url=proxy.url, connect_timeout=1.0,
                              read_timeout=5.0, max_attempts=3)
    cfg = with_edge(make_config(tmp_path, origin), origin_timeout=2.0)
    a, b = region_pair(cfg)
    await serve(create_app(cfg, a), a)
    await serve(create_app(cfg, b), b)
    await proxy.stop()  # the edges started with S3 up; now it is refused...
    hung = await _hang(proxy.port) if fault == "hung" else None  # ...or it hangs
    try:
        ids = [id_owned_by((a, b), e.name, f"{fault}{n}") for e in (a, b) for n in range(2)]
        results = await asyncio.gather(*(fetch(f"{e.url}/i/{i}/w640.webp")
                                         for e in (a, b) for i in ids))
        for status, _body, took in results:
            assert status in (502, 504)
            assert took < cfg.edge.origin_timeout + 1, took
    finally:
        if hung is not None:
            for w in hung[1]:
                w.close()
            hung[0].close()


async def test_an_edge_started_while_s3_is_down_starts(tmp_path: Path) -> None:
    port = free_port()  # S3 is down: nothing listens there
    config, _ports = write_config(
        tmp_path, f'kind = "s3"\nbucket = "media"\nendpoint_url = "http://127.0.0.1:{port}"\n'
        'connect_timeout = 0.5\nmax_attempts = 1')
    environ = env({"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"})
    edge = await Service(["edge", "--node", "eu-west-a", "--config", str(config)],
                         environ).start()
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(edge.url + "/healthz") as r:
                assert r.status == 200
            async with s.get(f"{edge.url}/i/{'0' * 64}/w640.webp") as r:
                assert r.status in (502, 503, 504)
        assert edge.proc is not None and edge.proc.returncode is None
    finally:
        await edge.stop()


def _orphan(directory: Path, name: str, size: int, age: float) -> Path:
    # Where and how diskcache puts a value file; an edge killed between writing the file
    # and inserting its row leaves exactly this.
    path = directory / name[:2] / name[2:4] / f"{name[4:]}.val"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    then = time.time() - age
    os.utime(path, (then, then))
    return path


async def test_orphaned_cache_files_are_reclaimed_at_start(
    serve: Serve, tmp_path: Path
) -> None:
    cfg = make_config(tmp_path)
    a = cfg.edges[0]
    image_id = content_id(b"kept")
    data = os.urandom(200_000)
    await FsOrigin(cfg.origin.path).put(K.variant(image_id, "w640", "webp"), data,
                                        "image/webp", {"blake3": content_id(data)})
    server = await serve(create_app(cfg, a), a)
    status, body, _ = await fetch(f"{a.url}/i/{image_id}/w640.webp")
    assert status == 200 and body == data
    await server.close()
    objects = a.cache_dir / "objects"
    kept = list(objects.rglob("*.val"))
    assert len(kept) == 1
    orphans = [_orphan(objects, os.urandom(16).hex(), 300_000, 3600) for _ in range(5)]
    # No row yet but written a moment ago: possibly another worker's write in flight.
    fresh = _orphan(objects, os.urandom(16).hex(), 1000, 0)
    await serve(create_app(cfg, a), a)
    for _ in range(100):  # reclaimed in the background, just after the start
        if not any(p.exists() for p in orphans):
            break
        await asyncio.sleep(0.1)
    assert sorted(objects.rglob("*.val")) == sorted([*kept, fresh])
    async with aiohttp.ClientSession() as s, s.get(f"{a.url}/i/{image_id}/w640.webp") as r:
        assert r.headers["X-Cache"] == "HIT" and await r.read() == data
