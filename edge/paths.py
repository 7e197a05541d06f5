"""`/i/{id}/{variant}[.{ext}]`: validated before anything else; the origin is never asked
about a malformed name."""

from __future__ import annotations

import re
from dataclasses import dataclass

from common.errors import BadRequest, NotFound
from common.hashing import ID_RE
from common.variants import DPR_NAME_RE, on_demand
from config.schema import TranscodeConfig

NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
KNOWN_EXTS = ("avif", "webp", "jpg")
Q_ZERO = re.compile(r"q\s*=\s*0(\.0*)?\s*(;|$)")
ACCEPT_TYPES = {"image/avif": "avif", "image/webp": "webp", "image/jpeg": "jpg"}


@dataclass(frozen=True, slots=True)
class Target:
    image_id: str
    variant: str
    ext: str
    negotiated: bool

    @property
    def cache_key(self) -> str:
        if not self.ext:  # the original: /i/{id}/original
            return f"{self.image_id}/{self.variant}"
        return f"{self.image_id}/{self.variant}.{self.ext}"


def parse_name(name: str) -> tuple[str, str | None]:
    variant, dot, ext = name.partition(".")
    if not (NAME_RE.fullmatch(variant) or DPR_NAME_RE.fullmatch(variant)):
        raise BadRequest(f"malformed variant name {variant[:40]!r}")
    if dot and ext not in KNOWN_EXTS:
        raise BadRequest(f"unknown extension {ext[:16]!r}: use one of {', '.join(KNOWN_EXTS)}")
    return variant, (ext if dot else None)


def _widths(cfg: TranscodeConfig) -> str:
    if cfg.ondemand_width_max == 0:
        return ""
    return (f", and w{{N}}[@{{D}}x] for N in {cfg.ondemand_width_min}-"
            f"{cfg.ondemand_width_max} in steps of {cfg.ondemand_width_step}, D in "
            f"1-{cfg.ondemand_max_dpr}")


def negotiate(accept: str, formats: tuple[str, ...]) -> str:
    """The best enabled format the client accepts (avif > webp > jpg); jpg by default.

    `formats` is in preference order. q=0 excludes a type (RFC 9110 §12.5.1).
    """
    accepted: set[str] = set()
    for item in accept.split(","):
        media, _, params = item.strip().partition(";")
        media = media.strip().lower()
        if media in ACCEPT_TYPES and not Q_ZERO.search(params):
            accepted.add(ACCEPT_TYPES[media])
    for fmt in formats:
        if fmt in accepted:
            return fmt
    # No usable Accept (or only */*): the most compatible enabled format, jpg by default.
    return formats[-1]


def resolve(image_id: str, name: str, accept: str, cfg: TranscodeConfig) -> Target:
    if not ID_RE.fullmatch(image_id):
        raise BadRequest("an image id is 64 lowercase hex characters (its blake3)")
    variant, ext = parse_name(name)
    if variant == "original" and ext is None:
        if not cfg.serve_originals:
            raise NotFound("originals are not served here (transcode.serve_originals)")
        return Target(image_id, variant, "", False)
    if cfg.variant(variant) is None and on_demand(variant, cfg) is None:
        raise NotFound(f"no variant {variant!r}; this CDN serves "
                       + ", ".join(v.name for v in cfg.variants) + _widths(cfg))
    if ext is None:
        return Target(image_id, variant, negotiate(accept, cfg.formats), True)
    if ext not in cfg.formats:
        raise NotFound(f"format {ext!r} is not enabled here")
    return Target(image_id, variant, ext, False)
