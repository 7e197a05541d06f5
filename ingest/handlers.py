"""The ingest routes. A request reads top to bottom: auth, body, type, dedupe, transcode, store."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

from aiohttp import web

from common.auth import require
from common.errors import (
    BadRequest,
    NotFound,
    ServiceUnavailable,
)
from common.hashing import is_content_id
from config.schema import Config
from ingest import manifest as M
from ingest.body import read_upload
from ingest.keys import CONFIG, HUB, METRICS, ORIGIN, POOL
from ingest.openapi import OPENAPI
from ingest.purges import announce
from ingest.spooldir import SPOOL_DIR
from ingest.store import DamagedManifest, load_manifest, store
from transcode.formats import sniff
from transcode.job import transcode

INFLIGHT = web.AppKey("inflight", dict)
# Origin steps given up on: they finish cancelling in the background (an S3 client may
# still abort a multipart upload), referenced here so they are not collected mid-way.
ABANDONED = web.AppKey("abandoned", set)
T = TypeVar("T")
log = logging.getLogger("mediacdn.ingest")


def add_routes(app: web.Application) -> None:
    app[INFLIGHT] = {}
    app[ABANDONED] = set()
    app.router.add_post("/v1/images", upload)
    app.router.add_get("/v1/images/{id}", get_manifest, allow_head=False)
    app.router.add_route("HEAD", "/v1/images/{id}", head_image)
    app.router.add_get("/openapi.json", openapi)


def _image_id(request: web.Request) -> str:
    image_id = request.match_info["id"]
    if not is_content_id(image_id):
        raise BadRequest("an image id is 64 lowercase hex characters (its blake3)")
    return image_id


def _answer(cfg: Config, manifest: dict[str, Any], status: int) -> web.Response:
    body = M.with_urls(manifest, cfg.ingest.public_base_url, cfg.transcode)
    return web.json_response(body, status=status,
                             headers={"Location": f"/v1/images/{manifest['id']}"})


async def upload(request: web.Request) -> web.Response:
    cfg = request.app[CONFIG]
    metrics = request.app[METRICS]
    require(request, "api_keys", "API key")
    body = await read_upload(request, cfg.ingest.max_bytes, cfg.ingest.spool_bytes,
                             request.app[SPOOL_DIR].path)
    try:
        sniff(body.head)  # 415 before any decoding work
        origin = request.app[ORIGIN]
        try:
            existing = await _within_deadline(request.app, "the lookup",
                                              load_manifest(origin, body.id))
        except DamagedManifest:
            existing = None  # the same bytes are here again: rebuild and rewrite it
        if existing is not None:
            metrics.uploads.labels("200").inc()
            return _answer(cfg, existing, 200)
        inflight: dict[str, asyncio.Future[dict[str, Any]]] = request.app[INFLIGHT]
        if body.id in inflight:  # the same bytes are being processed right now
            manifest = await asyncio.shield(inflight[body.id])
            return _answer(cfg, manifest, 200)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        inflight[body.id] = fut
        try:
            header, ladder, seconds = await request.app[POOL].run(
                transcode, body.source(), cfg.ingest, cfg.transcode)
            metrics.transcode_seconds.observe(seconds)
            manifest = await _within_deadline(request.app, "the store",
                                              store(origin, body, header, ladder))
            await announce(request.app[HUB], body.id)  # edges drop 404s cached for it
            fut.set_result(manifest)
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # waiters re-raise it; mark it retrieved for the loop
            raise
        finally:
            del inflight[body.id]
        metrics.uploads.labels("201").inc()
        metrics.bytes_in.inc(body.size)
        return _answer(cfg, manifest, 201)
    finally:
        body.close()


async def _within_deadline(app: web.Application, step: str, work: Awaitable[T]) -> T:
    """`work` answered within the upload's origin deadline, else 503, whatever the origin
    does: a hung S3 holds a call for read_timeout x attempts, and a cancelled call may
    still await its own clean-up, so the answer does not wait for the cancellation."""
    seconds = app[CONFIG].ingest.origin_deadline_seconds
    task = asyncio.ensure_future(work)
    try:
        done, _ = await asyncio.wait({task}, timeout=seconds)
    except BaseException:
        task.cancel()
        raise
    if done:
        return task.result()
    task.cancel()
    abandoned: set[asyncio.Future[T]] = app[ABANDONED]
    abandoned.add(task)
    task.add_done_callback(abandoned.discard)
    task.add_done_callback(_log_outcome)
    raise ServiceUnavailable(f"the origin did not finish {step} within {seconds:g} s; "
                             "retry the upload", headers={"Retry-After": "5"})


def _log_outcome(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.info("an abandoned origin step ended with %r", task.exception())


async def get_manifest(request: web.Request) -> web.Response:
    cfg = request.app[CONFIG]
    image_id = _image_id(request)
    manifest = await load_manifest(request.app[ORIGIN], image_id)
    if manifest is None:
        raise NotFound(f"no image {image_id}")
    return _answer(cfg, manifest, 200)


async def head_image(request: web.Request) -> web.Response:
    require(request, "api_keys", "API key")
    image_id = _image_id(request)
    try:
        known = await load_manifest(request.app[ORIGIN], image_id) is not None
    except DamagedManifest:
        known = False  # so the client sends the bytes, and that upload repairs it
    if not known:
        return web.Response(status=404)
    return web.Response(status=200)


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(OPENAPI)
