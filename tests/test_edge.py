"""One edge node on loopback, filling from a real S3 server through a counting proxy."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from common.hashing import content_id
from config import Config
from edge.app import create_app
from origin import keys as K
from origin import open_origin
from tests.conftest import s3_origin_config
from tests.helpers import ADMIN, AUTH, make_config
from tests.proxy import CountingProxy
from tests.s3server import S3Server

Client = TestClient[Any, Any]
MakeClient = Callable[..., Awaitable[Client]]
LADDER = [(n, f) for n in ("w1080", "w640", "w320", "s150") for f in ("webp", "jpg")]


@pytest.fixture
def cfg(tmp_path: Path, s3_server: S3Server, proxy: CountingProxy) -> Config:
    origin = s3_origin_config(s3_server, endpoint_url=proxy.url, max_attempts=1,
                              connect_timeout=0.5, read_timeout=1.0)
    base = make_config(tmp_path, origin)
    return replace(base, edge=replace(base.edge, origin_timeout=1.5, negative_ttl=30))


async def seed(cfg: Config, size: int = 20_000) -> tuple[str, dict[tuple[str, str], bytes]]:
    """Variants of one image at the origin, as ingest stores them."""
    image_id = content_id(os.urandom(32))
    bodies = {}
    async with open_origin(cfg.origin) as o:
        for name, fmt in LADDER:
            data = os.urandom(size)
            bodies[(name, fmt)] = data
            ct = "image/webp" if fmt == "webp" else "image/jpeg"
            await o.put(K.variant(image_id, name, fmt), data, ct, {"blake3": content_id(data)})
    return image_id, bodies


@pytest.fixture
async def edge(aiohttp_client: MakeClient, cfg: Config) -> Client:
    return await aiohttp_client(create_app(cfg, cfg.edges[0]))


async def get(client: Client, path: str, **kw: Any) -> tuple[int, Any, bytes]:
    async with client.get(path, **kw) as r:
        return r.status, r.headers, await r.read()


async def test_miss_then_hit_with_every_header(edge: Client, cfg: Config,
                                               proxy: CountingProxy) -> None:
    image_id, bodies = await seed(cfg)
    proxy.counts.clear()
    path = f"/i/{image_id}/w640.webp"
    status, h, body = await get(edge, path)
    assert status == 200 and body == bodies[("w640", "webp")]
    assert h["Content-Type"] == "image/webp"
    assert h["Content-Length"] == str(len(body))
    assert h["ETag"] == f'"{content_id(body)}"'
    assert h["Cache-Control"] == "public, max-age=31536000, immutable"
    assert h["Accept-Ranges"] == "bytes"
    assert h["X-Cache"] == "MISS"
    assert int(h.get("Age", "0")) == 0  # just fetched
    await asyncio.sleep(1.2)
    status, h, body2 = await get(edge, path)
    assert (status, h["X-Cache"], body2) == (200, "HIT", body)
    assert 1 <= int(h["Age"]) <= 3  # how long it has been cached (RFC 9111 §5.1)
    status, h, _ = await get(edge, path, headers={"If-None-Match": '"other"'})  # full path
    assert h["X-Cache"] == "HIT" and 1 <= int(h["Age"]) <= 3
    assert proxy.gets(image_id) == 1
    status, h, body = await get(edge, f"/i/{image_id}/s150.jpg")
    assert h["Content-Type"] == "image/jpeg" and body == bodies[("s150", "jpg")]


async def test_head_has_the_get_headers_and_no_body(edge: Client, cfg: Config) -> None:
    image_id, _bodies = await seed(cfg)
    path = f"/i/{image_id}/w320.jpg"
    _, gh, _ = await get(edge, path)
    async with edge.head(path) as r:
        assert r.status == 200
        assert await r.read() == b""
        for name in ("Content-Type", "Content-Length", "ETag", "Cache-Control",
                     "Accept-Ranges"):
            assert r.headers[name] == gh[name]
        assert r.headers["X-Cache"] == "HIT"


async def test_if_none_match(edge: Client, cfg: Config) -> None:
    image_id, bodies = await seed(cfg)
    path = f"/i/{image_id}/w320.webp"
    _, h, _ = await get(edge, path)
    etag = h["ETag"]
    for inm in (etag, f'"nope", {etag}', "*", f"W/{etag}"):
        status, h304, body = await get(edge, path, headers={"If-None-Match": inm})
        assert status == 304 and body == b"", inm
        assert h304["ETag"] == etag
        assert h304["Cache-Control"] == "public, max-age=31536000, immutable"
    status, _, body = await get(edge, path, headers={"If-None-Match": '"other"'})
    assert status == 200 and body == bodies[("w320", "webp")]


@pytest.mark.parametrize(
    ("header", "span"),
    [("bytes=0-99", (0, 100)), ("bytes=5000-5999", (5000, 6000)), ("bytes=-300", (19700, 20000)),
     ("bytes=19990-", (19990, 20000)), ("bytes=19990-999999", (19990, 20000))],
)
async def test_ranges(edge: Client, cfg: Config, header: str, span: tuple[int, int]) -> None:
    image_id, bodies = await seed(cfg)
    full = bodies[("w1080", "jpg")]
    status, h, body = await get(edge, f"/i/{image_id}/w1080.jpg", headers={"Range": header})
    assert status == 206
    assert body == full[span[0] : span[1]]
    assert h["Content-Range"] == f"bytes {span[0]}-{span[1] - 1}/{len(full)}"
    assert h["Content-Length"] == str(span[1] - span[0])


async def test_unsatisfiable_multiple_and_malformed_ranges(edge: Client, cfg: Config) -> None:
    image_id, bodies = await seed(cfg)
    path = f"/i/{image_id}/w1080.jpg"
    for header in ("bytes=20000-", "bytes=99999-100000", "bytes=-0"):
        status, h, body = await get(edge, path, headers={"Range": header})
        assert status == 416, header
        assert h["Content-Range"] == "bytes */20000"
        assert h["Content-Type"] == "application/problem+json"
    # Several ranges or a malformed header: the whole object, 200 (RFC 9110 §14.2).
    for header in ("bytes=0-1,5-6", "bytes=abc", "items=0-1"):
        status, _, body = await get(edge, path, headers={"Range": header})
        assert status == 200 and body == bodies[("w1080", "jpg")], header
    # If-Range with another validator: the whole object.
    status, _, body = await get(edge, path, headers={"Range": "bytes=0-9", "If-Range": '"x"'})
    assert status == 200 and len(body) == 20000


@pytest.mark.parametrize(
    ("accept", "ext"),
    [
        ("image/avif,image/webp,image/apng,*/*;q=0.8", "webp"),  # avif not enabled here
        ("image/webp,*/*", "webp"),
        ("image/jpeg", "jpg"),
        ("*/*", "jpg"),
        ("", "jpg"),
        ("text/html", "jpg"),
        ("image/webp;q=0, image/jpeg", "jpg"),
    ],
)
async def test_negotiation(edge: Client, cfg: Config, accept: str, ext: str) -> None:
    image_id, bodies = await seed(cfg)
    headers = {"Accept": accept} if accept else {}
    status, h, body = await get(edge, f"/i/{image_id}/w640", headers=headers)
    assert status == 200
    assert body == bodies[("w640", ext)]
    assert h["Vary"] == "Accept"
    _, h, _ = await get(edge, f"/i/{image_id}/w640.{ext}")
    assert "Vary" not in h


async def test_negotiation_prefers_avif_when_enabled(aiohttp_client: MakeClient,
                                                     cfg: Config) -> None:
    cfg = replace(cfg, transcode=replace(cfg.transcode, formats=("avif", "webp", "jpg")))
    image_id = content_id(b"avif")
    data = os.urandom(5000)
    async with open_origin(cfg.origin) as o:
        await o.put(K.variant(image_id, "w320", "avif"), data, "image/avif",
                    {"blake3": content_id(data)})
    client = await aiohttp_client(create_app(cfg, cfg.edges[0]))
    status, h, body = await get(client, f"/i/{image_id}/w320",
                                headers={"Accept": "image/avif,image/webp,*/*"})
    assert (status, h["Content-Type"], body) == (200, "image/avif", data)


BAD_PATHS = [
    ("/i/{id}/Bad!.webp", 400), ("/i/{id}/w320.png", 400), ("/i/{id}/w320.webp.jpg", 400),
    ("/i/{id}/.webp", 400), ("/i/NOTHEX/w320.webp", 400), ("/i/{short}/w320.webp", 400),
    ("/i/{id}/w320..webp", 400), ("/i/{id}/%2e%2e", 404),  # dot segments collapse: no route
    ("/i/{id}/w999.webp", 404), ("/i/{id}/original", 404),
    ("/i/{id}/w320.avif", 404), ("/i/{id}", 404), ("/nothing/here", 404),
]


@pytest.mark.parametrize(("template", "status"), BAD_PATHS, ids=[b[0] for b in BAD_PATHS])
async def test_bad_paths_never_reach_the_origin(edge: Client, proxy: CountingProxy,
                                                template: str, status: int) -> None:
    image_id = content_id(b"whatever")
    proxy.counts.clear()
    path = template.format(id=image_id, short=image_id[:-1])
    got, h, _body = await get(edge, path)
    assert got == status
    assert h["Content-Type"] == "application/problem+json"
    assert proxy.gets("/variants/") == 0  # (the purge-log poll is not a media fetch)


async def test_unknown_id_is_404_and_cached_briefly(edge: Client, proxy: CountingProxy) -> None:
    path = f"/i/{content_id(b'never uploaded')}/w320.webp"
    proxy.counts.clear()
    for _ in range(20):
        status, h, _ = await get(edge, path)
        assert status == 404 and h["Content-Type"] == "application/problem+json"
    assert proxy.gets("/variants/") == 1  # the flood stayed at the edge


async def test_corrupted_origin_object_is_never_served_nor_cached(
    edge: Client, cfg: Config, proxy: CountingProxy
) -> None:
    image_id, bodies = await seed(cfg)
    good = bodies[("w640", "jpg")]
    bad = bytearray(good)
    bad[100] ^= 0xFF
    async with open_origin(cfg.origin) as o:  # the bytes change behind their metadata
        await o.put(K.variant(image_id, "w640", "jpg"), bytes(bad), "image/jpeg",
                    {"blake3": content_id(good)})
    proxy.counts.clear()
    for _ in range(2):
        status, h, body = await get(edge, f"/i/{image_id}/w640.jpg")
        assert status == 502 and h["Content-Type"] == "application/problem+json"
        assert bytes(bad) not in body
    assert proxy.gets("w640.jpg") == 2  # nothing was cached
    async with edge.get("/_admin/stats", headers=ADMIN) as r:
        assert (await r.json())["verify_failures"] == 2


async def test_200_concurrent_misses_make_one_origin_get(edge: Client, cfg: Config,
                                                         proxy: CountingProxy) -> None:
    image_id, bodies = await seed(cfg, size=300_000)
    proxy.counts.clear()
    proxy.delay = 0.2  # keep the fill in flight while the others arrive
    results = await asyncio.gather(*(get(edge, f"/i/{image_id}/w1080.webp") for _ in range(200)))
    assert all(s == 200 and b == bodies[("w1080", "webp")] for s, _, b in results)
    assert proxy.gets(image_id) == 1


async def test_origin_down_hits_served_misses_502_then_recovery(
    edge: Client, cfg: Config, proxy: CountingProxy
) -> None:
    image_id, bodies = await seed(cfg)
    assert (await get(edge, f"/i/{image_id}/w320.webp"))[0] == 200
    await proxy.stop()
    status, h, body = await get(edge, f"/i/{image_id}/w320.webp")
    assert (status, h["X-Cache"]) == (200, "HIT")
    t0 = time.monotonic()
    status, h, _ = await get(edge, f"/i/{image_id}/w640.webp")
    assert status in (502, 504) and h["Content-Type"] == "application/problem+json"
    assert time.monotonic() - t0 < cfg.edge.origin_timeout + 1
    async with edge.get("/readyz") as r:
        assert r.status == 503
    await proxy.start()  # same port: the origin is back
    status, h, body = await get(edge, f"/i/{image_id}/w640.webp")
    assert (status, body) == (200, bodies[("w640", "webp")])


async def test_slow_origin_is_504_within_the_timeout(edge: Client, cfg: Config,
                                                     proxy: CountingProxy) -> None:
    image_id, _ = await seed(cfg)
    proxy.delay = 5
    t0 = time.monotonic()
    status, h, _ = await get(edge, f"/i/{image_id}/w320.jpg")
    assert status == 504 and h["Content-Type"] == "application/problem+json"
    assert time.monotonic() - t0 < cfg.edge.origin_timeout + 1


async def test_cache_is_kept_across_restarts(aiohttp_client: MakeClient, cfg: Config,
                                             proxy: CountingProxy) -> None:
    image_id, bodies = await seed(cfg)
    first = await aiohttp_client(create_app(cfg, cfg.edges[0]))
    assert (await get(first, f"/i/{image_id}/w320.webp"))[0] == 200
    await first.close()
    proxy.counts.clear()
    second = await aiohttp_client(create_app(cfg, cfg.edges[0]))
    status, h, body = await get(second, f"/i/{image_id}/w320.webp")
    assert (status, h["X-Cache"], body) == (200, "HIT", bodies[("w320", "webp")])
    assert proxy.gets(image_id) == 0


async def test_size_limit_evicts_least_recently_used(aiohttp_client: MakeClient, cfg: Config,
                                                     proxy: CountingProxy) -> None:
    node = replace(cfg.edges[0], cache_bytes=1 << 20, memory_bytes=0)  # disk tier only
    client = await aiohttp_client(create_app(cfg, node))
    ids = [(await seed(cfg, size=120_000))[0] for _ in range(9)]
    for image_id in ids[:6]:  # 720 KB: under the 1 MiB limit
        assert (await get(client, f"/i/{image_id}/w1080.webp"))[0] == 200
    await asyncio.sleep(0.01)
    assert (await get(client, f"/i/{ids[0]}/w1080.webp"))[1]["X-Cache"] == "HIT"  # read
    await asyncio.sleep(1.5)  # the batched recency flush
    for image_id in ids[6:]:  # 360 KB more: over the limit, evictions happen
        assert (await get(client, f"/i/{image_id}/w1080.webp"))[0] == 200
    async with client.get("/_admin/stats", headers=ADMIN) as r:
        stats = await r.json()
    assert stats["cache_bytes"] <= 1 << 20 and stats["evictions"] >= 1
    proxy.counts.clear()
    assert (await get(client, f"/i/{ids[0]}/w1080.webp"))[1]["X-Cache"] == "HIT"
    assert (await get(client, f"/i/{ids[1]}/w1080.webp"))[1]["X-Cache"] == "MISS"


async def test_purge_one_id_and_all(edge: Client, cfg: Config) -> None:
    a, _ = await seed(cfg)
    b, _ = await seed(cfg)
    for image_id in (a, b):
        for name, fmt in LADDER[:3]:
            await get(edge, f"/i/{image_id}/{name}.{fmt}")
    async with edge.post("/_admin/purge", json={"ids": [a]}, headers=ADMIN) as r:
        assert r.status == 200 and (await r.json())["purged"] == 3
    assert (await get(edge, f"/i/{a}/w1080.webp"))[1]["X-Cache"] == "MISS"
    assert (await get(edge, f"/i/{b}/w1080.webp"))[1]["X-Cache"] == "HIT"
    async with edge.post("/_admin/purge", json={"all": True}, headers=ADMIN) as r:
        assert r.status == 200 and (await r.json())["purged"] >= 4
    assert (await get(edge, f"/i/{b}/w1080.webp"))[1]["X-Cache"] == "MISS"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, AUTH,
                                     {"Authorization": "Basic YWRtaW46YWRtaW4="}])
async def test_admin_needs_the_admin_token(edge: Client, headers: dict[str, str]) -> None:
    async with edge.post("/_admin/purge", json={"all": True}, headers=headers) as r:
        assert r.status == 401 and r.content_type == "application/problem+json"
    async with edge.get("/_admin/stats", headers=headers) as r:
        assert r.status == 401


@pytest.mark.parametrize("body", [b"nope", b"[]", b'{"ids": []}', b'{"ids": ["x"]}',
                                  b'{"all": "yes"}', b"{}"])
async def test_purge_rejects_malformed_bodies(edge: Client, body: bytes) -> None:
    async with edge.post("/_admin/purge", data=body, headers=ADMIN) as r:
        assert r.status == 400 and r.content_type == "application/problem+json"


async def test_stats_ops_and_openapi(edge: Client, cfg: Config) -> None:
    image_id, bodies = await seed(cfg)
    await get(edge, f"/i/{image_id}/w320.webp")
    await get(edge, f"/i/{image_id}/w320.webp")
    async with edge.get("/_admin/stats", headers=ADMIN) as r:
        s = await r.json()
    assert (s["hits"], s["misses"], s["origin_fetches"]) == (1, 1, 1)
    assert s["bytes_served"] == 2 * len(bodies[("w320", "webp")])
    assert s["cache_entries"] == 1 and s["cache_bytes"] >= 20_000
    for key in ("evictions", "errors", "node", "region"):
        assert key in s
    async with edge.get("/healthz") as r:
        assert (r.status, await r.json()) == (200, {"status": "ok"})
    async with edge.get("/readyz") as r:
        assert r.status == 200
    async with edge.get("/metrics") as r:
        text = await r.text()
        assert 'mediacdn_edge_requests_total{cache="HIT",status="200"} 1.0' in text
        assert "mediacdn_edge_origin_fetch_seconds_bucket" in text
        assert "mediacdn_edge_cache_entries 1.0" in text
        assert "mediacdn_edge_verify_failures_total 0.0" in text
    async with edge.get("/openapi.json") as r:
        assert (await r.json())["paths"]["/i/{id}/{name}"]


async def test_access_log_lines_are_json(aiohttp_client: MakeClient, cfg: Config,
                                         caplog: pytest.LogCaptureFixture) -> None:
    import json
    import logging

    from common.logs import JsonFormatter

    cfg = replace(cfg, edge=replace(cfg.edge, access_log="all"))
    client = await aiohttp_client(create_app(cfg, cfg.edges[0]))
    image_id, _ = await seed(cfg)
    with caplog.at_level(logging.INFO, logger="mediacdn.edge.access"):
        await get(client, f"/i/{image_id}/w320.webp")
        await get(client, f"/i/{image_id}/w320.webp")
    lines = [json.loads(JsonFormatter("edge").format(r)) for r in caplog.records
             if r.name == "mediacdn.edge.access"]
    assert [(x["status"], x["cache"]) for x in lines] == [(200, "MISS"), (200, "HIT")]
    assert all(x["service"] == "edge" and x["level"] == "info" for x in lines)


async def test_originals_are_served_only_when_the_config_says_so(
    aiohttp_client: MakeClient, cfg: Config, proxy: CountingProxy
) -> None:
    data = os.urandom(30_000)
    image_id = content_id(data)
    async with open_origin(cfg.origin) as o:
        await o.put(K.original(image_id), data, "image/png", {"blake3": image_id})
    default = await aiohttp_client(create_app(cfg, cfg.edges[0]))
    proxy.counts.clear()
    async with default.get(f"/i/{image_id}/original") as r:
        assert r.status == 404 and r.content_type == "application/problem+json"
    assert proxy.gets("/originals/") == 0
    # One edge per node at a time, as deployed: the first one's follower, still catching up
    # under load, would mark the shared journal ready for its own run, not the second's.
    await default.close()
    on = replace(cfg, transcode=replace(cfg.transcode, serve_originals=True))
    client = await aiohttp_client(create_app(on, on.edges[0]))
    for cache in ("MISS", "HIT"):
        status, h, body = await get(client, f"/i/{image_id}/original")
        assert (status, h["X-Cache"], body) == (200, cache, data)
        assert h["ETag"] == f'"{image_id}"' and h["Content-Type"] == "image/png"
    # Checked against the id itself: bytes changed at the origin are never served.
    other = content_id(b"other original")
    async with open_origin(cfg.origin) as o:
        await o.put(K.original(other), data, "image/png", {"blake3": other})
    status, h, _ = await get(client, f"/i/{other}/original")
    assert status == 502


async def test_end_to_end_from_ingest(aiohttp_client: MakeClient, cfg: Config) -> None:
    from ingest.app import create_app as create_ingest
    from tests import images

    ingest = await aiohttp_client(create_ingest(cfg))
    edge = await aiohttp_client(create_app(cfg, cfg.edges[0]))
    async with ingest.post("/v1/images", data=images.jpeg(), headers=AUTH) as r:
        manifest = await r.json()
    for v in manifest["variants"]:
        status, h, body = await get(edge, v["path"])
        assert status == 200 and content_id(body) == v["blake3"]
        assert h["ETag"] == f'"{v["blake3"]}"'


async def _raw(host: str, port: int, requests: list[bytes]) -> list[tuple[str, dict[str, str],
                                                                           bytes]]:
    reader, writer = await asyncio.open_connection(host, port)
    out = []
    for req in requests:
        writer.write(req)
        status = (await reader.readline()).decode().strip()
        headers: dict[str, str] = {}
        while (line := (await reader.readline()).decode().strip()):
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        body = await reader.readexactly(int(headers["content-length"]))
        out.append((status, headers, body))
    eof = await reader.read(1)
    writer.close()
    out.append(("EOF" if eof == b"" else "OPEN", {}, b""))
    return out


async def test_hits_on_the_wire_keep_alive_http10_and_close(edge: Client, cfg: Config) -> None:
    image_id, bodies = await seed(cfg)
    path = f"/i/{image_id}/w320.webp"
    await get(edge, path)  # fill: the hits below come from the hot tier
    host, port = edge.server.host, edge.server.port
    assert port is not None
    get11 = f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    close = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    (s1, h1, b1), (s2, h2, b2), (s3, h3, b3), (state, _, _) = await _raw(
        host, port, [get11, get11, close])
    assert s1 == s2 == s3 == "HTTP/1.1 200 OK"
    assert b1 == b2 == b3 == bodies[("w320", "webp")]
    assert state == "EOF"  # Connection: close was honoured
    for h in (h1, h2, h3):
        assert h["etag"] == f'"{content_id(b1)}"' and h["x-cache"] == "HIT"
        assert h["cache-control"] == "public, max-age=31536000, immutable"
        assert h["access-control-allow-origin"] == "*" and "date" in h and "age" in h
    assert set(h1) - {"server", "connection"} == set(h3) - {"server", "connection"}
    (s10, h10, b10), (state, _, _) = await _raw(
        host, port, [f"GET {path} HTTP/1.0\r\n\r\n".encode()])
    assert s10.endswith("200 OK") and b10 == b1 and state == "EOF"
    assert h10["etag"] == h1["etag"]  # HTTP/1.0 goes through aiohttp's header path
