"""One variant derived from a stored original, as it runs inside a worker process.

The same pipeline as an upload (probe, checks, the ladder's build), restricted to one
variant in one format, so a derived variant is byte-for-byte what an upload would have made.
"""

from __future__ import annotations

from dataclasses import replace

from config.schema import IngestConfig, TranscodeConfig, Variant
from transcode.job import transcode
from transcode.ladder import Encoded


def derive(source: bytes | str, limits: IngestConfig, cfg: TranscodeConfig, variant: Variant,
           fmt: str) -> tuple[Encoded, float]:
    one = replace(cfg, variants=(variant,), formats=(fmt,))
    _, ladder, seconds = transcode(source, limits, one)
    return ladder.outputs[0], seconds
