"""The pipeline's small steps: pure functions of an image and options, no I/O.

load (shrink-on-load) -> autorotate -> to sRGB -> resize or crop -> encode (metadata stripped)
"""

from __future__ import annotations

import math
from typing import Any

import pyvips

from common.errors import UnprocessableImage
from config.schema import TranscodeConfig, Variant
from transcode import foreign
from transcode.formats import FOREIGN, SourceFormat
from transcode.probe import Header

# Strict enough to reject truncated and corrupt data, lenient on harmless warnings.
FAIL_ON = "error"


Source = bytes | str  # the upload's bytes, or the path of the file it was spooled to


def open_image(source: Source, **options: Any) -> pyvips.Image:
    if isinstance(source, bytes):
        return pyvips.Image.new_from_buffer(source, "", **options)
    return pyvips.Image.new_from_file(source, **options)


def load(source: Source, header: Header, need_width: int, need_height: int) -> pyvips.Image:
    """Decode once, straight down to the smallest box the ladder needs, into memory.

    One sequential pass: shrink-on-load where the format has it (JPEG, WebP), then the
    resize, so a 50 MP PNG never sits in memory whole. The full decode is also the
    validation: lazy or shrunk views let truncated files through, a complete decode with
    fail_on does not. The box is in stored orientation; rotation comes after, on the
    small image.
    """
    if header.orientation in (5, 6, 7, 8):
        need_width, need_height = need_height, need_width
    options: dict[str, Any] = {"fail_on": FAIL_ON, "access": "sequential"}
    factor = min(header.width / max(need_width, 1), header.height / max(need_height, 1))
    if header.format is SourceFormat.JPEG and factor >= 2:
        options["shrink"] = 1 << min(3, int(math.log2(factor)))
    elif header.format is SourceFormat.WEBP and factor >= 2 and not header.animated:
        options["scale"] = 1 / factor
    try:
        if header.format in FOREIGN:  # whole decode by its own library, then the same path
            img = foreign.decode(source, header.format, (header.width, header.height))
        else:  # TIFF: the first page only (libvips' default)
            img = open_image(source, **options)
        scale = max(need_width / img.width, need_height / img.height)
        if scale < 1:
            img = _resize(img, max(1, round(img.width * scale)),
                          max(1, round(img.height * scale)))
        return img.copy_memory()
    except pyvips.Error as exc:
        raise UnprocessableImage("the image is corrupt or truncated") from exc


def load_frames(source: Source) -> pyvips.Image:
    """Every frame of an animation, as one tall image with page-height set."""
    try:
        return open_image(source, n=-1, fail_on=FAIL_ON).copy_memory()
    except pyvips.Error as exc:
        raise UnprocessableImage("the animation is corrupt or truncated") from exc


def autorotate(img: pyvips.Image) -> pyvips.Image:
    return img.autorot() if "orientation" in img.get_fields() else img


def to_srgb(img: pyvips.Image) -> pyvips.Image:
    """8-bit sRGB (with alpha if there was alpha), using the embedded ICC profile if any."""
    has_icc = "icc-profile-data" in img.get_fields()
    cmyk = img.interpretation == "cmyk"
    if has_icc or cmyk:
        try:
            # CMYK without a profile: libvips' built-in press profile as the fallback, read
            # relative-colorimetric: its perceptual table shifted a CMYK file's mean colour by
            # up to 11 levels (darker, yellower) against the RGB it was made from; relative
            # stays within 3.
            img = img.icc_transform("srgb", embedded=True,
                                    intent="relative" if cmyk else "perceptual",
                                    input_profile="cmyk" if cmyk else "srgb", depth=8)
        except pyvips.Error:
            # A malformed profile must not sink the upload: fall back to the maths.
            img = img.copy()
            img.remove("icc-profile-data")
            img = img.colourspace("srgb")
    elif img.interpretation != "srgb":
        img = img.colourspace("srgb")
    if img.format != "uchar":
        img = img.cast("uchar")
    if img.bands == 2:  # grey+alpha that colourspace left alone
        img = img.colourspace("srgb")
    return img


def _resize(img: pyvips.Image, width: int, height: int) -> pyvips.Image:
    hscale, vscale = width / img.width, height / img.height
    if img.hasalpha():  # premultiply so transparent pixels do not bleed colour into edges
        out = img.premultiply().resize(hscale, vscale=vscale, kernel="lanczos3")
        return out.unpremultiply().cast("uchar")
    return img.resize(hscale, vscale=vscale, kernel="lanczos3")


def fit_width(img: pyvips.Image, width: int) -> pyvips.Image:
    """Fit to `width`, aspect kept, never upscaled."""
    if img.width <= width:
        return img
    height = max(1, round(img.height * width / img.width))
    return _resize(img, width, height)


def fit_size(width: int, height: int, v: Variant) -> tuple[int, int]:
    """What a fit variant makes of a width x height source: at most v.width wide and, if
    set, v.max_height tall, aspect kept, never upscaled."""
    scale = min(1.0, v.width / width)
    if v.max_height is not None:
        scale = min(scale, v.max_height / height)
    if scale >= 1.0:
        return width, height
    return max(1, round(width * scale)), max(1, round(height * scale))


def fit(img: pyvips.Image, v: Variant) -> pyvips.Image:
    size = fit_size(img.width, img.height, v)
    return img if size == (img.width, img.height) else _resize(img, *size)


def cover(img: pyvips.Image, v: Variant) -> pyvips.Image:
    """Scale down (never up) until the image just covers the v.width x v.height box."""
    assert v.height is not None
    scale = min(1.0, max(v.width / img.width, v.height / img.height))
    if scale >= 1.0:
        return img
    return _resize(img, max(v.width, round(img.width * scale)),
                   max(v.height, round(img.height * scale)))


def crop_window(img: pyvips.Image, v: Variant) -> tuple[int, int, int, int]:
    """left, top, width, height of the crop in a covering image: computed once per source
    and variant, so every format and every frame of an animation gets the same crop."""
    assert v.height is not None
    w, h = min(v.width, img.width), min(v.height, img.height)
    if v.crop == "attention" and (w, h) != (img.width, img.height):
        _, found = img.smartcrop(w, h, interesting="attention", attention_x=True,
                                 attention_y=True)
        left = min(max(0, int(found["attention_x"]) - w // 2), img.width - w)
        top = min(max(0, int(found["attention_y"]) - h // 2), img.height - h)
        return left, top, w, h
    return (img.width - w) // 2, (img.height - h) // 2, w, h


def square_crop(img: pyvips.Image, v: Variant) -> pyvips.Image:
    """Cover a width x height box (never upscaling), then crop to it."""
    img = cover(img, v)
    window = crop_window(img, v)
    return img if window == (0, 0, img.width, img.height) else img.crop(*window)


def resize_for(img: pyvips.Image, v: Variant) -> pyvips.Image:
    return square_crop(img, v) if v.is_square_crop else fit(img, v)


def strip(img: pyvips.Image) -> pyvips.Image:
    """Drop every metadata block that is not needed to draw the pixels (GPS must not leak)."""
    img = img.copy()
    for name in img.get_fields():
        if name.startswith(("exif-", "xmp-", "iptc-", "icc-", "jpeg-thumbnail", "orientation",
                            "gif-comment", "png-comment")):
            img.remove(name)
    return img


def encode(img: pyvips.Image, fmt: str, cfg: TranscodeConfig) -> bytes:
    img = strip(img)
    if fmt == "webp":
        return bytes(img.webpsave_buffer(Q=cfg.webp_quality, keep="none", effort=4))
    if fmt == "jpg":
        if img.hasalpha():
            img = img.flatten(background=[255, 255, 255])
        if "page-height" in img.get_fields() and img.get("page-height") < img.height:
            img = img.crop(0, 0, img.width, img.get("page-height"))
        return bytes(img.jpegsave_buffer(Q=cfg.jpeg_quality, keep="none", optimize_coding=True,
                                         interlace=False))
    if fmt == "avif":
        if "page-height" in img.get_fields() and img.get("page-height") < img.height:
            img = img.crop(0, 0, img.width, img.get("page-height"))
        return bytes(img.heifsave_buffer(Q=cfg.avif_quality, compression="av1",
                                         effort=cfg.avif_effort, keep="none"))
    raise ValueError(f"unknown output format {fmt}")
