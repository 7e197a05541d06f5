"""Where originals, variants, manifests and purge records live: S3 or the local filesystem."""

from origin.base import ObjectInfo, Origin, OriginReader
from origin.factory import open_origin

__all__ = ["ObjectInfo", "Origin", "OriginReader", "open_origin"]
