"""One upload's transcode, as it runs inside a worker process: read, probe, build."""

from __future__ import annotations

import time
from pathlib import Path

import pyvips

from common.errors import UnprocessableImage
from config.schema import IngestConfig, TranscodeConfig
from transcode.formats import SourceFormat
from transcode.gifcheck import check_gif_complete
from transcode.ladder import Ladder, build
from transcode.probe import Header, probe


def transcode(source: bytes | str, limits: IngestConfig,
              cfg: TranscodeConfig) -> tuple[Header, Ladder, float]:
    """`source` is the upload's bytes, or the path of the file it was spooled to (so big
    bodies do not travel through the pool's pipe)."""
    t0 = time.perf_counter()
    try:
        header = probe(source, _head(source), limits)
        if header.format is SourceFormat.GIF:  # libvips accepts cut GIFs: check the framing
            check_gif_complete(source if isinstance(source, bytes)
                               else Path(source).read_bytes())
        ladder = build(source, header, cfg)
    except pyvips.Error as exc:  # libvips errors stop here, translated once
        raise UnprocessableImage("the image could not be decoded") from exc
    except MemoryError as exc:
        raise UnprocessableImage("the image needs more memory than allowed") from exc
    return header, ladder, time.perf_counter() - t0


def _head(source: bytes | str) -> bytes:
    if isinstance(source, bytes):
        return source[:64]
    with open(source, "rb") as f:
        return f.read(64)
