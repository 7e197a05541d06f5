"""Ingest's invalidation routes: purges, deletes, and the stream edges follow.

    POST   /v1/purges              admin: {"ids": [...]} or {"all": true}, "region" optional
    DELETE /v1/images/{id}         admin: objects gone, then recorded, then the manifest
    GET    /v1/purges/{seq}        admin: which connected edges have applied record seq
    GET    /_internal/purges       admin: ?after=N&node=&region=&wait=S  (catch-up pages,
                                   long-poll for simple clients; after=-1: the newest number)
    GET    /_internal/purges/{seq}/applied  admin: ?region=&wait=S&from=INSTANCE (another
                                   replica asks which of our edges applied seq)
    GET    /_internal/purges/stream  admin, WebSocket: ?after=N&node=&region= (edges follow
                                   it: records pushed as they land; the edge sends back
                                   the cursor it has applied, its acknowledgement)

A purge or delete is answered once it is durable in the log and every connected edge it
applies to has applied it (at most `ingest.purge_ack_seconds`); the answer names any edge
that had not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from aiohttp import WSCloseCode, WSMsgType, web

from common.auth import KEY_USED, KEYRING, require
from common.errors import (
    BadRequest,
    NotFound,
    OriginTimeout,
    OriginUnavailable,
    ServiceUnavailable,
)
from common.hashing import is_content_id
from common.problem import Handler
from common.purgebody import read_purge_body
from config.schema import Config
from ingest.derive import manifest_lock
from ingest.keys import CONFIG, HUB, ORIGIN, PEERS
from ingest.peers import INSTANCE
from ingest.purgehub import Gone, PurgeHub
from ingest.store import (
    DamagedManifest,
    delete_manifest,
    delete_objects,
    load_manifest,
    mark_deleting,
    unavailable,
)
from origin.purgelog import Record

log = logging.getLogger("mediacdn.ingest.purges")
MAX_WAIT_SECONDS = 60.0
ANNOUNCE_SECONDS = 5.0


def add_routes(app: web.Application, admin: Callable[[Handler], Handler]) -> None:
    app.router.add_post("/v1/purges", purge)
    app.router.add_delete("/v1/images/{id}", delete)
    app.router.add_get("/v1/purges/{seq}", status)
    app.router.add_get("/_internal/purges", admin(follow))
    app.router.add_get("/_internal/purges/stream", admin(stream))
    app.router.add_get("/_internal/purges/{seq}/applied", admin(applied_here))


def _admin(request: web.Request) -> Config:
    require(request, "admin_tokens", "admin token")
    return request.app[CONFIG]


def _hub(request: web.Request) -> PurgeHub:
    hub = request.app[HUB]
    if not hub.loaded:
        raise ServiceUnavailable("the purge log is not loaded yet (origin unreachable?)",
                                 headers={"Retry-After": "1"})
    return hub


async def _record(hub: PurgeHub, kind: str, ids: list[str], purge_all: bool,
                  region: str | None) -> Record:
    try:
        return await hub.append(kind, ids, purge_all, region)  # type: ignore[arg-type]
    except (OriginUnavailable, OriginTimeout) as exc:
        raise unavailable(exc) from exc


def _edges(hub: PurgeHub, status: dict[str, bool], region: str | None) -> dict[str, str]:
    """applied; pending (connected, not applied yet); absent (a configured edge that has
    not reconnected since ingest started)."""
    connected = {f.name for f in hub.connected(region)}
    return {name: "applied" if ok else "pending" if name in connected else "absent"
            for name, ok in sorted(status.items())}


async def _wait_applied(request: web.Request, rec: Record) -> dict[str, str]:
    """Every edge the record applies to, as applied / pending / absent, once all have
    applied it or `ingest.purge_ack_seconds` passed: ours, and with `ingest.peers` those of
    every other replica (asked at once, under the same deadline)."""
    hub, limit = request.app[HUB], request.app[CONFIG].ingest.purge_ack_seconds
    peers = request.app.get(PEERS)
    if peers is None:
        return _edges(hub, await hub.wait_applied(rec.seq, rec.region, limit), rec.region)
    # Each replica reports only the edges connected to it; one that has not come back
    # anywhere since our start is named absent here, not waited for by every replica.
    ours, theirs = await asyncio.gather(
        hub.wait_applied(rec.seq, rec.region, limit, expect=False),
        peers.applied(rec.seq, rec.region, limit))
    edges: dict[str, str] = {}
    for status in (ours, theirs):
        for name, ok in status.items():
            edges[name] = "applied" if ok or edges.get(name) == "applied" else "pending"
    for name in hub.expected_now(rec.region):
        edges.setdefault(name, "absent")
    return dict(sorted(edges.items()))


async def purge(request: web.Request) -> web.Response:
    cfg = _admin(request)
    body = await read_purge_body(request)
    region = body.raw.get("region")
    if region is not None and (not isinstance(region, str) or cfg.region(region) is None):
        raise BadRequest(f"unknown region {str(region)[:64]!r}; regions: "
                         + ", ".join(r.name for r in cfg.regions))
    ids, purge_all = body.ids, body.all
    hub = _hub(request)
    rec = await _record(hub, "purge", ids, purge_all, region)
    edges = await _wait_applied(request, rec)
    pending = [n for n, s in edges.items() if s != "applied"]
    log.info("purge %d recorded: %s", rec.seq, "all" if purge_all else f"{len(ids)} id(s)",
             extra={"seq": rec.seq, "pending": pending})
    # 200: applied by every edge it waited for; 202: recorded, some edges still to apply it
    # (named; they do before they serve again).
    return web.json_response({"seq": rec.seq, "purged": "all" if purge_all else len(ids),
                              "region": region, "edges": edges},
                             status=202 if pending else 200)


async def delete(request: web.Request) -> web.Response:
    _admin(request)
    image_id = request.match_info["id"]
    if not is_content_id(image_id):
        raise BadRequest("an image id is 64 lowercase hex characters (its blake3)")
    origin = request.app[ORIGIN]
    hub = _hub(request)
    async with manifest_lock(request.app, image_id):  # no derivation rewrites it meanwhile
        try:
            manifest = await load_manifest(origin, image_id, deleting=True)
            exists = manifest is not None
        except DamagedManifest:
            manifest, exists = None, True  # damaged or not, it is there to delete
        if not exists:
            raise NotFound(f"no image {image_id}")
        await mark_deleting(origin, image_id, manifest)
    # The manifest is marked first: an upload of the same bytes then rebuilds the image
    # instead of trusting a manifest whose objects may be gone. Objects next: from there on
    # no edge can fill them. Then the record: every edge drops what it holds, and a fill
    # that began before is not stored. The manifest goes last, so a delete cut short
    # anywhere is still visible to a delete sent again.
    await delete_objects(origin, image_id)
    rec = await _record(hub, "delete", [image_id], False, None)
    await delete_manifest(origin, image_id)
    pending = [n for n, s in (await _wait_applied(request, rec)).items() if s != "applied"]
    if pending:
        log.warning("delete %s: edges %s had not applied record %d in time; they will",
                    image_id, ", ".join(pending), rec.seq)
    return web.Response(status=204, headers={"X-Purge-Seq": str(rec.seq)})


async def status(request: web.Request) -> web.Response:
    _admin(request)
    seq = request.match_info["seq"]
    hub = _hub(request)
    if not seq.isdigit() or not 0 < int(seq) <= hub.last:
        raise NotFound(f"no purge record {seq[:32]}")
    region = request.query.get("region") or None
    edges = {f.name: f.acked >= int(seq) for f in hub.connected(region)}
    peers = request.app.get(PEERS)
    if peers is not None:  # and those following the other replicas, as they are now
        for name, ok in (await peers.applied(int(seq), region, 0)).items():
            edges[name] = edges.get(name, False) or ok
    shown = {name: "applied" if ok else "pending" for name, ok in sorted(edges.items())}
    return web.json_response({"seq": int(seq), "edges": shown})


async def follow(request: web.Request) -> web.Response:
    _admin(request)
    q = request.query
    try:
        after = int(q.get("after", ""))
        wait = min(MAX_WAIT_SECONDS, max(0.0, float(q.get("wait", "0"))))
    except ValueError:
        raise BadRequest("'after' must be an integer and 'wait' a number of seconds") from None
    node, region = q.get("node", "")[:128], q.get("region", "")[:128]
    hub = _hub(request)
    if after < 0:  # "just tell me the newest number"
        return web.json_response({"last": hub.last, "records": []})
    if node:
        hub.ack(node, region, after, request.transport)
    try:
        records = await hub.records_after(after, wait)
    except Gone as exc:
        return web.json_response({"detail": str(exc)}, status=410)
    finally:
        if node:
            hub.poll_ended(node, request.transport)
    if node and records:
        hub.delivered(node, records[-1].seq)
    return web.Response(body=hub.answer(records, after), content_type="application/json")


async def applied_here(request: web.Request) -> web.Response:
    """Another replica recorded `seq`: which of the edges following us have applied it,
    waiting up to `wait` s (learning the record from the origin first if needed)."""
    _admin(request)
    q = request.query
    seq_text = request.match_info["seq"]
    try:
        wait = min(MAX_WAIT_SECONDS, max(0.0, float(q.get("wait", "0"))))
    except ValueError:
        raise BadRequest("'wait' must be a number of seconds") from None
    if not seq_text.isdigit() or int(seq_text) < 1:
        raise BadRequest("the record number is a positive integer")
    hub = _hub(request)
    if q.get("from") == INSTANCE:  # a name resolving to every replica includes the asker
        return web.json_response({"instance": INSTANCE, "edges": {}})
    seq, deadline = int(seq_text), time.monotonic() + wait
    while seq > hub.last and time.monotonic() < deadline:  # written by the asker just now
        try:
            await hub.refresh()
        except (OriginUnavailable, OriginTimeout) as exc:
            raise unavailable(exc) from exc
        if seq > hub.last:
            await asyncio.sleep(PEER_REFRESH_SECONDS)
    status = await hub.wait_applied(seq, q.get("region") or None,
                                    max(0.0, deadline - time.monotonic()), expect=False)
    return web.json_response({"instance": INSTANCE, "edges": status})


PEER_REFRESH_SECONDS = 0.1
STREAM_HEARTBEAT_SECONDS = 30.0  # a follower gone silent (a partition) is dropped in ~45 s
GONE = 4410  # close code: the records after the cursor are no longer in memory (read the origin)


async def stream(request: web.Request) -> web.StreamResponse:
    """One edge node's follow stream. Binary messages down: the same JSON as a long-poll
    answer ({"last", "records"}). Text messages up: the cursor the node has applied."""
    _admin(request)
    q = request.query
    node, region = q.get("node", "")[:128], q.get("region", "")[:128]
    try:
        after = int(q.get("after", ""))
    except ValueError:
        raise BadRequest("'after' must be an integer") from None
    if after < 0 or not node:
        raise BadRequest("a stream needs 'after' >= 0 and a 'node' name")
    hub = _hub(request)
    still_valid = _still_valid(request)
    ws = web.WebSocketResponse(heartbeat=STREAM_HEARTBEAT_SECONDS, compress=False,
                               max_msg_size=1024)
    await ws.prepare(request)
    transport = request.transport
    hub.ack(node, region, after, transport)
    feeding = asyncio.create_task(_feed(hub, node, after, ws, still_valid))
    try:
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT or not msg.data.isdigit():
                await ws.close(code=WSCloseCode.UNSUPPORTED_DATA, message=b"send a cursor")
                break
            hub.ack(node, region, int(msg.data), transport)
    finally:
        feeding.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeding
        hub.poll_ended(node, transport)
    return ws


def _still_valid(request: web.Request) -> Callable[[], bool]:
    """Whether the admin token this stream opened with is still usable: checked before each
    record is sent, so no record reaches a token revoked since (SIGHUP)."""
    keyring, name = request.app[KEYRING], request[KEY_USED]
    seen: list[object] = [keyring.secrets]
    presented = next(k.value for k in keyring.secrets.usable("admin_tokens") if k.name == name)
    ok = [True]

    def check() -> bool:
        if keyring.secrets is not seen[0]:  # a reload since the last check
            seen[0] = keyring.secrets
            ok[0] = any(k.name == name and k.value == presented
                        for k in keyring.secrets.usable("admin_tokens"))
        return ok[0]

    return check


class _Revoked(Exception):
    pass


async def _feed(hub: PurgeHub, node: str, after: int, ws: web.WebSocketResponse,
                allowed: Callable[[], bool]) -> None:
    async def send(data: bytes) -> None:
        if not allowed():  # the token the stream opened with was revoked (SIGHUP) since
            raise _Revoked
        await ws.send_bytes(data)

    try:
        await hub.feed(node, after, send)
    except Gone as exc:
        await ws.close(code=GONE, message=str(exc).encode()[:120])
        return
    except _Revoked:
        await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"admin token revoked")
        return
    except ConnectionError:  # the follower went away; the reader sees it too
        return
    await ws.close(code=WSCloseCode.GOING_AWAY, message=b"ingest is shutting down")


async def announce(hub: PurgeHub, image_id: str) -> None:
    """A new upload: edges drop any 404 they cached for it. Best effort: the image is
    stored either way, and a cached 404 expires on its own."""
    if not hub.loaded:  # it would re-read the whole log inside an upload: skip it
        log.warning("purge log not loaded: %s not announced to the edges", image_id)
        return
    try:
        async with asyncio.timeout(ANNOUNCE_SECONDS):
            await hub.append("announce", [image_id])
    except (OriginUnavailable, OriginTimeout, TimeoutError) as exc:
        log.warning("could not announce %s to the edges: %s", image_id, exc)
