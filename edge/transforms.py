"""`GET /i/{id}/t/{sig}/{spec}.{ext}`: a signed transform. The signature is checked first
(403 before any work), then the spec and its limits (400); the rest is the media route's
miss path: cached under a key derived from the canonical spec, derived once by ingest."""

from __future__ import annotations

from aiohttp import web

from common.auth import KeyRing
from common.errors import BadRequest, Forbidden, NotFound
from common.hashing import ID_RE
from common.problem import from_error
from common.signing import verify
from common.transform import check_limits, parse
from config.schema import Config
from edge.handlers import MediaHandler
from edge.paths import KNOWN_EXTS, Target


class TransformHandler:
    def __init__(self, media: MediaHandler, cfg: Config, keys: KeyRing) -> None:
        self.media, self.cfg, self.keys = media, cfg, keys

    async def handle(self, request: web.Request) -> web.StreamResponse:
        cache = self.media.cache
        assert cache is not None
        cache.invalidation.catch_up()
        return await self.media.full(request, cache, self.target)

    async def unsigned(self, request: web.Request) -> web.Response:
        """Any other path under /i/{id}/t/: no signature where one must be."""
        cache = self.media.cache
        exc = Forbidden("a transform is /i/{id}/t/{sig}/{spec}.{ext}, signed (see docs/api.md)")
        exc.headers.update(cache.cors if cache is not None else {})
        return from_error(exc)

    def target(self, request: web.Request) -> Target:
        info = request.match_info
        image_id, sig = info["id"], info["sig"]
        spec, dot, ext = info["spec"].rpartition(".")
        keys = self.keys.secrets.signing_values  # the current ones: SIGHUP swaps them
        if not dot or not keys or not verify(keys, image_id, spec, ext, sig):
            raise Forbidden("missing or wrong signature: sign '{id}/{spec}.{ext}' with "
                            "HMAC-SHA256 (see docs/api.md)")
        if not ID_RE.fullmatch(image_id):
            raise BadRequest("an image id is 64 lowercase hex characters (its blake3)")
        if ext not in KNOWN_EXTS:
            raise BadRequest(f"unknown extension {ext[:16]!r}: use one of "
                             + ", ".join(KNOWN_EXTS))
        if ext not in self.cfg.transcode.formats:
            raise NotFound(f"format {ext!r} is not enabled here")
        t = parse(spec)
        check_limits(t, self.cfg.transcode)
        target = Target(image_id, t.name, ext, False)
        self.media.cache.transform(target.cache_key, t.canonical)  # type: ignore[union-attr]
        return target
