"""The origin's key layout. Every key is built here, from validated parts only.

    originals/{id}                    the uploaded bytes
    variants/{id}/{variant}.{ext}     one encoded variant
    manifests/{id}.json               written last: a manifest means the set is complete
    purgelog/{seq:020d}.json          the invalidation log (origin.purgelog owns its keys)
"""

from __future__ import annotations

import re

from common.hashing import is_content_id

KEY_RE = re.compile(r"[a-z0-9][a-z0-9._-]*(/[a-z0-9][a-z0-9._-]*)*")
SAFE_PART = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
PURGES_PREFIX = "purges/"  # the log's old, clock-ordered place: no longer written or read


def _check_id(image_id: str) -> str:
    if not is_content_id(image_id):
        raise ValueError(f"not a content id: {image_id!r}")
    return image_id


def original(image_id: str) -> str:
    return f"originals/{_check_id(image_id)}"


def variant(image_id: str, name: str, ext: str) -> str:
    if not SAFE_PART.fullmatch(name) or not SAFE_PART.fullmatch(ext):
        raise ValueError(f"bad variant or extension: {name!r}.{ext!r}")
    return f"variants/{_check_id(image_id)}/{name}.{ext}"


def variants_prefix(image_id: str) -> str:
    return f"variants/{_check_id(image_id)}/"


def manifest(image_id: str) -> str:
    return f"manifests/{_check_id(image_id)}.json"


def is_valid_key(key: str) -> bool:
    """Keys reaching a backend: lowercase, no empty, dot or dot-dot segments."""
    return len(key) <= 512 and KEY_RE.fullmatch(key) is not None and ".." not in key
