"""Formats that libvips, as pyvips-binary ships it, does not decode: read here, handed over
to the pipeline as pixels.

HEIF/HEIC goes through pillow-heif (its own libheif + libde265: pyvips-binary's libheif has no
HEVC decoder), BMP through Pillow restricted to its BMP plugin. Only the primary image is
decoded. libheif applies the HEIF transforms (irot/imir) itself, so the pixels come upright
and the EXIF orientation is ignored, as the HEIF spec asks. Only the ICC profile travels
with the pixels (for the conversion to sRGB): never EXIF, XMP or GPS.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import cache
from typing import Any, BinaryIO

import pillow_heif
import pyvips
from PIL import Image

from common.errors import UnprocessableImage
from transcode.formats import SourceFormat

# What the decoders raise on corrupt, truncated or lying input (pillow-heif maps libheif
# errors to these; Pillow raises OSError/SyntaxError on bad BMP data).
DECODE_ERRORS = (ValueError, RuntimeError, OSError, SyntaxError, EOFError, KeyError,
                 IndexError, Image.DecompressionBombError)


@dataclass(frozen=True)
class ForeignHeader:
    width: int  # displayed: HEIF transforms already applied
    height: int
    pages: int  # top-level images (HEIF), 1 for BMP


def _open(source: bytes | str) -> BinaryIO:
    return io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")


def read_header(source: bytes | str, fmt: SourceFormat) -> ForeignHeader:
    """The container only: no pixel is decoded here."""
    try:
        with _open(source) as fp:
            if fmt is SourceFormat.HEIF:
                heif = pillow_heif.open_heif(fp)
                width, height = heif.size
                return ForeignHeader(width, height, max(1, len(heif)))
            with Image.open(fp, formats=["BMP"]) as im:
                width, height = im.size
                return ForeignHeader(width, height, 1)
    except DECODE_ERRORS as exc:
        raise UnprocessableImage(f"cannot read the {fmt.value} header: corrupt or truncated") \
            from exc


def decode(source: bytes | str, fmt: SourceFormat, expect: tuple[int, int]) -> pyvips.Image:
    """The primary image's pixels, 8 bits per sample, with its ICC profile if any.

    `expect`: the size the header announced (and the limits were checked against); a
    decoder that yields anything else is refused, so a lying header cannot smuggle a bigger
    image past the limits.
    """
    try:
        with _open(source) as fp:
            if fmt is SourceFormat.HEIF:
                img, icc = _decode_heif(fp)
            else:
                img, icc = _decode_bmp(fp)
    except DECODE_ERRORS as exc:
        raise UnprocessableImage(f"the {fmt.value} image is corrupt or truncated") from exc
    if (img.width, img.height) != expect:
        raise UnprocessableImage(
            f"the {fmt.value} image is {img.width}x{img.height}, its header said "
            f"{expect[0]}x{expect[1]}")
    if icc:
        img.set_type(pyvips.GValue.blob_type, "icc-profile-data", icc)
    return img


def _decode_heif(fp: BinaryIO) -> tuple[pyvips.Image, bytes | None]:
    heif = pillow_heif.open_heif(fp, convert_hdr_to_8bit=True)
    primary = heif[heif.primary_index]
    icc = primary.info.get("icc_profile")
    icc = bytes(icc) if isinstance(icc, bytes) and icc else _nclx_profile(primary.info)
    width, height = primary.size
    bands = len(primary.mode)
    if primary.mode not in ("RGB", "RGBA", "L", "LA"):
        pil = primary.to_pillow().convert("RGBA" if primary.has_alpha else "RGB")
        return _from_pillow(pil), icc
    data = primary.data  # decodes here; remove_stride (the default) makes rows contiguous
    if primary.stride != width * bands:
        return _from_pillow(primary.to_pillow()), icc
    img = pyvips.Image.new_from_memory(data, width, height, bands, "uchar")
    return _interpret(img), icc


# ITU-T H.273 colour primaries 12: SMPTE EG 432-1, Display P3 (what iPhones shoot in).
P3_PRIMARIES = 12


def _nclx_profile(info: dict[str, Any]) -> bytes | None:
    """A HEIF may state its colour space as nclx code points instead of an ICC profile: give
    Display P3 its profile (libvips' built-in one), so it is not taken for sRGB."""
    nclx = info.get("nclx_profile")
    if isinstance(nclx, dict) and nclx.get("color_primaries") == P3_PRIMARIES:
        return _p3_icc()
    return None


@cache
def _p3_icc() -> bytes:
    probe = pyvips.Image.black(1, 1, bands=3).copy(interpretation="srgb")
    return bytes(probe.icc_transform("p3", input_profile="srgb").get("icc-profile-data"))


def _decode_bmp(fp: BinaryIO) -> tuple[pyvips.Image, bytes | None]:
    with Image.open(fp, formats=["BMP"]) as im:
        im.load()
        alpha = im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info
        pil = im.convert("RGBA" if alpha else "RGB")
        return _from_pillow(pil), im.info.get("icc_profile")


def _from_pillow(pil: Image.Image) -> pyvips.Image:
    bands = len(pil.getbands())
    img = pyvips.Image.new_from_memory(pil.tobytes(), pil.width, pil.height, bands, "uchar")
    return _interpret(img)


def _interpret(img: pyvips.Image) -> pyvips.Image:
    # pyvips keeps the decoder's buffer alive for as long as any image derived from it.
    kind: Any = "srgb" if img.bands >= 3 else "b-w"
    return img.copy(interpretation=kind)
