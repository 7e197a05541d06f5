"""One contract, two backends: the same suite runs on the fs origin and on a real S3 server."""

from __future__ import annotations

import asyncio
import os

import pytest

from common.errors import NotFound, OriginTimeout, OriginUnavailable, RangeNotSatisfiable
from common.hashing import content_id
from config.schema import OriginConfig
from origin import Origin, open_origin, purgelog
from origin import keys as K
from tests.conftest import s3_origin_config
from tests.s3server import S3Server, free_port, start_moto

ID = content_id(b"x")
DATA = bytes(range(256)) * 40  # 10240 bytes, every offset distinguishable


async def _read_range(origin: Origin, key: str, rng: slice) -> tuple[int, int, int, bytes]:
    async with origin.open(key, rng) as r:
        body = b"".join([c async for c in r.iter_chunks()])
        return r.start, r.end, r.info.size, body


async def test_round_trip_with_metadata(origin: Origin) -> None:
    key = K.variant(ID, "w320", "webp")
    await origin.put(key, DATA, "image/webp", {"blake3": content_id(DATA), "width": "320"})
    info, body = await origin.read(key)
    assert body == DATA
    assert info.size == len(DATA)
    assert info.content_type == "image/webp"
    assert info.metadata == {"blake3": content_id(DATA), "width": "320"}
    head = await origin.head(key)
    assert (head.size, head.metadata["blake3"]) == (len(DATA), content_id(DATA))


async def test_put_from_file_object(origin: Origin, tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "body.bin")
    with open(path, "wb") as f:
        f.write(DATA)
    with open(path, "rb") as f:
        await origin.put(K.original(ID), f, "image/jpeg", {})
    assert (await origin.read(K.original(ID)))[1] == DATA


@pytest.mark.parametrize(
    ("rng", "expect"),
    [
        (slice(0, 100), (0, 100)),  # first bytes
        (slice(5000, 5100), (5000, 5100)),  # middle
        (slice(-300, None), (len(DATA) - 300, len(DATA))),  # suffix
        (slice(10000, None), (10000, len(DATA))),  # open-ended
        (slice(10000, 99999), (10000, len(DATA))),  # end past the size is clamped
        (slice(-99999, None), (0, len(DATA))),  # suffix longer than the object
    ],
)
async def test_ranges(origin: Origin, rng: slice, expect: tuple[int, int]) -> None:
    key = K.original(ID)
    await origin.put(key, DATA, "application/octet-stream", {})
    start, end, size, body = await _read_range(origin, key, rng)
    assert (start, end, size) == (*expect, len(DATA))
    assert body == DATA[expect[0] : expect[1]]


async def test_range_past_the_end_is_unsatisfiable(origin: Origin) -> None:
    key = K.original(ID)
    await origin.put(key, DATA, "application/octet-stream", {})
    with pytest.raises(RangeNotSatisfiable):
        await _read_range(origin, key, slice(len(DATA), len(DATA) + 10))


async def test_missing_key(origin: Origin) -> None:
    with pytest.raises(NotFound):
        await origin.read(K.manifest(ID))
    with pytest.raises(NotFound):
        await origin.head(K.manifest(ID))


async def test_delete_twice(origin: Origin) -> None:
    key = K.manifest(ID)
    await origin.put(key, b"{}", "application/json", {})
    await origin.delete(key)
    await origin.delete(key)  # idempotent, like S3
    with pytest.raises(NotFound):
        await origin.head(key)


async def test_list_with_prefix_and_cursor(origin: Origin) -> None:
    other = content_id(b"y")
    for name in ("w320", "w640", "s150"):
        await origin.put(K.variant(ID, name, "jpg"), b"v", "image/jpeg", {})
    await origin.put(K.variant(other, "w320", "jpg"), b"v", "image/jpeg", {})
    records = [purgelog.key_of(n) for n in (3, 1, 2)]
    for r in records:
        await origin.put(r, b"{}", "application/json", {})
    assert await origin.list(K.variants_prefix(ID)) == sorted(
        K.variant(ID, n, "jpg") for n in ("w320", "w640", "s150")
    )
    assert await origin.list(purgelog.PREFIX) == sorted(records)
    assert await origin.list(purgelog.PREFIX, start_after=sorted(records)[0]) == sorted(records)[1:]
    assert await origin.list(purgelog.PREFIX, limit=2) == sorted(records)[:2]
    assert await origin.list("manifests/") == []


async def test_concurrent_puts_of_one_key_leave_one_whole_object(origin: Origin) -> None:
    key = K.original(ID)
    bodies = [bytes([i]) * 200_000 for i in range(8)]
    await asyncio.gather(*(origin.put(key, b, "image/jpeg", {"n": str(b[0])}) for b in bodies))
    info, body = await origin.read(key)
    assert body in bodies
    assert info.metadata["n"] == str(body[0])  # metadata belongs to the bytes that won


async def test_twenty_megabyte_object(origin: Origin) -> None:
    big = os.urandom(20 * 1024 * 1024)
    key = K.original(ID)
    await origin.put(key, big, "image/jpeg", {"blake3": content_id(big)})
    info, body = await origin.read(key)
    assert info.size == len(big) and content_id(body) == content_id(big)
    _, _, _, tail = await _read_range(origin, key, slice(-1000, None))
    assert tail == big[-1000:]


def test_keys_refuse_hostile_parts() -> None:
    for bad in ("../etc", "A" * 64, ID[:-1], ID + "0", ID.upper()):
        with pytest.raises(ValueError):
            K.original(bad)
    for name, ext in (("..", "jpg"), ("w320", "../x"), ("w320/..", "jpg"), ("", "jpg")):
        with pytest.raises(ValueError):
            K.variant(ID, name, ext)
    assert not K.is_valid_key("variants/../../etc/passwd")
    assert not K.is_valid_key("/abs")


# -- the S3 backend when its server misbehaves ---------------------------------------------


@pytest.fixture
def lone_s3() -> S3Server:
    server = start_moto()  # a server of its own, so stopping it harms no other test
    yield server  # type: ignore[misc]
    server.thaw() if server.proc and server.proc.poll() is None else None
    server.stop()


async def test_s3_stopped_server_is_origin_unavailable(lone_s3: S3Server) -> None:
    cfg = s3_origin_config(lone_s3, connect_timeout=0.5, read_timeout=1.0, max_attempts=1)
    async with open_origin(cfg) as origin:
        await origin.put(K.original(ID), DATA, "image/jpeg", {})
        lone_s3.stop()
        with pytest.raises(OriginUnavailable):
            await origin.read(K.original(ID))


async def test_s3_frozen_server_is_origin_timeout(lone_s3: S3Server) -> None:
    cfg = s3_origin_config(lone_s3, connect_timeout=0.5, read_timeout=0.5, max_attempts=1)
    async with open_origin(cfg) as origin:
        await origin.put(K.original(ID), DATA, "image/jpeg", {})
        lone_s3.freeze()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(OriginTimeout):
            await origin.head(K.original(ID))
        assert loop.time() - t0 < 5
        lone_s3.thaw()
        assert (await origin.head(K.original(ID))).size == len(DATA)  # recovers by itself


async def test_s3_nothing_listening_is_origin_unavailable(s3_server: S3Server) -> None:
    cfg = s3_origin_config(s3_server, endpoint_url=f"http://127.0.0.1:{free_port()}",
                           connect_timeout=0.5, max_attempts=1, create_bucket=False)
    async with open_origin(cfg) as origin:
        with pytest.raises(OriginUnavailable):
            await origin.head(K.original(ID))


async def test_s3_wrong_secret_is_refused(s3_server: S3Server) -> None:
    if s3_server.kind == "moto":
        pytest.skip("moto accepts any signature; this needs Ceph RGW")
    good = s3_origin_config(s3_server)
    async with open_origin(good) as origin:
        await origin.put(K.original(ID), DATA, "image/jpeg", {})
    bad: OriginConfig = s3_origin_config(s3_server, bucket=good.bucket, secret_key="wrong" * 8,
                                         create_bucket=False)
    async with open_origin(bad) as origin:
        with pytest.raises(OriginUnavailable):
            await origin.read(K.original(ID))
