"""`POST /_internal/reprocess/{id}` (admin token): every configured variant (or those named)
the origin lacks for this image, in one decode with the upload's ladder code (cascade), then
listed in the manifest. What exists is skipped (one LIST), so a reprocess run that was
interrupted resumes where it stopped. `mediacdn reprocess` calls it for each image."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from aiohttp import web

from common.auth import require
from common.errors import BadRequest, NotFound, OriginTimeout, OriginUnavailable
from common.hashing import is_content_id
from common.problem import Handler
from config.schema import TranscodeConfig
from ingest.derive import list_in_manifest, variant_entry
from ingest.keys import CONFIG, METRICS, ORIGIN, POOL
from ingest.store import load_manifest, unavailable
from origin import keys as K
from transcode.formats import MEDIA_TYPES
from transcode.job import transcode

RUNNING = web.AppKey("reprocess_running", dict)


def add_routes(app: web.Application, admin: Callable[[Handler], Handler]) -> None:
    app[RUNNING] = {}
    app.router.add_post("/_internal/reprocess/{id}", admin(handle))


def _wanted(cfg: TranscodeConfig, body: Any) -> list[str]:
    names = body.get("variants") if isinstance(body, dict) else None
    if names is None:
        return [v.name for v in cfg.variants]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise BadRequest('body: {"variants": [name, ...]} or {}')
    unknown = [n for n in names if cfg.variant(n) is None]
    if unknown:
        raise NotFound(f"not variants of this config: {', '.join(unknown)[:200]}")
    return names


async def handle(request: web.Request) -> web.Response:
    cfg = request.app[CONFIG]
    require(request, "admin_tokens", "admin token")
    image_id = request.match_info["id"]
    if not is_content_id(image_id):
        raise BadRequest("an image id is 64 lowercase hex characters (its blake3)")
    try:
        body = await request.json() if request.can_read_body else {}
    except ValueError:
        raise BadRequest("the body is not JSON") from None
    names = _wanted(cfg.transcode, body)
    running: dict[str, asyncio.Future[dict[str, Any]]] = request.app[RUNNING]
    task = running.get(image_id)
    if task is None:  # one reprocess of an image at a time; a second caller shares it
        task = asyncio.ensure_future(_reprocess(request.app, image_id, names))
        running[image_id] = task
        task.add_done_callback(lambda t: (running.pop(image_id, None),
                                          t.cancelled() or t.exception()))
    return web.json_response(await asyncio.shield(task))


async def _reprocess(app: web.Application, image_id: str, names: list[str]) -> dict[str, Any]:
    cfg, origin = app[CONFIG], app[ORIGIN]
    if await load_manifest(origin, image_id) is None:
        raise NotFound(f"no image {image_id}")
    try:
        present = set(await origin.list(K.variants_prefix(image_id), limit=10_000))
        missing = [(n, f) for n in names for f in cfg.transcode.formats
                   if K.variant(image_id, n, f) not in present]
        if not missing:
            return {"id": image_id, "derived": [], "present": len(names) * len(
                cfg.transcode.formats)}
        variants = tuple(v for v in cfg.transcode.variants if v.name in {n for n, _ in missing})
        formats = tuple(f for f in cfg.transcode.formats if f in {f for _, f in missing})
        one = replace(cfg.transcode, variants=variants, formats=formats)
        _, source = await origin.read(K.original(image_id))
        _, ladder, seconds = await app[POOL].run(transcode, source, cfg.ingest, one)
        app[METRICS].transcode_seconds.observe(seconds)
        made = [e for e in ladder.outputs if (e.variant, e.format) in set(missing)]
        for e in made:
            await origin.put(K.variant(image_id, e.variant, e.format), e.data,
                             MEDIA_TYPES[e.format], {"blake3": e.blake3, "width": str(e.width),
                                                     "height": str(e.height)})
            app[METRICS].derivations.inc()
    except (OriginUnavailable, OriginTimeout) as exc:
        raise unavailable(exc) from exc
    try:
        await list_in_manifest(app, image_id, [variant_entry(
            image_id, e.variant, e.format, e.width, e.height, len(e.data), e.blake3)
            for e in made])
    except NotFound:
        # Deleted while we worked (the manifest is read after our writes): remove what we
        # wrote, so no variant outlives its image.
        for e in made:
            await origin.delete(K.variant(image_id, e.variant, e.format))
        raise
    return {"id": image_id, "derived": [f"{e.variant}.{e.format}" for e in made],
            "present": len(names) * len(cfg.transcode.formats) - len(made)}
