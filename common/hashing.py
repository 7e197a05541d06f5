"""Content ids: the blake3-256 hex digest of the bytes."""

from __future__ import annotations

import re

from blake3 import blake3

ID_RE = re.compile(r"[0-9a-f]{64}")


def content_id(data: bytes | memoryview) -> str:
    # blake3 releases the GIL and uses several threads for large inputs.
    return str(blake3(data, max_threads=blake3.AUTO if len(data) > 1 << 20 else 1).hexdigest())


def is_content_id(value: str) -> bool:
    return ID_RE.fullmatch(value) is not None


class Hasher:
    """Incremental blake3, for bodies that arrive in chunks."""

    def __init__(self) -> None:
        self._h = blake3()

    def update(self, chunk: bytes | memoryview) -> None:
        self._h.update(chunk)

    def hexdigest(self) -> str:
        return str(self._h.hexdigest())
