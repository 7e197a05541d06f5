"""Attacks on the purge stream (edges follow ingest over one WebSocket per node, acks sent
back on it): two streams claiming one node, one node's old and new stream, a stalled edge, a
stalled ingest, a stream message of the wrong shape (each failed before its fix), and a
stream whose next record ingest no longer holds (close 4410; held on the stream's first
version, kept because nothing else drives that path with a real edge).

Uses the harness of tests/test_invalidation.py (real ingest/edges on loopback, the suite's
S3 server behind the counting, slowable proxy).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import aiohttp
import pytest
from aiohttp import web

from common.hashing import content_id
from config import load_config
from origin import open_origin, purgelog
from tests import images, test_invalidation
from tests.helpers import ADMIN
from tests.test_invalidation import Net, _last, _stream, paths_of, warm

net = test_invalidation.net  # the harness's fixture

pytestmark = pytest.mark.timeout(240)


async def _purge(net: Net, ids: list[str]) -> tuple[int, dict[str, str]]:
    assert net.ingest is not None
    async with net.http.post(net.ingest.url + "/v1/purges", json={"ids": ids},
                             headers=ADMIN) as r:
        return r.status, (await r.json())["edges"]


async def test_a_purge_is_not_applied_by_a_node_while_one_of_its_streams_lags(
        net: Net) -> None:
    # Two streams name the same node (a replacement started before the old one is gone, a
    # copied config): ingest kept one cursor per name, set by whichever stream acked last,
    # so the first stream's ack answered the purge 200 "applied" while the other process
    # still held (and served) the purged copy.
    net.write()
    await net.start_ingest()
    last = await _last(net)
    a, b = await _stream(net, "e1", last), await _stream(net, "e1", last)
    for ws in (a, b):
        assert json.loads(await ws.receive_bytes(timeout=5))["records"] == []
    posting = asyncio.create_task(_purge(net, [content_id(b"x")]))
    for ws in (a, b):
        pushed = json.loads(await ws.receive_bytes(timeout=5))
    await a.send_str(str(pushed["last"]))  # only one of the two applied it
    status, edges = await asyncio.wait_for(posting, 10)
    assert (status, edges) == (202, {"e1": "pending"})
    # Once the other applies it too, the node has.
    async with net.http.get(f"{net.ingest.url}/v1/purges/{pushed['last']}",
                            headers=ADMIN) as r:
        assert (await r.json())["edges"] == {"e1": "pending"}
    await b.send_str(str(pushed["last"]))
    await asyncio.sleep(0.3)
    async with net.http.get(f"{net.ingest.url}/v1/purges/{pushed['last']}",
                            headers=ADMIN) as r:
        assert (await r.json())["edges"] == {"e1": "applied"}
    await a.close()
    await b.close()


async def _stream_of(net: Net, node: str, after: int,
                     run: str) -> aiohttp.ClientWebSocketResponse:
    assert net.ingest is not None
    return await net.http.ws_connect(
        net.ingest.url + "/_internal/purges/stream", headers=ADMIN,
        params={"after": str(after), "node": node, "region": "eu", "run": run})


async def test_a_nodes_new_stream_is_not_held_back_by_its_old_one_still_open_here(
        net: Net) -> None:
    # After a partition the edge gives up its stream and opens a new one, while ingest may
    # still hold the old connection open (it learns it is dead only from its heartbeat,
    # up to 45 s). The same process (same run) cannot be behind itself: its new stream's
    # acks answer purges at once. Another process under the same name still holds it back.
    net.write()
    await net.start_ingest()
    last = await _last(net)
    old = await _stream_of(net, "e1", last, "run-1")  # never read again: a dead link
    assert json.loads(await old.receive_bytes(timeout=5))["records"] == []
    new = await _stream_of(net, "e1", last, "run-1")
    assert json.loads(await new.receive_bytes(timeout=5))["records"] == []
    posting = asyncio.create_task(_purge(net, [content_id(b"y")]))
    pushed = json.loads(await new.receive_bytes(timeout=5))
    await new.send_str(str(pushed["last"]))
    assert await asyncio.wait_for(posting, 10) == (200, {"e1": "applied"})
    other = await _stream_of(net, "e1", pushed["last"], "run-2")
    assert json.loads(await other.receive_bytes(timeout=5))["records"] == []
    posting = asyncio.create_task(_purge(net, [content_id(b"z")]))
    pushed = json.loads(await new.receive_bytes(timeout=5))
    await new.send_str(str(pushed["last"]))
    assert await asyncio.wait_for(posting, 10) == (202, {"e1": "pending"})
    for ws in (old, new, other):
        await ws.close()


async def test_a_stopped_edge_is_named_pending_and_applies_the_purge_before_serving_again(
        net: Net) -> None:
    # SIGSTOP a whole edge (a frozen VM, a long GC pause): its stream stays open, so the
    # purge waits purge_ack_seconds and names it pending; requests that reach it while it
    # is stopped wait in its socket queues. After SIGCONT none of them may get the copy the
    # purge removed: the node applies the record before it serves again.
    net.write()
    await net.start_ingest()
    await net.start_edge("e1")
    manifest = await net.upload(images.jpeg())
    image_id, paths = str(manifest["id"]), paths_of(manifest)
    await warm(net, "e1", paths)
    svc = net.edges["e1"]
    assert svc.proc is not None
    os.kill(svc.proc.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        status, edges = await _purge(net, [image_id])
        assert time.monotonic() - t0 < 5 + 2  # purge_ack_seconds + slack
        assert (status, edges) == (202, {"e1": "pending"})
        gets = [asyncio.create_task(net.get(net.url("e1") + p)) for p in paths * 4]
        await asyncio.sleep(0.5)  # the GETs are sent; the stopped edge holds them
    finally:
        os.kill(svc.proc.pid, signal.SIGCONT)
    got = await asyncio.gather(*gets)
    stale = [(p, g) for p, g in zip(paths * 4, got, strict=True) if g[:2] == (200, "HIT")]
    assert stale == [], f"{len(stale)} of {len(got)} GETs got the purged copy: {stale[:3]}"
    # Refused at most while it catches up, then served again: refilled, never the old copy.
    deadline = time.monotonic() + 5
    while (got1 := await net.get(net.url("e1") + paths[0]))[0] != 200:
        assert time.monotonic() < deadline, f"the edge still refuses media: {got1}"
        await asyncio.sleep(0.2)
    assert got1[1] != "HIT" or got1[2] < 3, got1


async def test_a_stalled_ingest_does_not_keep_an_edge_from_the_origins_log(
        net: Net) -> None:
    # Ingest stalled (SIGSTOP, a hung load balancer): the edge's stream heartbeat gives up
    # on it and the edge reads the origin's log every purge_poll_seconds until ingest
    # answers again. A new stream's handshake to the stalled ingest had no deadline but
    # aiohttp's 5 minutes, and records another writer (a second ingest) added meanwhile
    # were not applied: the edge served purged copies for minutes.
    net.write(extra_edge="purge_follow_seconds = 1")
    await net.start_ingest()
    await net.start_edge("e1")
    manifest = await net.upload(images.jpeg())
    image_id, paths = str(manifest["id"]), paths_of(manifest)
    await warm(net, "e1", paths)
    assert net.ingest is not None and net.ingest.proc is not None
    os.kill(net.ingest.proc.pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(4)  # the edge gave up the stream and is reconnecting
        cfg = load_config(net.config, net.env)
        async with open_origin(cfg.origin) as origin:  # a second writer's record
            seq = await purgelog.last_seq(origin) + 1
            assert await purgelog.try_write(
                origin, purgelog.new_record(seq, "purge", [image_id]))
        deadline = time.monotonic() + 4 + 4 + 2  # origin_timeout, a poll, slack
        while True:
            status, cache, _ = await net.get(net.url("e1") + paths[0])
            if cache != "HIT":
                assert (status, cache) == (200, "MISS")  # dropped, refilled, still serving
                break
            assert time.monotonic() < deadline, "the edge never read the origin's log"
            await asyncio.sleep(0.2)
    finally:
        os.kill(net.ingest.proc.pid, signal.SIGCONT)


async def test_a_stream_whose_next_record_ingest_lacks_reads_the_origin_and_follows_on(
        net: Net) -> None:
    # A hole after the edge's cursor (records compacted or lost under it): ingest closes
    # the stream with 4410, the edge reads the origin's log, finds its next record gone and
    # drops its whole cache, then follows the stream again: a later purge is applied.
    net.write()
    await net.start_ingest()
    await net.start_edge("e1")
    manifest = await net.upload(images.jpeg())
    paths = paths_of(manifest)
    await warm(net, "e1", paths)
    cfg = load_config(net.config, net.env)
    async with open_origin(cfg.origin) as origin:
        seq = await purgelog.last_seq(origin) + 2  # seq - 1 never written
        assert await purgelog.try_write(
            origin, purgelog.new_record(seq, "purge", [content_id(b"elsewhere")]))
    deadline = time.monotonic() + 10
    while (got := await net.get(net.url("e1") + paths[0]))[1] == "HIT":
        assert time.monotonic() < deadline, "the edge kept its cache across the hole"
        await asyncio.sleep(0.2)
    assert got[:2] == (200, "MISS"), got
    await warm(net, "e1", paths, rounds=1)
    status, edges = await _purge(net, [str(manifest["id"])])
    assert (status, edges) == (200, {"e1": "applied"})
    assert (await net.get(net.url("e1") + paths[0]))[:2] == (200, "MISS")


async def test_a_stream_message_the_edge_cannot_read_sends_it_to_the_origins_log(
        net: Net) -> None:
    # Valid JSON of the wrong shape down the stream (a version skew, a broken proxy in
    # between): the follower failed outside what it treats as "ingest unusable", so it
    # never read the origin's log; it reconnected each second and got the same again while
    # records written meanwhile were never applied (and the node went on serving).
    net.write()
    await net.start_ingest()
    await net.start_edge("e1")
    manifest = await net.upload(images.jpeg())
    paths = paths_of(manifest)
    await warm(net, "e1", paths)
    assert net.ingest is not None
    await net.ingest.stop()
    cfg = load_config(net.config, net.env)
    async with open_origin(cfg.origin) as origin:
        last = await purgelog.last_seq(origin)

        async def pages(request: web.Request) -> web.Response:
            return web.json_response({"last": last, "records": []})

        async def stream(request: web.Request) -> web.WebSocketResponse:
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            await ws.send_bytes(b"null")
            async for _ in ws:
                pass
            return ws

        app = web.Application()
        app.router.add_get("/_internal/purges", pages)
        app.router.add_get("/_internal/purges/stream", stream)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", net.ports["ingest"]).start()
        try:
            await asyncio.sleep(2)  # the edge follows the odd ingest now
            assert await purgelog.try_write(
                origin, purgelog.new_record(last + 1, "purge", [str(manifest["id"])]))
            deadline = time.monotonic() + 4 + 4 + 2  # origin_timeout, a poll, slack
            while (got := await net.get(net.url("e1") + paths[0]))[1] == "HIT":
                assert time.monotonic() < deadline, "the edge never read the origin's log"
                await asyncio.sleep(0.2)
            assert got[:2] == (200, "MISS"), got
        finally:
            await runner.cleanup()
