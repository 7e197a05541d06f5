"""Bearer tokens, compared in constant time."""

from __future__ import annotations

import hmac

from aiohttp import web

from common.errors import Unauthorized


def require_bearer(request: web.Request, secret: str, what: str) -> None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized(f"missing {what}: send 'Authorization: Bearer <{what}>'",
                           headers={"WWW-Authenticate": 'Bearer realm="mediacdn"'})
    if not hmac.compare_digest(token.strip().encode(), secret.encode()):
        raise Unauthorized(f"wrong {what}",
                           headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
