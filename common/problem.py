"""RFC 9457 problem+json: the one place domain errors become HTTP answers."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from common.errors import PROBLEM_BASE, MediaCDNError

log = logging.getLogger("mediacdn.problem")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

HTTP_SLUGS = {400: "bad-request", 404: "not-found", 405: "method-not-allowed",
              413: "payload-too-large", 431: "headers-too-large"}


def problem(status: int, title: str, detail: str, type_uri: str,
            headers: dict[str, str] | None = None) -> web.Response:
    body = {"type": type_uri, "title": title, "status": status, "detail": detail}
    # bytes, not text: JSON is UTF-8 by definition (RFC 8259), so no charset parameter.
    return web.Response(status=status, body=json.dumps(body).encode(),
                        content_type="application/problem+json", headers=headers)


def from_error(exc: MediaCDNError) -> web.Response:
    return problem(exc.status, exc.title, exc.detail, exc.type_uri, exc.headers)


async def render_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Run `handler`; domain errors, HTTP errors and crashes become problem+json."""
    try:
        return await handler(request)
    except MediaCDNError as exc:
        if exc.report:
            log.error("%s %s -> %d: %s", request.method, request.path, exc.status, exc.detail,
                      extra={"status": exc.status, "error": type(exc).__name__})
        return from_error(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        slug = HTTP_SLUGS.get(exc.status, f"http-{exc.status}")
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return problem(exc.status, exc.reason, exc.text or exc.reason, PROBLEM_BASE + slug,
                       headers)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return problem(500, "Internal Server Error", "an unexpected error was logged",
                       PROBLEM_BASE + "internal")


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    return await render_errors(request, handler)


def with_problems(handler: Handler) -> Handler:
    """The middleware's job for one route: lets a hot route elsewhere skip middleware."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        return await render_errors(request, handler)

    return wrapped
