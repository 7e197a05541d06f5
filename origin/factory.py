"""One origin per process, made from config and closed when the process ends."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from config.schema import OriginConfig
from origin.base import Origin
from origin.fs import FsOrigin
from origin.s3 import S3Origin


@asynccontextmanager
async def open_origin(cfg: OriginConfig) -> AsyncIterator[Origin]:
    if cfg.kind == "s3":
        async with S3Origin.connect(cfg) as s3:
            yield s3
    else:
        yield FsOrigin(cfg.path)
