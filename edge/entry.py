"""A cached object, with the response headers that never change built once."""

from __future__ import annotations

from dataclasses import dataclass, field

from transcode.formats import MEDIA_TYPES

IMMUTABLE = "public, max-age=31536000, immutable"


@dataclass(slots=True)
class Entry:
    key: str
    body: bytes
    blake3: str
    content_type: str
    stored_at: float
    etag: str = field(init=False)
    headers: dict[str, str] = field(init=False)
    def __post_init__(self) -> None:
        self.etag = f'"{self.blake3}"'
        self.headers = {
            "Content-Type": self.content_type,
            "ETag": self.etag,
            "Cache-Control": IMMUTABLE,
            "Accept-Ranges": "bytes",
        }


    @property
    def size(self) -> int:
        return len(self.body)

    def tag(self) -> str:
        return f"{self.blake3}|{self.content_type}|{self.stored_at:.3f}"

    @classmethod
    def from_tag(cls, key: str, body: bytes, tag: str) -> Entry:
        blake3, content_type, stored_at = tag.split("|")
        return cls(key, body, blake3, content_type, float(stored_at))


def content_type_for(key: str) -> str:
    return MEDIA_TYPES.get(key.rsplit(".", 1)[-1], "application/octet-stream")


def cors_headers(allow_origin: str) -> dict[str, str]:
    """Public, immutable bytes: readable cross-origin, never with credentials."""
    if not allow_origin:
        return {}
    headers = {"Access-Control-Allow-Origin": allow_origin, "Timing-Allow-Origin": allow_origin,
               "Access-Control-Expose-Headers": "ETag, Content-Range, X-Cache, Age"}
    if allow_origin != "*":
        headers["Vary"] = "Origin"
    return headers
