"""Read an image's header only and check it against the limits, before any full decode."""

from __future__ import annotations

from dataclasses import dataclass

import pyvips

from common.errors import UnprocessableImage
from config.schema import IngestConfig
from transcode import foreign
from transcode.formats import ANIMATED, FOREIGN, SourceFormat, sniff


@dataclass(frozen=True)
class Header:
    format: SourceFormat
    width: int  # as stored, before EXIF orientation
    height: int  # of one frame
    frames: int  # animation frames, TIFF pages or HEIF top-level images: all count for limits
    orientation: int

    @property
    def animated(self) -> bool:
        return self.frames > 1 and self.format in ANIMATED

    @property
    def display_size(self) -> tuple[int, int]:
        # EXIF orientations 5-8 swap the axes (the image is stored rotated by 90 degrees).
        if self.orientation in (5, 6, 7, 8):
            return self.height, self.width
        return self.width, self.height


def probe(source: bytes | str, head: bytes, limits: IngestConfig) -> Header:
    """`head`: the first bytes, for the type; `source`: the bytes or their file."""
    fmt = sniff(head[:64])
    if fmt in FOREIGN:
        fh = foreign.read_header(source, fmt)
        header = Header(fmt, fh.width, fh.height, fh.pages, 1)  # HEIF: already upright
        check_limits(header, limits)
        return header
    try:
        if isinstance(source, bytes):
            img = pyvips.Image.new_from_buffer(source, "", access="sequential")
        else:
            img = pyvips.Image.new_from_file(source, access="sequential")
        frames = int(img.get("n-pages")) if "n-pages" in img.get_fields() else 1
        orientation = int(img.get("orientation")) if "orientation" in img.get_fields() else 1
        header = Header(fmt, img.width, img.height, max(1, frames), orientation)
    except pyvips.Error as exc:
        raise UnprocessableImage(f"cannot read the {fmt.value} header: corrupt or truncated") \
            from exc
    check_limits(header, limits)
    return header


def check_limits(h: Header, limits: IngestConfig) -> None:
    if max(h.width, h.height) > limits.max_dimension:
        raise UnprocessableImage(
            f"{h.width}x{h.height} exceeds the {limits.max_dimension} px limit per side")
    if h.frames > limits.max_frames:
        raise UnprocessableImage(f"{h.frames} frames exceed the limit of {limits.max_frames}")
    if h.width * h.height * h.frames > limits.max_pixels:
        raise UnprocessableImage(
            f"{h.width}x{h.height}x{h.frames} frames = {h.width * h.height * h.frames} pixels "
            f"exceeds the limit of {limits.max_pixels}")
