"""Every upload is answered in bounded time: an image that hangs fails alone, waiting for a
transcode worker is bounded in count and time, and a hung S3 costs a 503 within the
configured origin deadline."""

from __future__ import annotations

import asyncio
import struct
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from common.hashing import content_id
from config import Config
from ingest.app import create_app
from ingest.keys import POOL
from origin import open_origin
from tests import images
from tests.conftest import s3_origin_config
from tests.helpers import AUTH, make_config
from tests.proxy import CountingProxy
from tests.s3server import S3Server

Client = TestClient[Any, Any]
MakeClient = Callable[..., Awaitable[Client]]
pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def slow_png() -> bytes:
    """A valid 2 MB PNG whose one decode step takes seconds (measured ~4 s on one core):
    32768 x 16384 pixels of 16-bit RGBA, all zero."""
    import pyvips

    img = pyvips.Image.black(32768, 16384, bands=4).cast("ushort")
    return bytes(img.pngsave_buffer(compression=3))


def _variant(png: bytes, n: int) -> bytes:
    """The same pixels with a text chunk after IHDR: other bytes, so another image id."""
    data = b"n\x00" + str(n).encode()
    chunk = struct.pack(">I", len(data)) + b"tEXt" + data + struct.pack(
        ">I", zlib.crc32(b"tEXt" + data))
    return png[:33] + chunk + png[33:]


def _photo(n: int) -> bytes:
    return images.jpeg(images.photo(1200, 800), comment=f"upload {n}")  # a new id each


def _config(tmp_path: Path, **transcode: Any) -> Config:
    cfg = make_config(tmp_path)
    return replace(cfg, ingest=replace(cfg.ingest, max_pixels=600_000_000, max_dimension=32768),
                   transcode=replace(cfg.transcode, **transcode))


async def _post(client: Client, data: bytes) -> tuple[int, dict[str, Any], str]:
    async with client.post("/v1/images", data=data, headers=AUTH) as r:
        return r.status, await r.json(content_type=None), r.headers.get("Retry-After", "")


async def test_an_image_that_hangs_fails_alone_while_other_uploads_complete(
    aiohttp_client: MakeClient, tmp_path: Path, slow_png: bytes
) -> None:
    # deadline 1 s: the worker decoding slow_png is killed at 2 s, in its one long step.
    client = await aiohttp_client(create_app(_config(tmp_path, workers=2, deadline_seconds=1)))
    hung = asyncio.ensure_future(_post(client, _variant(slow_png, 0)))
    answers: list[int] = []

    async def uploads(stream: int) -> None:
        # Two streams for the one free worker: it is always busy, so the kill lands on a
        # running job if it lands on more than the hung one.
        n = 0
        while not hung.done():
            status, _, _ = await _post(client, _photo(stream * 10_000 + n))
            answers.append(status)
            n += 1

    async with asyncio.timeout(60):
        await asyncio.gather(uploads(1), uploads(2))
    status, problem, _ = await hung
    assert status == 422 and "too long" in problem["detail"]
    assert len(answers) >= 4
    assert answers == [201] * len(answers)


async def test_uploads_beyond_the_waiting_bound_get_503_and_retry_after(
    aiohttp_client: MakeClient, tmp_path: Path, slow_png: bytes
) -> None:
    cfg = _config(tmp_path, workers=1, deadline_seconds=1, max_waiting=2, wait_seconds=60)
    client = await aiohttp_client(create_app(cfg))
    pool = client.app[POOL]
    # One slow image runs (2 s until its kill), two wait: the bound is reached.
    held = [asyncio.ensure_future(_post(client, _variant(slow_png, i))) for i in range(3)]
    for _ in range(200):  # 10 s at most
        if pool.waiting == 2:
            break
        await asyncio.sleep(0.05)
    assert pool.waiting == 2
    async with asyncio.timeout(15):  # none waits: each is answered while the three run
        refused = await asyncio.gather(*(_post(client, _photo(i)) for i in range(50)))
    assert [status for status, _, _ in refused] == [503] * 50
    assert all(problem["status"] == 503 and int(retry) >= 1 for _, problem, retry in refused)
    async with asyncio.timeout(30):  # the three inside the bound are answered too
        assert [status for status, _, _ in await asyncio.gather(*held)] == [422] * 3
    status, _, _ = await _post(client, _photo(0))
    assert status == 201  # and the refused ones can retry


async def test_an_upload_waits_for_a_worker_at_most_wait_seconds(
    aiohttp_client: MakeClient, tmp_path: Path, slow_png: bytes
) -> None:
    cfg = _config(tmp_path, workers=1, deadline_seconds=2, wait_seconds=1)
    client = await aiohttp_client(create_app(cfg))
    hung = asyncio.ensure_future(_post(client, _variant(slow_png, 0)))  # the worker, 4 s
    await asyncio.sleep(0.5)
    t0 = time.monotonic()
    async with asyncio.timeout(10):
        status, _, retry = await _post(client, _photo(0))
    assert status == 503 and retry
    assert time.monotonic() - t0 < 1 + 1.5  # wait_seconds, not the hung job's 4 s
    assert (await hung)[0] == 422


@pytest.fixture
async def silent_s3() -> AsyncIterator[str]:
    """An S3 endpoint that accepts connections and reads requests, and never answers."""
    held: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        while await reader.read(65536):
            pass

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    for w in held:
        w.close()
    server.close()
    await server.wait_closed()


def _s3_config(tmp_path: Path, endpoint: str, deadline: float, **origin: Any) -> Config:
    cfg = make_config(tmp_path)
    # The loader's own defaults for timeouts and attempts (10 s reads, 3 attempts).
    fields: dict[str, Any] = dict(kind="s3", endpoint_url=endpoint, bucket="b",
                                  access_key="k", secret_key="s", create_bucket=False)
    s3 = replace(cfg.origin, **(fields | origin))
    return replace(cfg, origin=s3, ingest=replace(cfg.ingest, max_bytes=16 * 1024 * 1024,
                                                  origin_deadline_seconds=deadline))


async def test_upload_is_503_within_the_origin_deadline_when_s3_never_answers(
    aiohttp_client: MakeClient, tmp_path: Path, silent_s3: str
) -> None:
    client = await aiohttp_client(create_app(_s3_config(tmp_path, silent_s3, deadline=2)))
    t0 = time.monotonic()
    async with asyncio.timeout(2 + 5):
        async with client.post("/v1/images", data=images.jpeg(), headers=AUTH) as r:
            assert r.status == 503
            assert r.content_type == "application/problem+json"
            assert int(r.headers["Retry-After"]) >= 1
    assert time.monotonic() - t0 < 2 + 1.5


class WritesHang(CountingProxy):
    """Reads pass to the real S3; every write (PUT, POST, DELETE) waits until released."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.released = asyncio.Event()
        self.writes = 0

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.method in ("PUT", "POST", "DELETE"):
            self.writes += 1
            await self.released.wait()
            return web.Response(status=503)
        return await super()._handle(request)


async def test_upload_is_503_within_the_origin_deadline_when_s3_writes_hang(
    aiohttp_client: MakeClient, tmp_path: Path, s3_server: S3Server
) -> None:
    proxy = WritesHang(s3_server.endpoint)
    await proxy.start()
    try:
        made = s3_origin_config(s3_server)
        async with open_origin(made):  # makes the bucket, straight at the server
            pass
        cfg = _s3_config(tmp_path, proxy.url, deadline=2, bucket=made.bucket,
                         access_key=made.access_key, secret_key=made.secret_key)
        client = await aiohttp_client(create_app(cfg))
        data = images.big_png(2000, 1600)  # over 8 MiB: a multipart upload
        assert len(data) > 8 * 1024 * 1024
        t0 = time.monotonic()
        async with asyncio.timeout(2 + 5):
            async with client.post("/v1/images", data=data, headers=AUTH) as r:
                assert r.status == 503 and r.headers["Retry-After"]
        assert time.monotonic() - t0 < 2 + 1.5
        assert proxy.writes >= 1  # it did get as far as the store
        proxy.released.set()
        async with client.get(f"/v1/images/{content_id(data)}") as r:
            assert r.status == 404  # nothing published
    finally:
        proxy.released.set()
        await proxy.close()
