"""The embedded origin: objects as files under one directory.

Each object is one file: a JSON header line (content type, size, metadata) and the bytes,
written to a temp file, fsynced and renamed into place, so a reader sees the old object or
the new one whole, never half, and metadata never drifts from the bytes it describes.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from common.errors import NotFound, OriginUnavailable
from origin.base import CHUNK, ObjectInfo, resolve_range
from origin.keys import is_valid_key

MAGIC = b"MCDN1 "


@dataclass
class FsReader:
    info: ObjectInfo
    start: int
    end: int
    _fh: BinaryIO

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        left = self.end - self.start
        while left > 0:
            chunk = await asyncio.to_thread(self._fh.read, min(CHUNK, left))
            if not chunk:
                raise OriginUnavailable("origin object shorter than its header says")
            left -= len(chunk)
            yield chunk


class FsOrigin:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._tmp = self.root / ".tmp"
        self._tmp.mkdir(exist_ok=True)

    def _path(self, key: str) -> Path:
        """Pure (it runs on the event loop): the key regex forbids dot segments and
        absolute keys; `_inside` re-checks with the filesystem, in the I/O thread."""
        if not is_valid_key(key):
            raise ValueError(f"invalid origin key {key!r}")
        return self.root / key

    def _inside(self, path: Path) -> Path:
        # Belt and braces: never follow a symlink out of the root.
        if not path.resolve().is_relative_to(self.root):
            raise ValueError(f"path escapes the origin root: {path}")
        return path

    # -- writes ------------------------------------------------------------------------
    async def put(
        self, key: str, body: bytes | BinaryIO, content_type: str, metadata: dict[str, str]
    ) -> None:
        path = self._path(key)
        await asyncio.to_thread(self._put_sync, path, body, content_type, metadata)

    def _put_sync(
        self, path: Path, body: bytes | BinaryIO, content_type: str, metadata: dict[str, str]
    ) -> None:
        tmp = self._write_tmp(path, body, content_type, metadata)
        try:
            os.replace(tmp, path)
            _fsync_dir(path.parent)
        finally:
            tmp.unlink(missing_ok=True)

    def _write_tmp(
        self, path: Path, body: bytes | BinaryIO, content_type: str, metadata: dict[str, str]
    ) -> Path:
        """The object, header and body, written and fsynced under .tmp; the caller puts it
        in place (or removes it)."""
        if isinstance(body, bytes):
            size = len(body)
        else:
            size = os.fstat(body.fileno()).st_size - body.tell()
        header = {"content_type": content_type, "size": size, "metadata": metadata}
        path.parent.mkdir(parents=True, exist_ok=True)
        self._inside(path)
        tmp = self._tmp / f"{secrets.token_hex(8)}.part"
        try:
            with open(tmp, "wb") as out:
                out.write(MAGIC + json.dumps(header, separators=(",", ":")).encode() + b"\n")
                if isinstance(body, bytes):
                    out.write(body)
                else:
                    while chunk := body.read(CHUNK):
                        out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    async def create(self, key: str, body: bytes, content_type: str) -> bool:
        path = self._path(key)
        return await asyncio.to_thread(self._create_sync, path, body, content_type)

    def _create_sync(self, path: Path, body: bytes, content_type: str) -> bool:
        tmp = self._write_tmp(path, body, content_type, {})
        try:
            try:
                os.link(tmp, path)  # atomic, complete, and refused if the name exists
            except FileExistsError:
                return False
            _fsync_dir(path.parent)
            return True
        finally:
            tmp.unlink(missing_ok=True)

    async def delete(self, key: str) -> None:
        path = self._path(key)
        await asyncio.to_thread(lambda: self._inside(path).unlink(missing_ok=True))

    # -- reads -------------------------------------------------------------------------
    @asynccontextmanager
    async def open(self, key: str, byte_range: slice | None = None) -> AsyncIterator[FsReader]:
        path = self._path(key)
        fh, info, offset = await asyncio.to_thread(self._open_sync, key, path)
        try:
            start, end = resolve_range(byte_range, info.size)
            await asyncio.to_thread(fh.seek, offset + start)
            yield FsReader(info, start, end, fh)
        finally:
            await asyncio.to_thread(fh.close)

    def _open_sync(self, key: str, path: Path) -> tuple[BinaryIO, ObjectInfo, int]:
        try:
            fh = open(self._inside(path), "rb")  # noqa: SIM115 - closed by open()'s caller
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise NotFound(f"no object {key}") from None
        try:
            line = fh.readline(64 * 1024)
            if not line.startswith(MAGIC) or not line.endswith(b"\n"):
                raise OriginUnavailable(f"origin object {key} is damaged")
            header = json.loads(line[len(MAGIC):])
            info = ObjectInfo(key, int(header["size"]), header["content_type"], header["metadata"])
            return fh, info, len(line)
        except BaseException:
            fh.close()
            raise

    async def read(self, key: str) -> tuple[ObjectInfo, bytes]:
        # One thread hop for open, read and close (a catch-up reads thousands of records).
        return await asyncio.to_thread(self._read_sync, key, self._path(key))

    def _read_sync(self, key: str, path: Path) -> tuple[ObjectInfo, bytes]:
        fh, info, _ = self._open_sync(key, path)
        with fh:
            data = fh.read()
        if len(data) != info.size:
            raise OriginUnavailable(f"origin object {key} is shorter than its header says")
        return info, data

    async def head(self, key: str) -> ObjectInfo:
        fh, info, _ = await asyncio.to_thread(self._open_sync, key, self._path(key))
        await asyncio.to_thread(fh.close)
        return info

    async def list(self, prefix: str, start_after: str = "", limit: int = 1000) -> list[str]:
        return await asyncio.to_thread(self._list_sync, prefix, start_after, limit)

    def _list_sync(self, prefix: str, start_after: str, limit: int) -> builtins.list[str]:
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        top = self.root / base if base else self.root
        if base and not is_valid_key(base):
            raise ValueError(f"invalid prefix {prefix!r}")
        keys: builtins.list[str] = []
        for dirpath, dirnames, filenames in os.walk(top):
            rel_dir = os.path.relpath(dirpath, self.root)
            if rel_dir == ".tmp" or rel_dir.startswith(".tmp" + os.sep):
                dirnames.clear()
                continue
            for name in filenames:
                key = name if rel_dir == "." else f"{rel_dir.replace(os.sep, '/')}/{name}"
                if key.startswith(prefix) and key > start_after and is_valid_key(key):
                    keys.append(key)
        keys.sort()
        return keys[:limit]

    async def ping(self) -> None:
        if not await asyncio.to_thread(os.access, self.root, os.W_OK):
            raise OriginUnavailable(f"origin directory {self.root} is not writable")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
