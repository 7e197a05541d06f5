"""Signed transform URLs: `/i/{id}/t/{sig}/{spec}.{ext}`, `sig` = base64url (no padding) of
HMAC-SHA256(key, UTF-8 of `{id}/{spec}.{ext}`). Apps build them with `sign_path`."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable


def signature(key: str, image_id: str, spec: str, ext: str) -> str:
    mac = hmac.new(key.encode(), f"{image_id}/{spec}.{ext}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).decode("ascii").rstrip("=")


def sign_path(key: str, image_id: str, spec: str, ext: str) -> str:
    """The path an app puts after the CDN's base URL."""
    return f"/i/{image_id}/t/{signature(key, image_id, spec, ext)}/{spec}.{ext}"


def verify(keys: Iterable[str], image_id: str, spec: str, ext: str, sig: str) -> bool:
    """True when any of `keys` signed it (several are valid at once while rotating)."""
    ok = False
    for key in keys:  # every key compared, in constant time each
        ok |= hmac.compare_digest(signature(key, image_id, spec, ext).encode(),
                                  sig.encode("utf-8", "replace"))
    return ok
