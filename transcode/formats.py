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
    HEIF = "heif"  # HEIC (HEVC in HEIF): iPhone photos
    TIFF = "tiff"
    BMP = "bmp"


MEDIA_TYPES = {"avif": "image/avif", "webp": "image/webp", "jpg": "image/jpeg"}
SOURCE_MEDIA_TYPES = {
    SourceFormat.JPEG: "image/jpeg",
    SourceFormat.PNG: "image/png",
    SourceFormat.GIF: "image/gif",
    SourceFormat.WEBP: "image/webp",
    SourceFormat.AVIF: "image/avif",
    SourceFormat.HEIF: "image/heic",
    SourceFormat.TIFF: "image/tiff",
    SourceFormat.BMP: "image/bmp",
}
# Formats whose extra frames are an animation; TIFF pages and HEIF images are not.
ANIMATED = {SourceFormat.GIF, SourceFormat.WEBP, SourceFormat.AVIF}
# Decoded outside libvips (pyvips-binary has no HEVC decoder and no BMP loader).
FOREIGN = {SourceFormat.HEIF, SourceFormat.BMP}
ACCEPTED = "JPEG, PNG, GIF, WebP, AVIF, HEIC/HEIF, TIFF or BMP"

AVIF_BRANDS = {b"avif", b"avis"}
# HEVC-coded HEIF brands (ISO/IEC 23008-12 Annex B), and the generic image/sequence brands.
HEIC_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"}
HEIF_BRANDS = {b"mif1", b"msf1"}
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF
BMP_DIB_SIZES = {12, 40, 52, 56, 64, 108, 124}  # BITMAPCOREHEADER .. BITMAPV5HEADER


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
    if head[4:8] == b"ftyp":
        brands = _brands(head)
        if brands & AVIF_BRANDS:
            return SourceFormat.AVIF
        if brands & (HEIC_BRANDS | HEIF_BRANDS):
            return SourceFormat.HEIF
    if head[:4] in TIFF_MAGIC:
        return SourceFormat.TIFF
    if _is_bmp(head):
        return SourceFormat.BMP
    raise UnsupportedMediaType(
        f"not a supported image: send {ACCEPTED} (judged from the bytes)")


def _brands(head: bytes) -> set[bytes]:
    # ISO BMFF: size(4) 'ftyp' major_brand(4) minor_version(4) compatible_brands(4 each)
    size = int.from_bytes(head[:4], "big")
    if size < 16 or size > len(head):
        size = min(len(head), 64)
    return {head[8:12]} | {head[i : i + 4] for i in range(16, size - 3, 4)}


def _is_bmp(head: bytes) -> bool:
    # "BM" alone is two bytes of text: also ask for the zero reserved words and a known
    # DIB header size (BITMAPFILEHEADER, then the DIB header's own size field).
    return (len(head) >= 18 and head[:2] == b"BM" and head[6:10] == b"\x00" * 4
            and int.from_bytes(head[14:18], "little") in BMP_DIB_SIZES)
