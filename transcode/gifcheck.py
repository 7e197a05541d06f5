"""A GIF's block structure, walked to its trailer.

libvips' GIF loader decodes what it can of a truncated file at every fail level (measured:
a GIF cut at 30% loads as 2 of 6 frames), so completeness is checked here, from the framing
alone (GIF89a spec, sections 17-27): no pixel is decoded.
"""

from __future__ import annotations

from common.errors import UnprocessableImage


def _skip_sub_blocks(data: bytes, pos: int) -> int:
    while True:
        if pos >= len(data):
            raise UnprocessableImage("the GIF is truncated")
        size = data[pos]
        pos += 1 + size
        if size == 0:
            return pos


def check_gif_complete(data: bytes) -> int:
    """Frame count of a structurally complete GIF; 422 if it is cut short or malformed."""
    if len(data) < 13:
        raise UnprocessableImage("the GIF is truncated")
    flags = data[10]
    pos = 13 + (3 * (2 << (flags & 7)) if flags & 0x80 else 0)
    frames = 0
    while pos < len(data):
        block = data[pos]
        if block == 0x3B:  # trailer: the file is whole
            return frames
        if block == 0x21:  # extension: label, then data sub-blocks
            pos = _skip_sub_blocks(data, pos + 2)
        elif block == 0x2C:  # image descriptor, optional local colour table, LZW data
            if pos + 10 > len(data):
                break
            local = data[pos + 9]
            pos += 10 + (3 * (2 << (local & 7)) if local & 0x80 else 0)
            pos = _skip_sub_blocks(data, pos + 1)  # +1: LZW minimum code size
            frames += 1
        else:
            raise UnprocessableImage(f"the GIF is malformed (block 0x{block:02x} at {pos})")
    raise UnprocessableImage("the GIF is truncated")
