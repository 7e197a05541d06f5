"""Inputs beyond the web formats (HEIC, TIFF, BMP) and the pipeline's geometry and colour,
through the real ingest app on loopback, checked by decoding what it stored."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import pyvips
from aiohttp.test_utils import TestClient
from PIL import Image, ImageDraw

from config import Config
from config.schema import Variant
from ingest.app import create_app
from origin import keys as K
from origin import open_origin
from tests import hostile, images
from tests.helpers import AUTH, make_config

Client = TestClient[Any, Any]
MakeClient = Callable[..., Awaitable[Client]]


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return make_config(tmp_path)


@pytest.fixture
async def client(aiohttp_client: MakeClient, cfg: Config) -> Client:
    return await aiohttp_client(create_app(cfg))


async def _upload(client: Client, data: bytes) -> tuple[int, dict[str, Any]]:
    async with client.post("/v1/images", data=data, headers=AUTH) as r:
        return r.status, await r.json(content_type=None)


async def _variant(cfg: Config, image_id: str, name: str, ext: str) -> bytes:
    async with open_origin(cfg.origin) as o:
        return (await o.read(K.variant(image_id, name, ext)))[1]


def _vips(data: bytes, **kw: Any) -> pyvips.Image:
    return pyvips.Image.new_from_buffer(data, "", **kw)


def _rgb(img: pyvips.Image) -> pyvips.Image:
    if img.hasalpha():
        img = img.flatten(background=[255, 255, 255])
    return img.colourspace("srgb")


def _is_red(px: list[float]) -> bool:
    return px[0] > 180 and px[1] < 80 and px[2] < 80


def _is_blue(px: list[float]) -> bool:
    return px[2] > 180 and px[0] < 80 and px[1] < 80


def _upright(img: pyvips.Image) -> None:
    """images.photo as shown: red top-left, blue bottom-right."""
    w, h = img.width, img.height
    assert _is_red(img(w // 16, h // 16)), img(w // 16, h // 16)
    assert _is_blue(img(w - 1 - w // 16, h - 1 - h // 16)), img(w - 1 - w // 16, h - 1 - h // 16)


# -- HEIC, TIFF, BMP ------------------------------------------------------------------------


async def test_iphone_heic_gives_upright_variants_without_exif(client: Client,
                                                               cfg: Config) -> None:
    data = images.iphone_heic(800, 400)
    source = _vips(data)  # the container does carry EXIF with orientation 6 and GPS
    assert "exif-ifd3-GPSLatitude" in source.get_fields()
    assert (source.width, source.height) == (800, 400)  # irot: shown landscape
    status, body = await _upload(client, data)
    assert status == 201, body
    assert (body["format"], body["width"], body["height"]) == ("heif", 800, 400)
    for v in body["variants"]:
        stored = await _variant(cfg, body["id"], v["name"], v["format"])
        img = _vips(stored)
        assert (img.width, img.height) == (v["width"], v["height"])
        assert not [f for f in img.get_fields() if f.startswith(("exif", "xmp", "iptc"))], v
        assert b"CameraMaker" not in stored
        if v["name"].startswith("w"):
            assert v["width"] == min(int(v["name"][1:]), 800)
            assert abs(v["height"] - v["width"] / 2) <= 1  # landscape: turned once, not twice
            _upright(img)


async def test_heic_alpha_is_kept_and_its_icc_profile_used(client: Client, cfg: Config) -> None:
    # The photo's sRGB colours written as Display P3 numbers, with the P3 profile attached:
    # read right, the red block is sRGB red again; with the profile ignored it is pinkish.
    p3 = _vips(images.p3_jpeg())
    pil = Image.frombytes("RGB", (p3.width, p3.height), p3.write_to_memory()).convert("RGBA")
    alpha = Image.new("L", pil.size, 255)
    alpha.paste(0, (150, 100, 250, 200))  # a transparent hole in the middle
    pil.putalpha(alpha)
    data = images.heic(pil, icc_profile=p3.get("icc-profile-data"))
    status, body = await _upload(client, data)
    assert status == 201, body
    webp = _vips(await _variant(cfg, body["id"], "w320", "webp"))
    assert webp.hasalpha() and (webp.width, webp.height) == (320, 240)
    assert webp(160, 120)[3] < 20 and webp(10, 10)[3] > 235
    jpg = _vips(await _variant(cfg, body["id"], "w320", "jpg"))
    red = jpg(10, 10)
    assert red[0] > 235 and red[1] < 30 and red[2] < 30, red


async def test_heic_in_display_p3_stated_as_nclx_is_converted(client: Client,
                                                              cfg: Config) -> None:
    # No ICC profile: the colour space is given as H.273 code points (primaries 12 = P3).
    p3 = _vips(images.p3_jpeg())
    pil = Image.frombytes("RGB", (p3.width, p3.height), p3.write_to_memory())
    data = images.heic(pil, color_primaries=12, transfer_characteristics=13,
                       matrix_coefficients=6, full_range_flag=1)
    status, body = await _upload(client, data)
    assert status == 201, body
    red = _vips(await _variant(cfg, body["id"], "w320", "jpg"))(10, 10)
    assert red[0] > 235 and red[1] < 30 and red[2] < 30, red  # taken for sRGB: g ~ 50


async def test_heic_bigger_than_the_spool_threshold_is_read_from_its_file(
        client: Client, cfg: Config) -> None:
    data = images.heic(images.noisy(1200, 1000), quality=90)
    assert len(data) > cfg.ingest.spool_bytes
    status, body = await _upload(client, data)
    assert status == 201, body
    assert (body["width"], body["height"]) == (1200, 1000)
    img = _vips(await _variant(cfg, body["id"], "w640", "webp"))
    assert (img.width, img.height) == (640, 533)


async def test_multi_page_tiff_gives_the_first_page(client: Client, cfg: Config) -> None:
    status, body = await _upload(client, images.tiff_pages(3, (600, 300),
                                                           compression="tiff_deflate"))
    assert status == 201, body
    assert (body["format"], body["width"], body["height"]) == ("tiff", 600, 300)
    for name in ("w320", "s150"):
        for ext in ("webp", "jpg"):
            img = _rgb(_vips(await _variant(cfg, body["id"], name, ext)))
            assert "n-pages" not in img.get_fields() or img.get("n-pages") == 1
            if name == "w320":
                assert (img.width, img.height) == (320, 160)
                _upright(img)


async def test_bmp_is_accepted(client: Client, cfg: Config) -> None:
    status, body = await _upload(client, images.bmp(400, 300))
    assert status == 201, body
    assert (body["format"], body["width"], body["height"]) == ("bmp", 400, 300)
    img = _vips(await _variant(cfg, body["id"], "w320", "jpg"))
    assert (img.width, img.height) == (320, 240)
    _upright(img)


async def test_415_lists_what_is_accepted(client: Client) -> None:
    status, body = await _upload(client, images.SVG)
    assert status == 415
    for name in ("JPEG", "PNG", "GIF", "WebP", "AVIF", "HEIC", "TIFF", "BMP"):
        assert name in body["detail"], body


HOSTILE = hostile.new_formats()


@pytest.mark.parametrize(("name", "data", "status"), HOSTILE, ids=[h[0] for h in HOSTILE])
async def test_hostile_heic_tiff_bmp_get_their_answer_and_refusals_store_nothing(
        client: Client, cfg: Config, name: str, data: bytes, status: int) -> None:
    got, body = await _upload(client, data)
    assert got == status, (name, body)
    if status >= 400:
        assert body["detail"]
        async with open_origin(cfg.origin) as o:
            assert not [k for p in ("originals/", "variants/", "manifests/") for k in
                        await o.list(p)]


# -- colour ---------------------------------------------------------------------------------


def _mean(img: pyvips.Image) -> list[float]:
    return [_rgb(img).extract_band(b).avg() for b in range(3)]


async def test_cmyk_jpeg_without_profile_keeps_its_colours(client: Client, cfg: Config) -> None:
    shown = images.muted_photo(800, 400)
    status, body = await _upload(client, images.press_cmyk_jpeg(shown))
    assert status == 201, body
    want = _mean(_vips(images.jpeg(shown)))
    for ext in ("jpg", "webp"):
        got = _mean(_vips(await _variant(cfg, body["id"], "w640", ext)))
        assert all(abs(g - w) < 4 for g, w in zip(got, want, strict=True)), (ext, got, want)


# -- geometry -------------------------------------------------------------------------------


def _similar(a: pyvips.Image, b: pyvips.Image) -> float:
    """Mean absolute difference of the two pictures, downscaled to 32 x 32, in 0-255 levels."""
    def small(img: pyvips.Image) -> pyvips.Image:
        img = _rgb(img)
        return img.resize(32 / img.width, vscale=32 / img.height)
    return float((small(a) - small(b)).abs().avg())


def _subject_gif() -> bytes:
    """Wide frames with the subject (a moving disc) far right: a centre crop misses it."""
    frames = []
    for i in range(4):
        img = Image.new("RGB", (400, 200), (40, 40, 40))
        ImageDraw.Draw(img).ellipse((300 + 4 * i, 60, 380 + 4 * i, 140), fill=(250, 220, 0))
        frames.append(img)
    return images.encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=80,
                         loop=0)


def _subject_png() -> bytes:
    img = Image.new("RGBA", (400, 200), (0, 0, 0, 0))
    ImageDraw.Draw(img).ellipse((300, 60, 380, 140), fill=(250, 30, 30, 255))
    ImageDraw.Draw(img).rectangle((10, 10, 60, 190), fill=(20, 20, 200, 120))
    return images.encode(img, "PNG")


@pytest.mark.parametrize("maker", [_subject_png, _subject_gif], ids=["transparent", "animated"])
async def test_s150_is_the_same_crop_in_every_format(client: Client, cfg: Config,
                                                     maker: Callable[[], bytes]) -> None:
    status, body = await _upload(client, maker())
    assert status == 201, body
    webp = _vips(await _variant(cfg, body["id"], "s150", "webp"))  # first frame
    jpg = _vips(await _variant(cfg, body["id"], "s150", "jpg"))
    assert (webp.width, webp.height) == (jpg.width, jpg.height) == (150, 150)
    assert _similar(webp, jpg) < 6, _similar(webp, jpg)


async def test_max_height_caps_tall_sources(tmp_path: Path, aiohttp_client: MakeClient) -> None:
    base = make_config(tmp_path)
    ladder = (Variant("w640", 640, None, "none", max_height=400),
              Variant("w320", 320, None, "none"),
              Variant("s150", 150, 150, "attention"))
    cfg = replace(base, transcode=replace(base.transcode, variants=ladder))
    client = await aiohttp_client(create_app(cfg))
    status, body = await _upload(client, images.jpeg(images.photo(500, 4000)))  # 1:8
    assert status == 201, body
    sizes = {(v["name"], v["format"]): (v["width"], v["height"]) for v in body["variants"]}
    for ext in ("webp", "jpg"):
        img = _vips(await _variant(cfg, body["id"], "w640", ext))
        assert (img.width, img.height) == sizes[("w640", ext)] == (50, 400)
        _upright(img.resize(8, vscale=1))  # the whole picture, only smaller
        img = _vips(await _variant(cfg, body["id"], "w320", ext))  # no cap: as before
        assert (img.width, img.height) == (320, 2560)
