"""Turn a cached entry into the answer HTTP asks for: 200, 206, 304 or 416.

ETags are strong (the blake3 of the bytes), so every comparison here is exact.
"""

from __future__ import annotations

import time

from aiohttp import web
from aiohttp.helpers import ETAG_ANY

from common.errors import RangeNotSatisfiable
from edge.entry import Entry
from origin.base import resolve_range


def _not_modified(request: web.Request, entry: Entry) -> bool:
    # RFC 9110 §13.1.2: weak comparison for If-None-Match; "*" matches any current entity.
    try:
        tags = request.if_none_match
    except ValueError:
        return False
    if not tags:
        return False
    return any(t.value == ETAG_ANY or t.value == entry.blake3 for t in tags)


def _byte_range(request: web.Request, entry: Entry) -> tuple[int, int] | None:
    """[start, end) to send, or None for the whole body. Malformed or multiple ranges are
    ignored (RFC 9110 §14.2 lets a server answer 200 with the full representation)."""
    header = request.headers.get("Range")
    if header is None:
        return None
    if_range = request.headers.get("If-Range")
    if if_range is not None and if_range.strip() != entry.etag:
        return None  # RFC 9110 §13.1.5: a different validator means "send it all"
    try:
        rng = request.http_range
    except ValueError:
        return None
    if header.replace(" ", "").lower() == "bytes=-0":  # a zero-length suffix: §14.1.3
        raise RangeNotSatisfiable("an empty suffix range selects nothing",
                                  headers={"Content-Range": f"bytes */{entry.size}"})
    start, end = resolve_range(rng, entry.size)
    if (start, end) == (0, entry.size):
        return None
    return start, end


def respond(request: web.Request, entry: Entry, hit: bool, negotiated: bool,
            extra: dict[str, str]) -> web.Response:
    headers = entry.headers.copy()
    headers.update(extra)
    if hit:
        headers["X-Cache"] = "HIT"
        headers["Age"] = str(max(0, int(time.time() - entry.stored_at)))
    else:
        headers["X-Cache"] = "MISS"
    if negotiated:
        headers["Vary"] = "Accept, Origin" if "Vary" in headers else "Accept"
    if _not_modified(request, entry):
        del headers["Content-Type"]
        return web.Response(status=304, headers=headers)
    span = _byte_range(request, entry)
    if span is None:
        return web.Response(body=entry.body, headers=headers)
    start, end = span
    headers["Content-Range"] = f"bytes {start}-{end - 1}/{entry.size}"
    return web.Response(status=206, body=entry.body[start:end], headers=headers)
