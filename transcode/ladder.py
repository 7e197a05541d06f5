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


def _target(v: Variant, w: int, h: int) -> tuple[int, int]:
    """The size variant `v` gets from a w x h source (a crop: before the crop)."""
    if v.is_square_crop:
        assert v.height is not None
        scale = min(1.0, max(v.width / w, v.height / h))
        return max(v.width, round(w * scale)), max(v.height, round(h * scale))
    return steps.fit_size(w, h, v)


def _needed_box(cfg: TranscodeConfig, w: int, h: int) -> tuple[int, int]:
    """The smallest decode that still covers every variant without upscaling."""
    need_w, need_h = 1, 1
    for v in cfg.variants:
        tw, th = _target(v, w, h)
        need_w, need_h = max(need_w, tw), max(need_h, th)
    return min(need_w, w), min(need_h, h)


def _covers(img: pyvips.Image, v: Variant, target: tuple[int, int]) -> bool:
    if v.is_square_crop:
        assert v.height is not None
        return bool(min(img.width, img.height) >= max(v.width, v.height))
    return bool(img.width >= target[0] and img.height >= target[1])


def _sized(base: pyvips.Image, cfg: TranscodeConfig, deadline: Deadline) -> list[pyvips.Image]:
    """Each variant's pixels, in ladder order, cascading from big to small."""
    made: list[pyvips.Image] = []
    targets = [_target(v, base.width, base.height) for v in cfg.variants]
    order = sorted(range(len(cfg.variants)), key=lambda i: -targets[i][0] * targets[i][1])
    out: dict[int, pyvips.Image] = {}
    for i in order:
        v = cfg.variants[i]
        sources = [m for m in made if _covers(m, v, targets[i])]
        src = min(sources, key=lambda m: m.width) if sources else base
        img = steps.resize_for(src, v).copy_memory()
        if not v.is_square_crop:
            made.append(img)
        out[i] = img
        deadline.check()
    return [out[i] for i in range(len(cfg.variants))]


def _animated(frames: pyvips.Image, v: Variant) -> pyvips.Image:
    """Every frame sized for `v`; a crop's window is found once, on the first frame, and
    applied to all of them, so the animation and the still of the first frame agree."""
    page_h = int(frames.get("page-height")) if "page-height" in frames.get_fields() \
        else frames.height
    count = frames.height // page_h
    window = None
    if v.is_square_crop:
        window = steps.crop_window(steps.cover(frames.crop(0, 0, frames.width, page_h), v), v)
    pieces = []
    for n in range(count):
        frame = frames.crop(0, n * page_h, frames.width, page_h)
        if window is None:
            pieces.append(steps.fit(frame, v))
        else:
            pieces.append(steps.cover(frame, v).crop(*window))
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
        # An animation's still formats take its first frame (encode crops it), so a crop is
        # the same in every format.
        src = _animated(frames, v) if frames is not None else img
        height = int(src.get("page-height")) if "page-height" in src.get_fields() \
            else src.height
        for fmt in cfg.formats:
            encoded = steps.encode(src, fmt, cfg)
            outputs.append(Encoded(v.name, fmt, src.width, height, encoded))
            deadline.check()
    placeholder, dominant = _placeholder(min(stills, key=lambda i: i.width * i.height))
    return Ladder(w, h, tuple(outputs), placeholder, dominant)
