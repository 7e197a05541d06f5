"""`POST /_internal/derive/{id}/{name}.{ext}`: a variant the current config defines but the
origin lacks (the ladder changed after the upload), made from the stored original.

Only edges call it, with the admin token. However many edges ask at once, one derivation
runs (single-flight here, per variant); once stored, asking again costs one HEAD. The
variant is stored with its blake3 exactly as an upload stores it, then listed in the
manifest (manifest updates of one image are serialised, so two derivations never lose
each other's entry).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from common.auth import require
from common.errors import (
    BadRequest,
    NotFound,
    OriginTimeout,
    OriginUnavailable,
    TooManyRequests,
)
from common.hashing import is_content_id
from common.problem import Handler
from common.transform import Transform, check_limits, parse
from common.variants import configured, derivable
from config.schema import Variant
from ingest import manifest as M
from ingest.keys import CONFIG, METRICS, ORIGIN, POOL
from ingest.store import load_manifest, unavailable
from origin import Origin
from origin import keys as K
from origin.base import ObjectInfo
from transcode.derive import derive
from transcode.formats import MEDIA_TYPES
from transcode.ladder import Encoded
from transcode.transform import apply

log = logging.getLogger("mediacdn.ingest.derive")
FLIGHTS = web.AppKey("derive_flights", dict)
LOCKS = web.AppKey("manifest_locks", dict)


class PerImageRate:
    """Derivations of signed transforms per image per minute (a sliding minute)."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._times: dict[str, deque[float]] = {}

    def take(self, image_id: str) -> None:
        now = time.monotonic()
        times = self._times.setdefault(image_id, deque())
        while times and times[0] <= now - 60:
            times.popleft()
        if len(times) >= self.per_minute:
            retry = max(1, int(times[0] + 60 - now) + 1)
            raise TooManyRequests(f"over {self.per_minute} transforms of this image derived "
                                  "in a minute (transcode.transform_rate_per_minute)",
                                  headers={"Retry-After": str(retry)})
        times.append(now)
        if len(self._times) > 10_000:  # forget images idle for a minute
            for k in [k for k, v in self._times.items() if not v or v[-1] <= now - 60]:
                del self._times[k]


RATE = web.AppKey("transform_rate", PerImageRate)


def add_routes(app: web.Application, admin: Callable[[Handler], Handler]) -> None:
    app[FLIGHTS] = {}
    app[LOCKS] = {}
    app[RATE] = PerImageRate(app[CONFIG].transcode.transform_rate_per_minute)
    app.router.add_post("/_internal/derive/{id}/{name}", admin(handle))


async def handle(request: web.Request) -> web.Response:
    require(request, "admin_tokens", "admin token")
    image_id, name = request.match_info["id"], request.match_info["name"]
    if not is_content_id(image_id):
        raise BadRequest("an image id is 64 lowercase hex characters (its blake3)")
    job = await _job(request, name)
    key = f"{image_id}/{job.name}.{job.ext}"
    flights: dict[str, asyncio.Future[dict[str, Any]]] = request.app[FLIGHTS]
    flight = flights.get(key)
    if flight is None:
        flight = asyncio.ensure_future(_derive_once(request.app, image_id, job))
        flights[key] = flight
        flight.add_done_callback(lambda f: _landed(flights, key, f))
    # shield: a caller that goes away does not cancel the others' derivation.
    entry = await asyncio.shield(flight)
    return web.json_response(entry)


@dataclass(frozen=True)
class Job:
    name: str  # the variant's name at the origin
    ext: str
    spec: Variant | Transform
    listed: bool  # a ladder variant: the manifest lists it

    @property
    def fn(self) -> Callable[..., tuple[Encoded, float]]:
        return apply if isinstance(self.spec, Transform) else derive


async def _job(request: web.Request, name: str) -> Job:
    """What `name` asks for, judged like the edge judged it (never trusting the edge)."""
    cfg = request.app[CONFIG].transcode
    variant_name, _, ext = name.rpartition(".")
    if variant_name.startswith("t-"):
        try:
            spec = str((await request.json())["spec"])
        except (ValueError, KeyError, TypeError):
            raise BadRequest("a transform's derive request carries {\"spec\": ...}") from None
        t = parse(spec)
        check_limits(t, cfg)
        if t.name != variant_name or ext not in cfg.formats:
            raise NotFound(f"{name[:60]!r} is not the transform {spec[:60]!r}")
        return Job(t.name, ext, t, False)
    variant = derivable(variant_name, ext, cfg)
    if variant is None:
        raise NotFound(f"{name[:60]!r} is not a variant this config defines")
    return Job(variant.name, ext, variant, configured(variant_name, cfg))


def _landed(flights: dict[str, asyncio.Future[dict[str, Any]]], key: str,
            flight: asyncio.Future[dict[str, Any]]) -> None:
    flights.pop(key, None)
    if not flight.cancelled():
        flight.exception()  # mark retrieved even if every caller went away


async def _derive_once(app: web.Application, image_id: str, job: Job) -> dict[str, Any]:
    origin: Origin = app[ORIGIN]
    vkey = K.variant(image_id, job.name, job.ext)
    try:
        info = await origin.head(vkey)
    except NotFound:
        info = None
    except (OriginUnavailable, OriginTimeout) as exc:
        raise unavailable(exc) from exc
    if info is not None:  # derived already (or uploaded with it): list it, derive nothing
        entry = _entry_from_info(image_id, job.name, job.ext, info)
    else:
        entry = await _make(app, image_id, job, vkey)
    if job.listed:  # widths on demand and transforms stay out of the manifest
        await list_in_manifest(app, image_id, [entry])
    return entry


async def _make(app: web.Application, image_id: str, job: Job, vkey: str) -> dict[str, Any]:
    cfg, origin = app[CONFIG], app[ORIGIN]
    if await load_manifest(origin, image_id) is None:
        raise NotFound(f"no image {image_id}")
    if isinstance(job.spec, Transform):
        app[RATE].take(image_id)  # 429 past transcode.transform_rate_per_minute
    ext = job.ext
    try:
        _, source = await origin.read(K.original(image_id))
        encoded: Encoded
        encoded, seconds = await app[POOL].run(job.fn, source, cfg.ingest, cfg.transcode,
                                               job.spec, ext)
        app[METRICS].derivations.inc()
        app[METRICS].transcode_seconds.observe(seconds)
        await origin.put(vkey, encoded.data, MEDIA_TYPES[ext],
                         {"blake3": encoded.blake3, "width": str(encoded.width),
                          "height": str(encoded.height)})
        # A delete may have begun while we worked: it marks the manifest before it lists
        # the objects to remove, so either it lists ours, or we see its mark and remove it
        # ourselves. Never a variant that outlives its image.
        if await load_manifest(origin, image_id) is None:
            await origin.delete(vkey)
            raise NotFound(f"no image {image_id}")
    except (OriginUnavailable, OriginTimeout) as exc:
        raise unavailable(exc) from exc
    log.info("derived %s/%s.%s (%d bytes)", image_id, job.name, ext, len(encoded.data))
    return variant_entry(image_id, job.name, ext, encoded.width, encoded.height,
                         len(encoded.data), encoded.blake3)


def variant_entry(image_id: str, name: str, ext: str, width: int, height: int, size: int,
           blake3: str) -> dict[str, Any]:
    return {"name": name, "format": ext, "width": width, "height": height, "bytes": size,
            "blake3": blake3, "path": M.edge_path(image_id, name, ext)}


def _entry_from_info(image_id: str, name: str, ext: str, info: ObjectInfo) -> dict[str, Any]:
    meta = info.metadata
    return variant_entry(image_id, name, ext, int(meta.get("width", "0") or 0),
                  int(meta.get("height", "0") or 0), info.size, meta.get("blake3", ""))


@contextlib.asynccontextmanager
async def manifest_lock(app: web.Application, image_id: str) -> AsyncIterator[None]:
    """One writer of an image's manifest at a time in this ingest (derivations, deletes)."""
    locks: dict[str, asyncio.Lock] = app[LOCKS]
    lock = locks.setdefault(image_id, asyncio.Lock())
    try:
        async with lock:
            yield
    finally:
        if not lock.locked() and locks.get(image_id) is lock:
            del locks[image_id]


async def list_in_manifest(app: web.Application, image_id: str,
                           entries: list[dict[str, Any]]) -> None:
    """Add the variants to the image's manifest (one write), those not there already."""
    async with manifest_lock(app, image_id):
        origin = app[ORIGIN]
        manifest = await load_manifest(origin, image_id)
        if manifest is None:
            raise NotFound(f"no image {image_id}")
        listed = manifest["variants"]
        have = {(v.get("name"), v.get("format")) for v in listed}
        new = [e for e in entries if (e["name"], e["format"]) not in have]
        if not new:
            return
        manifest["variants"] = [*listed, *new]
        try:
            await origin.put(K.manifest(image_id), M.encode(manifest), "application/json",
                             {"blake3": image_id})
        except (OriginUnavailable, OriginTimeout) as exc:
            raise unavailable(exc) from exc
