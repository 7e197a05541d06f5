"""Test images made by the tests themselves: no binary blobs in the repository."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image, ImageDraw

# Transposition that turns the displayed image into what is stored with a given orientation.
STORE_FOR_ORIENTATION = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def photo(width: int = 800, height: int = 400, mode: str = "RGB") -> Image.Image:
    """A picture with structure: gradient, a red block top-left, a blue block bottom-right."""
    img = Image.linear_gradient("L").resize((width, height)).convert(mode)
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 0, width // 4, height // 4), fill=(255, 0, 0) if mode == "RGB" else None)
    if mode == "RGB":
        draw.rectangle((width * 3 // 4, height * 3 // 4, width, height), fill=(0, 0, 255))
    return img


def cut(data: bytes, fraction: float) -> bytes:
    return data[: int(len(data) * fraction)]


def jpeg(img: Image.Image | None = None, **save: object) -> bytes:
    buf = io.BytesIO()
    (img or photo()).save(buf, "JPEG", quality=90, **save)
    return buf.getvalue()


def encode(img: Image.Image, fmt: str, **save: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


def oriented_jpeg(orientation: int, width: int = 800, height: int = 400) -> bytes:
    shown = photo(width, height)
    t = STORE_FOR_ORIENTATION[orientation]
    stored = shown.transpose(t) if t is not None else shown
    exif = Image.Exif()
    exif[0x0112] = orientation
    return jpeg(stored, exif=exif.tobytes())


def gps_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "CameraMaker"
    gps = exif.get_ifd(0x8825)
    gps.update({1: "N", 2: (48.0, 51.0, 29.0), 3: "E", 4: (2.0, 17.0, 40.0)})
    return jpeg(photo(), exif=exif.tobytes())


def png_alpha(width: int = 600, height: int = 400) -> bytes:
    img = photo(width, height).convert("RGBA")
    img.putalpha(Image.linear_gradient("L").resize((width, height)))
    return encode(img, "PNG")


def animated_gif(frames: int = 6, size: tuple[int, int] = (400, 300)) -> bytes:
    imgs = [Image.new("RGB", size, (40 * i % 256, 255 - 30 * i % 256, 90)) for i in range(frames)]
    return encode(imgs[0], "GIF", save_all=True, append_images=imgs[1:], duration=80, loop=0)


def animated_webp(frames: int = 5, size: tuple[int, int] = (400, 300)) -> bytes:
    imgs = [Image.new("RGB", size, (50 * i % 256, 80, 200)) for i in range(frames)]
    return encode(imgs[0], "WEBP", save_all=True, append_images=imgs[1:], duration=100, loop=0)


def avif(width: int = 640, height: int = 480) -> bytes:
    import pyvips

    img = pyvips.Image.new_from_memory(photo(width, height).tobytes(), width, height, 3, "uchar")
    return bytes(img.heifsave_buffer(compression="av1", Q=60, effort=0))


def cmyk_jpeg() -> bytes:
    return jpeg(photo().convert("CMYK"))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims `width` x `height` (a decompression bomb's shape)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


def many_frame_gif(frames: int) -> bytes:
    # Every frame different, so no encoder merges them.
    imgs = [Image.frombytes("L", (2, 2), bytes([i % 256, i // 256, 0, 255])) for i in range(frames)]
    return encode(imgs[0], "GIF", save_all=True, append_images=imgs[1:], duration=20)


SVG = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">' \
      b'<script>alert(1)</script><rect width="10" height="10"/></svg>'
PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
HTML = b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>"
TEXT = b"just some text, not an image\n"
ZIP = b"PK\x03\x04" + b"\x00" * 26 + b"hello"
ELF = b"\x7fELF\x02\x01\x01" + b"\x00" * 57


def noisy(width: int, height: int) -> Image.Image:
    """Incompressible pixels."""
    import os

    return Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))


def noisy_jpeg(width: int = 1600, height: int = 1200) -> bytes:
    """A JPEG of a few MB, bigger than the upload spool threshold."""
    return jpeg(noisy(width, height))


def big_png(width: int = 2000, height: int = 1000) -> bytes:
    import os

    img = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
    return encode(img, "PNG")


def png16(width: int = 400, height: int = 300) -> bytes:
    """A 16-bit-per-channel RGB PNG (libvips writes what Pillow cannot)."""
    import pyvips

    img = pyvips.Image.new_from_memory(photo(width, height).tobytes(), width, height, 3, "uchar")
    img = (img.cast("ushort") * 257).copy(interpretation="rgb16")
    return bytes(img.pngsave_buffer(bitdepth=16))


def p3_jpeg() -> bytes:
    """A JPEG in Display P3 with the profile embedded: the pixels mean something else than
    the same numbers in sRGB."""
    import pyvips

    w, h = 400, 300
    img = pyvips.Image.new_from_memory(photo(w, h).tobytes(), w, h, 3, "uchar")
    img = img.icc_export(output_profile="p3")
    return bytes(img.jpegsave_buffer(Q=92, keep="icc"))


def heic(img: Image.Image, exif: bytes | None = None, **save: object) -> bytes:
    """HEIC (HEVC in HEIF) by pillow-heif's own encoder."""
    import pillow_heif

    buf = io.BytesIO()
    options: dict[str, object] = {"quality": 80, **save}
    if exif:
        options["exif"] = exif
    pillow_heif.from_pillow(img).save(buf, **options)
    return buf.getvalue()


def iphone_heic(width: int = 800, height: int = 400) -> bytes:
    """As an iPhone writes it: pixels stored turned (sensor orientation), an `irot`
    transform, EXIF orientation 6 as well (the decoder must not turn twice), a maker and GPS."""
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "CameraMaker"
    exif.get_ifd(0x8825).update({1: "N", 2: (48.0, 51.0, 29.0), 3: "E", 4: (2.0, 17.0, 40.0)})
    stored = photo(width, height).transpose(STORE_FOR_ORIENTATION[6])  # type: ignore[arg-type]
    return heic(stored, exif.tobytes())


def many_image_heic(count: int) -> bytes:
    import pillow_heif

    imgs = [Image.frombytes("L", (2, 2), bytes([i % 256, i // 256, 0, 255])).convert("RGB")
            for i in range(count)]
    heif = pillow_heif.from_pillow(imgs[0])
    for img in imgs[1:]:
        heif.add_from_pillow(img)
    buf = io.BytesIO()
    heif.save(buf, quality=50)
    return buf.getvalue()


def tiff_pages(pages: int, size: tuple[int, int] = (300, 200), **save: object) -> bytes:
    """The photo first, then pages of other sizes and colours."""
    rest = [Image.new("RGB", (50 + i % 7, 40), (0, 200, i % 256)) for i in range(pages - 1)]
    return encode(photo(*size), "TIFF", save_all=True, append_images=rest, **save)


def bmp(width: int = 400, height: int = 300) -> bytes:
    return encode(photo(width, height), "BMP")


def muted_photo(width: int = 800, height: int = 400) -> Image.Image:
    """Colours a press can print (inside the CMYK gamut), so a CMYK copy can match."""
    img = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 0, width // 4, height // 4), fill=(190, 90, 80))
    draw.rectangle((width * 3 // 4, height * 3 // 4, width, height), fill=(80, 100, 170))
    draw.rectangle((width * 3 // 8, height * 3 // 8, width * 5 // 8, height * 5 // 8),
                   fill=(90, 160, 90))
    return img


def press_cmyk_jpeg(img: Image.Image) -> bytes:
    """`img` separated to CMYK with a press profile (libvips' built-in one), as a print
    workflow does, and saved without the profile (as many such files are)."""
    import pyvips

    rgb = pyvips.Image.new_from_memory(img.tobytes(), img.width, img.height, 3, "uchar")
    cmyk = rgb.copy(interpretation="srgb").icc_export(output_profile="cmyk")
    return bytes(cmyk.jpegsave_buffer(Q=95, keep="none"))
