"""Read an upload body as it streams in: enforce the byte limit, hash, spool to disk.

The limit is checked on Content-Length first and then on every chunk, so an oversized body
is refused as soon as it crosses the line, without reading the rest.
"""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, cast

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from common.errors import BadRequest, PayloadTooLarge
from common.hashing import Hasher

CHUNK = 64 * 1024


@dataclass
class Upload:
    """The received bytes: in memory when small, else in a temp file. `close()` removes it."""

    id: str
    size: int
    head: bytes
    _memory: bytearray | None = None
    _file: BinaryIO | None = field(default=None, repr=False)

    def source(self) -> bytes | str:
        """What a transcode worker reads: the bytes, or the spool file's path."""
        if self._memory is not None:
            return bytes(self._memory)
        assert self._file is not None  # flushed when the body was complete
        return str(self._file.name)

    def open_stream(self) -> bytes | BinaryIO:
        if self._memory is not None:
            return bytes(self._memory)
        assert self._file is not None
        self._file.seek(0)
        return self._file

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _new_spool_file(directory: Path | None) -> BinaryIO:
    # Named, so a transcode worker process can open it; removed when closed. In this
    # process's spool directory, so one left by a killed process is removed at next start.
    return cast(BinaryIO, tempfile.NamedTemporaryFile(prefix="upload-", dir=directory))


class _Spool:
    def __init__(self, limit: int, threshold: int, directory: Path | None) -> None:
        self.limit, self.threshold, self.directory = limit, threshold, directory
        self.size = 0
        self.hasher = Hasher()
        self.buf = bytearray()
        self.file: BinaryIO | None = None

    async def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise PayloadTooLarge(f"the body is over the limit of {self.limit} bytes")
        self.hasher.update(chunk)
        self.buf += chunk
        spilled = self.file is not None or self.size > self.threshold
        if spilled and len(self.buf) >= max(self.threshold, CHUNK):
            await self._flush()

    async def _flush(self) -> None:
        if self.file is None:
            self.file = await asyncio.to_thread(_new_spool_file, self.directory)
        data, self.buf = bytes(self.buf), bytearray()
        await asyncio.to_thread(self.file.write, data)

    async def finish(self) -> Upload:
        if self.size == 0:
            raise BadRequest("the body is empty: send the image bytes")
        digest = self.hasher.hexdigest()
        if self.file is None:
            return Upload(digest, self.size, bytes(self.buf[:64]), _memory=self.buf)
        if self.buf:
            await self._flush()
        f = self.file
        await asyncio.to_thread(f.flush)  # a transcode worker reads it by name
        head = await asyncio.to_thread(lambda: (f.seek(0), f.read(64))[1])
        return Upload(digest, self.size, head, _file=f)

    def discard(self) -> None:
        if self.file is not None:
            self.file.close()


async def read_upload(request: web.Request, limit: int, threshold: int,
                      spool_dir: Path | None = None) -> Upload:
    declared = request.content_length
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"Content-Length {declared} is over the limit of {limit} bytes")
    spool = _Spool(limit, threshold, spool_dir)
    try:
        if request.content_type == "multipart/form-data":
            await _read_multipart(request, spool)
        else:
            async for chunk in request.content.iter_chunked(CHUNK):
                await spool.add(chunk)
        return await spool.finish()
    except BaseException:
        spool.discard()
        raise


async def _read_multipart(request: web.Request, spool: _Spool) -> None:
    try:
        reader = await request.multipart()
    except (ValueError, AssertionError, HttpProcessingError) as exc:
        raise BadRequest(f"malformed multipart body: {_short(exc)}") from exc
    found = False
    try:
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise BadRequest("nested multipart bodies are not accepted")
            if part.name == "file" and not found:
                found = True
                while chunk := await part.read_chunk(CHUNK):
                    await spool.add(chunk)
            else:  # other fields still count toward the limit
                while chunk := await part.read_chunk(CHUNK):
                    spool.size += len(chunk)
                    if spool.size > spool.limit:
                        raise PayloadTooLarge(f"the body is over {spool.limit} bytes")
    except (ValueError, AssertionError, HttpProcessingError) as exc:
        # aiohttp's multipart reader raises InvalidHeader for a bad part header.
        raise BadRequest(f"malformed multipart body: {_short(exc)}") from exc
    if not found:
        raise BadRequest("multipart body without a 'file' field")



def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:120]
