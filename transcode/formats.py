"""Image types judged from the bytes (magic numbers), never from a client's Content-Type."""

from __future__ import annotations

from enum import Enum

from common.errors import UnsupportedMediaType


class SourceFormat(Enum):
    JPEG = "jpeg"
    PNG = "png"
    GIF = "gif"
    WEBP = "webp"
    AVIF = "avif"


MEDIA_TYPES = {"avif": "image/avif", "webp": "image/webp", "jpg": "image/jpeg"}
SOURCE_MEDIA_TYPES = {
    SourceFormat.JPEG: "image/jpeg",
    SourceFormat.PNG: "image/png",
    SourceFormat.GIF: "image/gif",
    SourceFormat.WEBP: "image/webp",
    SourceFormat.AVIF: "image/avif",
}
AVIF_BRANDS = {b"avif", b"avis"}


def sniff(head: bytes) -> SourceFormat:
    """The format the first bytes announce; 415 for anything we do not decode."""
    if head.startswith(b"\xff\xd8\xff"):
        return SourceFormat.JPEG
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return SourceFormat.PNG
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return SourceFormat.GIF
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return SourceFormat.WEBP
    if head[4:8] == b"ftyp" and _is_avif(head):
        return SourceFormat.AVIF
    raise UnsupportedMediaType(
        "not a supported image: send JPEG, PNG, GIF, WebP or AVIF (judged from the bytes)"
    )


def _is_avif(head: bytes) -> bool:
    # ISO BMFF: size(4) 'ftyp' major_brand(4) minor_version(4) compatible_brands(4 each)
    size = int.from_bytes(head[:4], "big")
    if size < 16 or size > len(head):
        size = min(len(head), 64)
    brands = {head[8:12]} | {head[i : i + 4] for i in range(16, size - 3, 4)}
    return bool(brands & AVIF_BRANDS)
