"""The ingest API on a real server on loopback, storing into real origins."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pyvips
from aiohttp.test_utils import TestClient
from PIL import Image

from common.hashing import content_id
from config import Config
from ingest.app import create_app
from origin import keys as K
from origin import open_origin
from tests import images
from tests.conftest import s3_origin_config
from tests.helpers import ADMIN, AUTH, make_config
from tests.s3server import S3Server

Client = TestClient[Any, Any]
MakeClient = Callable[..., Awaitable[Client]]


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return make_config(tmp_path)


@pytest.fixture
async def client(aiohttp_client: MakeClient, cfg: Config) -> Client:
    return await aiohttp_client(create_app(cfg))


async def _upload(client: Client, data: bytes, **kw: Any) -> tuple[int, dict[str, Any]]:
    headers = kw.pop("headers", AUTH)
    async with client.post("/v1/images", data=data, headers=headers, **kw) as r:
        return r.status, await r.json(content_type=None)


async def _origin_keys(cfg: Config) -> list[str]:
    async with open_origin(cfg.origin) as o:
        return [k for p in ("originals/", "variants/", "manifests/") for k in await o.list(p)]


def _vips(data: bytes) -> pyvips.Image:
    return pyvips.Image.new_from_buffer(data, "")


async def _fetch_variant(cfg: Config, image_id: str, name: str, ext: str) -> bytes:
    async with open_origin(cfg.origin) as o:
        return (await o.read(K.variant(image_id, name, ext)))[1]


# -- happy paths ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("maker", "fmt", "size"),
    [
        (lambda: images.jpeg(), "jpeg", (800, 400)),
        (lambda: images.png_alpha(), "png", (600, 400)),
        (lambda: images.encode(images.photo(), "WEBP"), "webp", (800, 400)),
        (lambda: images.animated_gif(), "gif", (400, 300)),
        (lambda: images.avif(), "avif", (640, 480)),
    ],
    ids=["jpeg", "png-alpha", "webp", "gif-animated", "avif"],
)
async def test_upload_stores_original_every_variant_and_manifest(
    client: Client, cfg: Config, maker: Callable[[], bytes], fmt: str, size: tuple[int, int]
) -> None:
    data = maker()
    status, body = await _upload(client, data)
    assert status == 201, body
    image_id = content_id(data)
    assert body["id"] == image_id
    assert (body["format"], body["width"], body["height"], body["bytes"]) == (fmt, *size, len(data))
    assert body["placeholder"].startswith("data:image/")
    assert len(body["placeholder"]) < 400
    names = {(v["name"], v["format"]) for v in body["variants"]}
    assert names == {(n, f) for n in ("w1080", "w640", "w320", "s150") for f in ("webp", "jpg")}
    for v in body["variants"]:
        assert v["path"] == f"/i/{image_id}/{v['name']}.{v['format']}"
        assert v["url"] == cfg.ingest.public_base_url + v["path"]
        stored = await _fetch_variant(cfg, image_id, v["name"], v["format"])
        assert content_id(stored) == v["blake3"] and len(stored) == v["bytes"]
        img = _vips(stored)
        assert (img.width, img.get("page-height") if "page-height" in img.get_fields()
                else img.height) == (v["width"], v["height"])
        if v["name"].startswith("w"):
            want = min(int(v["name"][1:]), size[0])  # fit width, never upscale
            assert v["width"] == want
            assert abs(v["height"] - size[1] * want / size[0]) <= 1
        else:
            assert (v["width"], v["height"]) == (150, 150)
    keys = await _origin_keys(cfg)
    assert K.original(image_id) in keys and K.manifest(image_id) in keys
    assert len([k for k in keys if k.startswith("variants/")]) == 8


@pytest.mark.parametrize("maker", [images.noisy_jpeg, images.big_png], ids=["jpeg", "png"])
async def test_bodies_spooled_to_disk_are_transcoded_from_the_file(
    client: Client, cfg: Config, maker: Callable[[], bytes]
) -> None:
    data = maker()
    assert len(data) > cfg.ingest.spool_bytes
    status, body = await _upload(client, data)
    assert status == 201 and body["id"] == content_id(data)
    async with open_origin(cfg.origin) as o:
        assert (await o.read(K.original(body["id"])))[1] == data
    status, body = await _upload(client, images.cut(data, 0.7))
    assert status == 422, body


async def test_multipart_upload(client: Client) -> None:
    data = images.jpeg()
    form = aiohttp.FormData()
    form.add_field("note", "ignored")
    form.add_field("file", data, filename="x.jpg", content_type="text/plain")
    status, body = await _upload(client, form)  # type: ignore[arg-type]
    assert status == 201 and body["id"] == content_id(data)


async def test_same_bytes_again_is_200_and_nothing_is_reencoded(
    client: Client, cfg: Config
) -> None:
    data = images.jpeg()
    status, first = await _upload(client, data)
    assert status == 201
    async with open_origin(cfg.origin) as o:
        before = await o.head(K.variant(first["id"], "w320", "webp"))
    status, again = await _upload(client, data)
    assert status == 200 and again == first  # the stored manifest, same created time
    async with open_origin(cfg.origin) as o:
        assert await o.head(K.variant(first["id"], "w320", "webp")) == before


async def test_concurrent_uploads_of_the_same_bytes(client: Client) -> None:
    data = images.jpeg(images.photo(1200, 900))
    results = await asyncio.gather(*(_upload(client, data) for _ in range(4)))
    statuses = sorted(s for s, _ in results)
    assert statuses.count(201) >= 1 and set(statuses) <= {200, 201}
    assert len({b["id"] for _, b in results}) == 1


async def test_get_and_head_manifest(client: Client) -> None:
    data = images.jpeg()
    _, body = await _upload(client, data)
    async with client.get(f"/v1/images/{body['id']}") as r:
        assert r.status == 200 and await r.json() == body
    async with client.head(f"/v1/images/{body['id']}", headers=AUTH) as r:
        assert r.status == 200
    unknown = content_id(b"never uploaded")
    async with client.head(f"/v1/images/{unknown}", headers=AUTH) as r:
        assert r.status == 404
    async with client.head(f"/v1/images/{body['id']}") as r:
        assert r.status == 401  # hash-first HEAD needs the API key
    async with client.get(f"/v1/images/{unknown}") as r:
        assert r.status == 404
        assert r.content_type == "application/problem+json"
    async with client.get("/v1/images/NOT-AN-ID") as r:
        assert r.status == 400
        assert (await r.json(content_type=None))["status"] == 400


# -- what the pipeline does to pixels and metadata ----------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
async def test_exif_orientation_is_applied(client: Client, cfg: Config, orientation: int) -> None:
    data = images.oriented_jpeg(orientation)
    # Self-check of the test image: Pillow's view of it is the intended 800x400 picture.
    from PIL import ImageOps

    shown = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    assert shown.size == (800, 400)
    status, body = await _upload(client, data)
    assert status == 201
    assert (body["width"], body["height"]) == (800, 400)
    out = Image.open(io.BytesIO(await _fetch_variant(cfg, body["id"], "w320", "jpg")))
    assert out.size == (320, 160)
    r, g, b = out.convert("RGB").getpixel((10, 10))  # red block stays top-left
    assert r > 200 and g < 60 and b < 60
    r, g, b = out.convert("RGB").getpixel((310, 150))  # blue block stays bottom-right
    assert b > 200 and r < 60


async def test_no_exif_gps_or_xmp_in_any_variant(client: Client, cfg: Config) -> None:
    data = images.gps_jpeg()
    assert "exif-ifd3-GPSLatitude" in _vips(data).get_fields()  # the source does carry GPS
    status, body = await _upload(client, data)
    assert status == 201
    for v in body["variants"]:
        stored = await _fetch_variant(cfg, body["id"], v["name"], v["format"])
        fields = _vips(stored).get_fields()
        assert not [f for f in fields if f.startswith(("exif", "xmp", "iptc"))], (v, fields)
        assert b"GPS" not in stored and b"CameraMaker" not in stored


async def test_cmyk_jpeg_ends_in_srgb(client: Client, cfg: Config) -> None:
    status, body = await _upload(client, images.cmyk_jpeg())
    assert status == 201
    out = _vips(await _fetch_variant(cfg, body["id"], "w640", "jpg"))
    assert out.interpretation == "srgb" and out.bands == 3
    r, g, b = Image.open(io.BytesIO(await _fetch_variant(cfg, body["id"], "w640", "jpg"))
                         ).convert("RGB").getpixel((10, 10))
    assert r > 180 and g < 90 and b < 90  # still red after the colour conversion


async def test_animated_gif_stays_animated_in_webp(client: Client, cfg: Config) -> None:
    status, body = await _upload(client, images.animated_gif(frames=6))
    assert status == 201
    webp = _vips(await _fetch_variant(cfg, body["id"], "w320", "webp"))
    assert webp.get("n-pages") == 6
    jpg = _vips(await _fetch_variant(cfg, body["id"], "w320", "jpg"))
    assert (jpg.width, jpg.height) == (320, 240)  # first frame only
    s150 = pyvips.Image.new_from_buffer(
        await _fetch_variant(cfg, body["id"], "s150", "webp"), "", n=-1)
    assert s150.get("n-pages") == 6 and s150.get("page-height") == 150


async def test_animated_webp_stays_animated(client: Client, cfg: Config) -> None:
    status, body = await _upload(client, images.animated_webp(frames=5))
    assert status == 201 and body["frames"] == 5
    webp = pyvips.Image.new_from_buffer(
        await _fetch_variant(cfg, body["id"], "w320", "webp"), "", n=-1)
    assert webp.get("n-pages") == 5


async def test_sixteen_bit_png_ends_in_eight_bit_srgb(client: Client, cfg: Config) -> None:
    data = images.png16()
    assert _vips(data).format == "ushort"
    status, body = await _upload(client, data)
    assert status == 201
    out = _vips(await _fetch_variant(cfg, body["id"], "w320", "webp"))
    assert (out.format, out.interpretation, out.bands) == ("uchar", "srgb", 3)
    r, g, b = Image.open(io.BytesIO(await _fetch_variant(cfg, body["id"], "w320", "jpg"))
                         ).convert("RGB").getpixel((5, 5))
    assert r > 200 and g < 60 and b < 60


async def test_embedded_icc_profile_is_converted_to_srgb(client: Client, cfg: Config) -> None:
    data = images.p3_jpeg()
    assert "icc-profile-data" in _vips(data).get_fields()
    status, body = await _upload(client, data)
    assert status == 201
    variant = await _fetch_variant(cfg, body["id"], "w320", "jpg")
    assert "icc-profile-data" not in _vips(variant).get_fields()  # plain sRGB, no profile
    # The P3 pixels, read through their profile, are the sRGB red of the source picture;
    # read as if they were sRGB they would be about (231, 49, 35).
    r, g, b = Image.open(io.BytesIO(variant)).convert("RGB").getpixel((5, 5))
    assert r > 245 and g < 25 and b < 25, (r, g, b)


async def test_avif_variants_when_enabled(tmp_path: Path, aiohttp_client: MakeClient) -> None:
    base = make_config(tmp_path)
    cfg = replace(base, transcode=replace(base.transcode, formats=("avif", "webp", "jpg")))
    client = await aiohttp_client(create_app(cfg))
    status, body = await _upload(client, images.jpeg())
    assert status == 201
    avifs = [v for v in body["variants"] if v["format"] == "avif"]
    assert len(avifs) == 4
    for v in avifs:
        img = _vips(await _fetch_variant(cfg, body["id"], v["name"], "avif"))
        assert (img.width, img.height) == (v["width"], v["height"])
        assert img.get("vips-loader") == "heifload_buffer"


async def test_variants_are_deterministic(tmp_path: Path, aiohttp_client: MakeClient) -> None:
    data = images.png_alpha()
    blakes = []
    for run in ("a", "b"):
        cfg = make_config(tmp_path / run)
        client = await aiohttp_client(create_app(cfg))
        _, body = await _upload(client, data)
        blakes.append([v["blake3"] for v in body["variants"]])
    assert blakes[0] == blakes[1]


# -- errors: each with a real offending file, nothing stored -----------------------------


BAD_INPUTS = [
    ("empty", b"", 400),
    ("svg", images.SVG, 415),
    ("pdf", images.PDF, 415),
    ("html", images.HTML, 415),
    ("text", images.TEXT, 415),
    ("zip", images.ZIP, 415),
    ("elf", images.ELF, 415),
    ("truncated-jpeg", images.cut(images.jpeg(images.photo(1600, 1200)), 0.6), 422),
    ("truncated-png", images.cut(images.png_alpha(), 0.6), 422),
    ("truncated-webp", images.cut(images.encode(images.photo(), "WEBP"), 0.6), 422),
    ("truncated-gif", images.cut(images.animated_gif(), 0.5), 422),
    ("png-100000x100000", images.png_declaring(100_000, 100_000), 422),
    ("png-20000x10", images.png_declaring(20_000, 10), 422),
    ("gif-1000-frames", images.many_frame_gif(1000), 422),
    ("jpeg-magic-random", b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8, 422),
]


@pytest.mark.parametrize(("name", "data", "status"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
async def test_bad_input_is_a_problem_and_nothing_is_stored(
    client: Client, cfg: Config, name: str, data: bytes, status: int
) -> None:
    got, body = await _upload(client, data, headers={**AUTH, "Content-Type": "image/jpeg"})
    assert got == status, body
    assert body["status"] == status and body["title"] and body["type"] and body["detail"]
    assert await _origin_keys(cfg) == []


async def test_wrong_or_missing_key(client: Client, cfg: Config) -> None:
    data = images.jpeg()
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}, ADMIN):
        async with client.post("/v1/images", data=data, headers=headers) as r:
            assert r.status == 401
            assert r.content_type == "application/problem+json"
    assert await _origin_keys(cfg) == []


async def test_multipart_with_a_control_character_in_a_part_header_is_400(
    client: Client
) -> None:
    # Found by schemathesis: aiohttp raises InvalidHeader here, which was a 500.
    b = "x1y2"
    body = (f'--{b}\r\nContent-Disposition: form-data; name="a\x04b"\r\n\r\nnull\r\n'
            f"--{b}--\r\n").encode("latin-1")
    async with client.post("/v1/images", data=body, headers={
            **AUTH, "Content-Type": f"multipart/form-data; boundary={b}"}) as r:
        assert r.status == 400 and r.content_type == "application/problem+json"


async def test_multipart_without_file_is_400(client: Client) -> None:
    form = aiohttp.FormData()
    form.add_field("image", images.jpeg(), filename="x.jpg")
    status, body = await _upload(client, form)  # type: ignore[arg-type]
    assert status == 400 and "file" in body["detail"]


async def test_declared_oversize_body_is_refused_before_reading(client: Client) -> None:
    big = b"\xff\xd8\xff" + b"\0" * (8 * 1024 * 1024 + 10)
    status, body = await _upload(client, big)
    assert status == 413 and body["status"] == 413


async def test_oversize_body_streamed_slowly_is_cut_off(client: Client, cfg: Config) -> None:
    sent = 0
    chunk = b"\xff\xd8\xff" + b"\0" * (256 * 1024 - 3)

    async def slow_body() -> Any:
        nonlocal sent
        for _ in range(200):  # would be 50 MiB if it were all read
            sent += len(chunk)
            yield chunk
            await asyncio.sleep(0.005)

    try:
        async with client.post("/v1/images", data=slow_body(), headers=AUTH) as r:
            assert r.status == 413
    except aiohttp.ClientError:
        pass  # the server may close the connection while we are still sending
    assert sent < 20 * 1024 * 1024  # refused long before the end
    assert await _origin_keys(cfg) == []


async def test_a_damaged_manifest_is_a_problem_and_an_upload_repairs_it(
    client: Client, cfg: Config
) -> None:
    data = images.jpeg()
    status, first = await _upload(client, data)
    assert status == 201
    async with open_origin(cfg.origin) as o:
        await o.put(K.manifest(first["id"]), b"{not json", "application/json", {})
    async with client.get(f"/v1/images/{first['id']}") as r:
        assert r.status == 502 and r.content_type == "application/problem+json"
    async with client.head(f"/v1/images/{first['id']}", headers=AUTH) as r:
        assert r.status == 404  # so a hash-first client sends the bytes again
    status, again = await _upload(client, data)
    assert status == 201 and [v["blake3"] for v in again["variants"]] == \
        [v["blake3"] for v in first["variants"]]
    async with client.get(f"/v1/images/{first['id']}") as r:
        assert r.status == 200


# -- the S3 origin end to end --------------------------------------------------------------


async def test_upload_into_s3(aiohttp_client: MakeClient, tmp_path: Path,
                              s3_server: S3Server) -> None:
    cfg = make_config(tmp_path, s3_origin_config(s3_server))
    client = await aiohttp_client(create_app(cfg))
    data = images.jpeg()
    status, body = await _upload(client, data)
    assert status == 201
    async with open_origin(cfg.origin) as o:
        info, stored = await o.read(K.variant(body["id"], "w640", "webp"))
        assert info.metadata["blake3"] == content_id(stored)
        assert info.content_type == "image/webp"
    status, _ = await _upload(client, data)
    assert status == 200
