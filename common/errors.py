"""The one domain error hierarchy. Each class carries what its problem+json answer needs."""

from __future__ import annotations

from typing import ClassVar

PROBLEM_BASE = "https://mediacdn.dev/problems/"


class MediaCDNError(Exception):
    """Root of every error a client or operator can be shown."""

    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal Server Error"
    slug: ClassVar[str] = "internal"
    # Worth an error-level log line (our fault or an upstream's), not just a client mistake.
    report: ClassVar[bool] = True

    def __init__(self, detail: str = "", *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.headers = headers or {}

    @property
    def type_uri(self) -> str:
        return PROBLEM_BASE + self.slug


class ClientError(MediaCDNError):
    report = False


class BadRequest(ClientError):
    status, title, slug = 400, "Bad Request", "bad-request"


class Unauthorized(ClientError):
    status, title, slug = 401, "Unauthorized", "unauthorized"


class NotFound(ClientError):
    status, title, slug = 404, "Not Found", "not-found"


class PayloadTooLarge(ClientError):
    status, title, slug = 413, "Payload Too Large", "payload-too-large"


class UnsupportedMediaType(ClientError):
    status, title, slug = 415, "Unsupported Media Type", "unsupported-media-type"


class RangeNotSatisfiable(ClientError):
    status, title, slug = 416, "Range Not Satisfiable", "range-not-satisfiable"


class UnprocessableImage(ClientError):
    status, title, slug = 422, "Unprocessable Image", "unprocessable-image"


class Forbidden(ClientError):
    status, title, slug = 403, "Forbidden", "forbidden"


class TooManyRequests(ClientError):
    status, title, slug = 429, "Too Many Requests", "too-many-requests"


class OriginUnavailable(MediaCDNError):
    status, title, slug = 502, "Origin Unavailable", "origin-unavailable"


class IntegrityError(MediaCDNError):
    """Bytes that do not hash to their name: never served, never cached."""

    status, title, slug = 502, "Integrity Check Failed", "integrity"


class ServiceUnavailable(MediaCDNError):
    status, title, slug = 503, "Service Unavailable", "unavailable"


class OriginTimeout(MediaCDNError):
    status, title, slug = 504, "Origin Timeout", "origin-timeout"


class ConfigError(Exception):
    """A config that cannot run: `key` names the offending entry."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
