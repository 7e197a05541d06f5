"""The body of a purge request, as the edge's `/_admin/purge` and ingest's `/v1/purges`
both take it: `{"ids": [...]}` or `{"all": true}` (and, for ingest, a `region`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from common.errors import BadRequest
from common.hashing import is_content_id

MAX_IDS = 10_000


@dataclass(frozen=True)
class PurgeBody:
    ids: list[str]  # sorted, unique; empty with `all`
    all: bool
    raw: dict[str, Any]  # for fields only one of the routes reads


async def read_purge_body(request: web.Request) -> PurgeBody:
    try:
        body = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the body must be JSON: {\"ids\": [...]} or {\"all\": true}") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    ids = body.get("ids", [])
    if body.get("all") is True:
        if ids:
            raise BadRequest("send either \"ids\" or \"all\", not both")
        return PurgeBody([], True, body)
    if not isinstance(ids, list) or not ids or len(ids) > MAX_IDS:
        raise BadRequest(f"'ids' must be a list of 1 to {MAX_IDS} image ids, or send "
                         "{\"all\": true}")
    bad = [i for i in ids if not isinstance(i, str) or not is_content_id(i)]
    if bad:
        raise BadRequest(f"not image ids: {json.dumps(bad[:5])[:200]}")
    return PurgeBody(sorted(set(ids)), False, body)
