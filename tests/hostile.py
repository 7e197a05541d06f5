"""A corpus of hostile and awkward inputs, made by code (no binary blobs), each with the
status the contract promises for it."""

from __future__ import annotations

import io
import os
import struct

from PIL import Image

from tests import images


def _jpeg_with_segment(marker: int, payload: bytes) -> bytes:
    """A valid JPEG with one more APPn segment right after SOI."""
    data = images.jpeg(images.photo(320, 200))
    seg = bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload
    return data[:2] + seg + data[2:]


def _jpeg_declaring(width: int, height: int) -> bytes:
    """A small baseline JPEG whose SOF0 claims another size."""
    data = bytearray(images.jpeg(images.photo(64, 64)))
    i = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, i + 5, height, width)
    return bytes(data)


def _exif_orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return images.jpeg(images.photo(300, 200), exif=exif.tobytes())


def _progressive(width: int, height: int) -> bytes:
    img = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=80, progressive=True)
    return buf.getvalue()


def _palette_alpha() -> bytes:
    img = images.photo(300, 200).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    img.info["transparency"] = 0
    return images.encode(img, "PNG", transparency=0)


def _grey_alpha() -> bytes:
    img = images.photo(300, 200).convert("LA")
    return images.encode(img, "PNG")


def _ispe(data: bytes, width: int, height: int) -> bytes:
    """The HEIF image spatial extents box rewritten to claim another size."""
    out = bytearray(data)
    i = out.index(b"ispe")
    struct.pack_into(">II", out, i + 8, width, height)
    return bytes(out)


def _tiff_declaring(data: bytes, width: int, height: int) -> bytes:
    """A little-endian TIFF whose first IFD claims another ImageWidth/ImageLength."""
    out = bytearray(data)
    ifd = struct.unpack_from("<I", out, 4)[0]
    for n in range(struct.unpack_from("<H", out, ifd)[0]):
        entry = ifd + 2 + 12 * n
        tag = struct.unpack_from("<H", out, entry)[0]
        if tag in (256, 257):
            struct.pack_into("<HHII", out, entry, tag, 4, 1, width if tag == 256 else height)
    return bytes(out)


def _tiff_ifd_loop(data: bytes) -> bytes:
    """The first IFD names itself as the next one: a reader that follows it never ends."""
    out = bytearray(data)
    ifd = struct.unpack_from("<I", out, 4)[0]
    struct.pack_into("<I", out, ifd + 2 + 12 * struct.unpack_from("<H", out, ifd)[0], ifd)
    return bytes(out)


def _bmp_declaring(data: bytes, width: int, height: int) -> bytes:
    out = bytearray(data)
    struct.pack_into("<ii", out, 18, width, height)
    return bytes(out)


def new_formats() -> list[tuple[str, bytes, int]]:
    heic = images.iphone_heic(320, 200)
    tiff = images.tiff_pages(1, (320, 200))
    bmp = images.bmp(320, 200)
    items: list[tuple[str, bytes, int]] = []
    for name, data in (("heic", heic), ("tiff", tiff), ("bmp", bmp)):
        for cut in (0.05, 0.5, 0.9, 0.99):
            items.append((f"truncated-{name}-{cut}", images.cut(data, cut), 422))
    items += [
        ("heic-declares-100000x100000", _ispe(heic, 100_000, 100_000), 422),
        ("heic-declares-less-than-it-holds", _ispe(heic, 16, 16), 422),
        ("heic-declares-more-than-it-holds", _ispe(heic, 8000, 6000), 422),
        ("heic-300-images", images.many_image_heic(300), 422),
        ("tiff-declares-100000x100000", _tiff_declaring(tiff, 100_000, 100_000), 422),
        ("tiff-declares-more-than-it-holds", _tiff_declaring(tiff, 8000, 6000), 422),
        ("tiff-300-pages", images.tiff_pages(300, (8, 8)), 422),
        ("tiff-ifd-loop", _tiff_ifd_loop(tiff), 201),  # the first page is whole: served
        ("tiff-60mp-of-zeros-deflated", images.encode(
            Image.new("L", (10_000, 6_000)), "TIFF", compression="tiff_deflate"), 422),
        ("bmp-declares-100000x100000", _bmp_declaring(bmp, 100_000, 100_000), 422),
        ("bmp-declares-more-than-it-holds", _bmp_declaring(bmp, 4000, 3000), 422),
        ("heic-magic-random", heic[:32] + bytes(range(256)) * 8, 422),
        ("tiff-magic-random", b"II*\x00" + bytes(range(256)) * 8, 422),
    ]
    return items


def corpus() -> list[tuple[str, bytes, int]]:
    jpeg = images.jpeg(images.photo(1200, 800))
    png = images.png_alpha()
    webp = images.encode(images.photo(), "WEBP")
    gif = images.animated_gif()
    items: list[tuple[str, bytes, int]] = []
    for name, data in (("jpeg", jpeg), ("png", png), ("webp", webp), ("gif", gif)):
        for cut in (0.05, 0.5, 0.9, 0.99):
            items.append((f"truncated-{name}-{cut}", images.cut(data, cut), 422))
    items += [
        ("png-declares-100000x100000", images.png_declaring(100_000, 100_000), 422),
        ("png-declares-1x1000000", images.png_declaring(1, 1_000_000), 422),
        ("png-declares-1000000x1", images.png_declaring(1_000_000, 1), 422),
        ("jpeg-declares-65000x65000", _jpeg_declaring(65_000, 65_000), 422),
        ("progressive-jpeg-48mp", _progressive(8000, 6000), 201),
        ("gif-3000-frames", images.many_frame_gif(3000), 422),
        ("zero-bytes", b"", 400),
        ("one-byte", b"\xff", 415),
        ("jpeg-magic-random", b"\xff\xd8\xff\xe0" + os.urandom(5000), 422),
        ("svg", images.SVG, 415),
        ("svg-no-script", b'<svg xmlns="http://www.w3.org/2000/svg"><rect/></svg>', 415),
        ("pdf", images.PDF, 415),
        ("html", images.HTML, 415),
        ("zip", images.ZIP, 415),
        ("elf", images.ELF, 415),
        ("jpeg+zip-polyglot", images.jpeg(images.photo(300, 200)) + images.ZIP * 20, 201),
        ("cmyk", images.cmyk_jpeg(), 201),
        ("16-bit-png", images.png16(), 201),
        ("palette+alpha", _palette_alpha(), 201),
        ("grey+alpha", _grey_alpha(), 201),
        ("malformed-icc", _jpeg_with_segment(0xE2, b"ICC_PROFILE\x00\x01\x01" + os.urandom(300)),
         201),
        ("malformed-exif", _jpeg_with_segment(0xE1, b"Exif\x00\x00" + os.urandom(200)), 201),
        ("exif-orientation-0", _exif_orientation(0), 201),
        ("exif-orientation-9", _exif_orientation(9), 201),
        ("exif-orientation-65535", _exif_orientation(65535), 201),
        ("iphone-heic", images.iphone_heic(), 201),
        ("tiff-3-pages", images.tiff_pages(3), 201),
        ("bmp", images.bmp(), 201),
    ]
    return items + new_formats()
