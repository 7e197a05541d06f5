"""Pure pieces of transcode: format sniffing and the GIF framing check."""

from __future__ import annotations

import pytest

from common.errors import UnprocessableImage, UnsupportedMediaType
from tests import images
from transcode.formats import SourceFormat, sniff
from transcode.gifcheck import check_gif_complete


def test_complete_gif_counts_frames() -> None:
    assert check_gif_complete(images.animated_gif(frames=6)) == 6
    assert check_gif_complete(images.many_frame_gif(300)) == 300


def test_gif_cut_anywhere_is_refused() -> None:
    data = images.animated_gif(frames=4, size=(60, 40))
    for end in range(0, len(data) - 1, max(1, len(data) // 97)):
        with pytest.raises(UnprocessableImage):
            check_gif_complete(data[:end])


@pytest.mark.parametrize(
    ("data", "fmt"),
    [
        (images.jpeg(), SourceFormat.JPEG),
        (images.png_alpha(), SourceFormat.PNG),
        (images.animated_gif(), SourceFormat.GIF),
        (images.animated_webp(), SourceFormat.WEBP),
        (images.avif(64, 48), SourceFormat.AVIF),
        (images.jpeg() + images.ZIP, SourceFormat.JPEG),  # a polyglot is judged by its head
        (images.heic(images.photo(64, 48)), SourceFormat.HEIF),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00heicmif1", SourceFormat.HEIF),
        (images.tiff_pages(2), SourceFormat.TIFF),
        (images.encode(images.photo(64, 48), "TIFF", compression="tiff_lzw"), SourceFormat.TIFF),
        (images.encode(images.photo(64, 48), "BMP"), SourceFormat.BMP),
    ],
)
def test_sniff_formats(data: bytes, fmt: SourceFormat) -> None:
    assert sniff(data[:64]) is fmt


@pytest.mark.parametrize(
    "data",
    [images.SVG, images.PDF, images.HTML, images.TEXT, images.ZIP, images.ELF, b"", b"\xff",
     b"BM is two letters of text, not a bitmap",
     b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom"],
)
def test_sniff_refuses_non_images(data: bytes) -> None:
    with pytest.raises(UnsupportedMediaType) as err:
        sniff(data[:64])
    assert "HEIC" in err.value.detail and "TIFF" in err.value.detail and "BMP" in err.value.detail
