"""One signed transform of a stored original, as it runs inside a worker process.

The upload's steps (probe, whole decode with shrink-on-load, autorotate, sRGB, strip,
encode), with the geometry the spec asks for:
  inside   fit in the w x h box, aspect kept, never upscaled
  contain  the same, centred on a w x h canvas (transparent; white in JPEG)
  cover    fill the w x h box (never upscaled), cropped at the gravity
Animated sources give their first frame.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pyvips

from common.errors import UnprocessableImage
from common.transform import Transform
from config.schema import IngestConfig, TranscodeConfig
from transcode import steps
from transcode.formats import SourceFormat
from transcode.gifcheck import check_gif_complete
from transcode.ladder import Encoded
from transcode.probe import probe


def _scaled(img: pyvips.Image, width: int, height: int) -> pyvips.Image:
    if (width, height) == (img.width, img.height):
        return img
    hscale, vscale = width / img.width, height / img.height
    if img.hasalpha():  # premultiplied, so transparent pixels do not bleed into edges
        out = img.premultiply().resize(hscale, vscale=vscale, kernel="lanczos3")
        return out.unpremultiply().cast("uchar")
    return img.resize(hscale, vscale=vscale, kernel="lanczos3")


def target_size(t: Transform, w: int, h: int) -> tuple[int, int]:
    """The size the source is resized to before any crop or pad."""
    if t.fit == "cover":
        assert t.width is not None and t.height is not None
        s = min(1.0, max(t.width / w, t.height / h))
        return max(t.width if s < 1 else 1, round(w * s)), max(t.height if s < 1 else 1,
                                                                round(h * s))
    s = min(1.0, (t.width or w) / w, (t.height or h) / h)
    return max(1, round(w * s)), max(1, round(h * s))


def _crop(img: pyvips.Image, t: Transform) -> pyvips.Image:
    assert t.width is not None and t.height is not None
    cw, ch = min(t.width, img.width), min(t.height, img.height)
    if (cw, ch) == (img.width, img.height):
        return img
    if t.gravity == "attention":
        return img.smartcrop(cw, ch, interesting="attention")
    fx, fy = 0.5, 0.5
    if t.gravity.startswith("fp:"):
        _, x, y = t.gravity.split(":")
        fx, fy = float(x), float(y)
    left = min(max(0, round(fx * img.width - cw / 2)), img.width - cw)
    top = min(max(0, round(fy * img.height - ch / 2)), img.height - ch)
    return img.crop(left, top, cw, ch)


def _pad(img: pyvips.Image, t: Transform) -> pyvips.Image:
    assert t.width is not None and t.height is not None
    if not img.hasalpha():
        img = img.bandjoin(255)
    return img.gravity("centre", max(t.width, img.width), max(t.height, img.height),
                       extend="background", background=[0, 0, 0, 0])


def apply(source: bytes | str, limits: IngestConfig, cfg: TranscodeConfig, t: Transform,
          fmt: str) -> tuple[Encoded, float]:
    t0 = time.perf_counter()
    try:
        header = probe(source, _head(source), limits)
        if header.format is SourceFormat.GIF:
            check_gif_complete(source if isinstance(source, bytes)
                               else Path(source).read_bytes())
        w, h = header.display_size
        tw, th = target_size(t, w, h)
        img = steps.to_srgb(steps.autorotate(steps.load(source, header, tw, th)))
        img = _scaled(img, tw, th)
        if t.fit == "cover":
            img = _crop(img, t)
        elif t.fit == "contain":
            img = _pad(img, t)
        img = img.copy_memory()
        quality = t.quality
        qcfg = cfg if quality is None else replace(
            cfg, webp_quality=quality, jpeg_quality=quality, avif_quality=quality)
        data = steps.encode(img, fmt, qcfg)
    except pyvips.Error as exc:
        raise UnprocessableImage("the image could not be decoded") from exc
    except MemoryError as exc:
        raise UnprocessableImage("the image needs more memory than allowed") from exc
    return (Encoded(t.name, fmt, img.width, img.height, data), time.perf_counter() - t0)


def _head(source: bytes | str) -> bytes:
    if isinstance(source, bytes):
        return source[:64]
    with open(source, "rb") as f:
        return f.read(64)


