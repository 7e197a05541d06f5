"""One upload -> every variant of the ladder in every format, plus a placeholder.

Decode once at the smallest size the biggest variant allows, then cascade: each variant is
resized from the smallest already-made image that is still big enough.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass

import pyvips

from common.errors import UnprocessableImage
from common.hashing import content_id
from config.schema import TranscodeConfig, Variant
from transcode import steps
from transcode.probe import Header


@dataclass(frozen=True)
class Encoded:
    variant: str
    format: str
    width: int
    height: int
    data: bytes

    @property
    def blake3(self) -> str:
        return content_id(self.data)


@dataclass(frozen=True)
class Ladder:
    width: int  # the source's display size, after EXIF orientation
    height: int
    outputs: tuple[Encoded, ...]
    placeholder: str
    dominant: str


class Deadline:
    def __init__(self, seconds: float) -> None:
        self._end = time.monotonic() + seconds

    def check(self) -> None:
        if time.monotonic() > self._end:
            raise UnprocessableImage("the image took too long to process")


def _needed_box(cfg: TranscodeConfig, w: int, h: int) -> tuple[int, int]:
    """The smallest decode that still covers every variant without upscaling."""
    need_w, need_h = 1, 1
    for v in cfg.variants:
        if v.is_square_crop:
            assert v.height is not None
            scale = max(v.width / w, v.height / h)
            need_w, need_h = max(need_w, round(w * scale)), max(need_h, round(h * scale))
        else:
            need_w = max(need_w, v.width)
            need_h = max(need_h, round(h * v.width / w))
    return min(need_w, w), min(need_h, h)


def _covers(img: pyvips.Image, v: Variant) -> bool:
    if v.is_square_crop:
        assert v.height is not None
        return bool(min(img.width, img.height) >= max(v.width, v.height))
    return bool(img.width >= v.width)


def _sized(base: pyvips.Image, cfg: TranscodeConfig, deadline: Deadline) -> list[pyvips.Image]:
    """Each variant's pixels, in ladder order, cascading from big to small."""
    made: list[pyvips.Image] = []
    order = sorted(range(len(cfg.variants)), key=lambda i: -cfg.variants[i].width)
    out: dict[int, pyvips.Image] = {}
    for i in order:
        v = cfg.variants[i]
        sources = [m for m in made if _covers(m, v)]
        src = min(sources, key=lambda m: m.width) if sources else base
        img = steps.resize_for(src, v).copy_memory()
        if not v.is_square_crop:
            made.append(img)
        out[i] = img
        deadline.check()
    return [out[i] for i in range(len(cfg.variants))]


def _animated(frames: pyvips.Image, cfg: TranscodeConfig, v: Variant) -> pyvips.Image:
    page_h = int(frames.get("page-height")) if "page-height" in frames.get_fields() \
        else frames.height
    count = frames.height // page_h
    pieces = []
    centre = Variant(v.name, v.width, v.height, "centre" if v.crop != "none" else "none")
    for n in range(count):
        frame = frames.crop(0, n * page_h, frames.width, page_h)
        pieces.append(steps.resize_for(frame, centre))
    out = pyvips.Image.arrayjoin(pieces, across=1).copy_memory()
    out.set_type(pyvips.GValue.gint_type, "page-height", pieces[0].height)
    for name in ("delay", "loop"):
        if name in frames.get_fields():
            out.set_type(frames.get_typeof(name), name, frames.get(name))
    return out


def _placeholder(smallest: pyvips.Image) -> tuple[str, str]:
    tiny = steps.fit_width(smallest, 16) if smallest.width > 16 else smallest
    if tiny.hasalpha():
        tiny = tiny.flatten(background=[255, 255, 255])
    data = bytes(steps.strip(tiny).webpsave_buffer(Q=30, keep="none", effort=6))
    uri = "data:image/webp;base64," + base64.b64encode(data).decode("ascii")
    avg = [round(tiny.extract_band(b).avg()) for b in range(3)]
    return uri, "#{:02x}{:02x}{:02x}".format(*avg)


def build(source: steps.Source, header: Header, cfg: TranscodeConfig) -> Ladder:
    """Runs in a worker process: every call into libvips here blocks."""
    deadline = Deadline(cfg.deadline_seconds)
    w, h = header.display_size
    need_w, need_h = _needed_box(cfg, w, h)
    base = steps.to_srgb(steps.autorotate(steps.load(source, header, need_w, need_h)))
    deadline.check()
    stills = _sized(base, cfg, deadline)
    frames = steps.to_srgb(steps.load_frames(source)) if header.animated else None
    outputs: list[Encoded] = []
    for v, img in zip(cfg.variants, stills, strict=True):
        for fmt in cfg.formats:
            src = _animated(frames, cfg, v) if frames is not None and fmt == "webp" else img
            encoded = steps.encode(src, fmt, cfg)
            outputs.append(Encoded(v.name, fmt, img.width, img.height, encoded))
            deadline.check()
    placeholder, dominant = _placeholder(min(stills, key=lambda i: i.width * i.height))
    return Ladder(w, h, tuple(outputs), placeholder, dominant)
