"""The origin interface both backends implement, and what a read hands back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

from common.errors import RangeNotSatisfiable

CHUNK = 256 * 1024


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    content_type: str
    metadata: dict[str, str] = field(default_factory=dict)


class OriginReader(Protocol):
    """An open object: `info` describes the whole object, `start`/`end` the bytes sent."""

    info: ObjectInfo
    start: int
    end: int  # exclusive

    def iter_chunks(self) -> AsyncIterator[bytes]: ...


class Origin(Protocol):
    async def put(
        self, key: str, body: bytes | BinaryIO, content_type: str, metadata: dict[str, str]
    ) -> None: ...

    def open(
        self, key: str, byte_range: slice | None = None
    ) -> AbstractAsyncContextManager[OriginReader]: ...

    async def read(self, key: str) -> tuple[ObjectInfo, bytes]: ...

    async def head(self, key: str) -> ObjectInfo: ...

    async def create(self, key: str, body: bytes, content_type: str) -> bool:
        """Store `body` only if `key` does not exist yet, atomically; False if it did.
        What orders the purge log without clocks (S3: `If-None-Match: *`)."""
        ...

    async def delete(self, key: str) -> None: ...

    async def list(self, prefix: str, start_after: str = "", limit: int = 1000) -> list[str]: ...

    async def ping(self) -> None: ...


def resolve_range(byte_range: slice | None, size: int) -> tuple[int, int]:
    """A slice as aiohttp's `request.http_range` gives it -> [start, end) within `size`.

    slice(None, None) is everything, slice(a, b) bytes a..b-1, slice(-n, None) the last n.
    """
    if byte_range is None or (byte_range.start is None and byte_range.stop is None):
        return 0, size
    start, stop = byte_range.start, byte_range.stop
    if start is not None and start < 0:  # suffix: RFC 9110 §14.1.1
        return max(0, size + start), size
    start = start or 0
    stop = size if stop is None else min(stop, size)
    if start >= size or stop <= start:
        raise RangeNotSatisfiable(f"range not satisfiable for {size} bytes",
                                  headers={"Content-Range": f"bytes */{size}"})
    return start, stop


def range_header(byte_range: slice) -> str:
    start, stop = byte_range.start, byte_range.stop
    if start is not None and start < 0:
        return f"bytes={start}"
    return f"bytes={start or 0}-" + ("" if stop is None else str(stop - 1))
