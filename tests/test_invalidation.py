"""Invalidation as an adversary tries it: GETs racing purges and deletes on 1- and 2-worker
nodes, fills in flight during a purge, records from a second writer or stamped in the past,
404s cached before an upload, a router facing an edge that is still catching up.

Real processes on loopback (ingest, edges, router) against the suite's S3 server behind a
counting, slowable proxy.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from common.hashing import content_id
from config import load_config
from ingest.purgehub import PurgeHub
from origin import open_origin, purgelog
from tests import images
from tests.helpers import ADMIN, ADMIN_TOKEN, AUTH
from tests.proxy import CountingProxy
from tests.s3server import S3Server, free_port
from tests.topology import Service, env, run_cli

pytestmark = pytest.mark.timeout(240)


@dataclass
class Net:
    tmp: Path
    proxy: CountingProxy
    http: aiohttp.ClientSession
    env: dict[str, str]
    config: Path = Path()
    ingest: Service | None = None
    edges: dict[str, Service] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    def write(self, workers: int = 1, edges: tuple[tuple[str, str], ...] = (("e1", "eu"),),
              extra_edge: str = "") -> None:
        for name in ("ingest", "router", *(n for n, _ in edges)):
            self.ports.setdefault(name, free_port())
        blocks = "\n".join(f'[[edges]]\nname = "{n}"\nregion = "{r}"\nport = {self.ports[n]}\n'
                           f"workers = {workers}\n" for n, r in edges)
        coords = {"eu": (48.86, 2.35), "us": (39.04, -77.49)}
        regions = "\n".join(f'[[regions]]\nname = "{r}"\nlat = {coords[r][0]}\n'
                            f"lon = {coords[r][1]}\n" for r in sorted({r for _, r in edges}))
        self.config = self.tmp / "mediacdn.toml"
        self.config.write_text(f"""
log_level = "warning"
[origin]
kind = "s3"
bucket = "t-{uuid.uuid4().hex[:16]}"
endpoint_url = "{self.proxy.url}"
connect_timeout = 0.5
read_timeout = 3
max_attempts = 1
[ingest]
port = {self.ports['ingest']}
purge_ack_seconds = 5
log_poll_seconds = 0.2
[edge]
cache_root = "{self.tmp / 'cache'}"
negative_ttl = 30
origin_timeout = 4
purge_poll_seconds = 0.3
{extra_edge}
[router]
port = {self.ports['router']}
default_region = "eu"
probe_interval = 0.2
probe_timeout = 0.5
fall = 1
rise = 1
{regions}
{blocks}
""")

    async def start_ingest(self) -> Service:
        self.ingest = await Service(["ingest", "--config", str(self.config)], self.env).start()
        return self.ingest

    async def start_edge(self, name: str) -> Service:
        argv = ["edge", "--node", name, "--config", str(self.config)]
        svc = await Service(argv, self.env).start()
        self.edges[name] = svc
        return svc

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    async def upload(self, data: bytes) -> dict[str, object]:
        assert self.ingest is not None
        async with self.http.post(self.ingest.url + "/v1/images", data=data, headers=AUTH) as r:
            assert r.status in (200, 201), await r.text()
            return await r.json()  # type: ignore[no-any-return]

    async def get(self, url: str) -> tuple[int, str, int]:
        async with self.http.get(url) as r:
            await r.read()
            return r.status, r.headers.get("X-Cache", ""), int(r.headers.get("Age", "0"))

    async def cli(self, *argv: str) -> tuple[int, str, str]:
        return await run_cli(*argv, "--config", str(self.config), environ=self.env)


@pytest.fixture
async def net(tmp_path: Path, s3_server: S3Server) -> AsyncIterator[Net]:
    proxy = CountingProxy(s3_server.endpoint)
    await proxy.start()
    async with aiohttp.ClientSession() as http:
        n = Net(tmp_path, proxy, http, env({"AWS_ACCESS_KEY_ID": s3_server.access_key,
                                            "AWS_SECRET_ACCESS_KEY": s3_server.secret_key}))
        try:
            yield n
        finally:
            for svc in [*n.edges.values(), *([n.ingest] if n.ingest else [])]:
                await svc.stop()
            await proxy.close()


def paths_of(manifest: dict[str, object]) -> list[str]:
    return [str(v["path"]) for v in manifest["variants"]]  # type: ignore[attr-defined]


async def warm(net: Net, edge: str, paths: list[str], rounds: int = 3) -> None:
    for _ in range(rounds):  # several connections: every worker of the node gets them
        await asyncio.gather(*(net.get(net.url(edge) + p) for p in paths))


async def race(net: Net, paths: list[str], act: Callable[[], Awaitable[None]],
               deleting: bool) -> tuple[int, list[tuple[str, int, str, int]]]:
    """8 clients GET `paths` in a loop while `act` runs and for 1 s after it returned; what
    every GET sent after that answer got that is the old copy (anything but 404 after a
    delete; else a hit stored before `act` started: Age >= its seconds since then + 1).
    Cached copies must be >= 3.2 s old when it starts, so an old copy's Age is >= 2.5 +
    those seconds, while a refill after the purge applied shows < those seconds + 1 (whole
    seconds on both ends) however long a loaded machine takes to answer the purge."""
    answered = asyncio.Event()
    started = 0.0  # monotonic, set just before `act`
    stale: list[tuple[str, int, str, int]] = []
    seen_after = 0

    async def racer(i: int) -> None:
        nonlocal seen_after
        end = None
        while end is None or time.monotonic() < end:
            if answered.is_set() and end is None:
                end = time.monotonic() + 1.0
            after = answered.is_set()
            path = paths[i % len(paths)]
            status, cache, age = await net.get(net.url("e1") + path)
            since = time.monotonic() - started  # at least the edge's own "since"
            i += 1
            if not after:
                continue
            seen_after += 1
            if (status != 404) if deleting else (cache == "HIT" and age >= since + 1):
                stale.append((path, status, cache, age))

    racers = [asyncio.create_task(racer(i)) for i in range(8)]
    await asyncio.sleep(0.3)
    started = time.monotonic()
    await act()
    answered.set()
    await asyncio.gather(*racers)
    return seen_after, stale


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_purge_answered_is_complete_for_thousands_of_racing_gets(
        net: Net, workers: int) -> None:
    net.write(workers=workers)
    await net.start_ingest()
    await net.start_edge("e1")
    a, b, c, d = [await net.upload(images.jpeg(images.photo(800 + i * 16, 400)))
                  for i in range(4)]
    await warm(net, "e1", [p for m in (a, b, c, d) for p in paths_of(m)])
    await asyncio.sleep(3.2)

    async def admin_purge() -> None:  # the node alone
        async with net.http.post(net.url("e1") + "/_admin/purge", json={"ids": [a["id"]]},
                                 headers=ADMIN) as r:
            assert r.status == 200

    async def cli(*argv: str) -> None:  # through ingest and the log
        code, _, err = await net.cli(*argv)
        assert code == 0, err

    # Three at once, each raced by its own clients: an admin purge, a CLI purge, a delete.
    results = await asyncio.gather(
        race(net, paths_of(a), admin_purge, deleting=False),
        race(net, paths_of(b), lambda: cli("purge", str(b["id"])), deleting=False),
        race(net, paths_of(c), lambda: cli("delete", str(c["id"])), deleting=True))

    async def slow_delete() -> None:
        # A slow origin stretches every step of the delete, so racing refills and the
        # follower's reads interleave with it.
        net.proxy.delay = 0.15
        try:
            await cli("delete", str(d["id"]))
        finally:
            net.proxy.delay = 0.0

    results.append(await race(net, paths_of(d), slow_delete, deleting=True))
    for via, (seen_after, stale) in zip(("admin", "cli", "delete", "slow delete"), results,
                                        strict=True):
        assert seen_after > 50, via
        assert stale == [], (f"{via}: {len(stale)} of {seen_after} GETs after the answer got "
                             f"the old copy: {stale[:3]}")
    await asyncio.sleep(1.5)  # forever, not just once: nothing refilled them behind our back
    for p in paths_of(c) + paths_of(d):
        assert (await net.get(net.url("e1") + p))[0] == 404


async def test_a_fill_in_flight_when_a_purge_lands_is_not_stored(net: Net) -> None:
    net.write()
    await net.start_ingest()
    await net.start_edge("e1")
    manifest = await net.upload(images.jpeg())
    image_id, path = str(manifest["id"]), paths_of(manifest)[0]
    net.proxy.delay = 1.5  # every origin call is slow now: the fill is in flight a while
    fill = asyncio.create_task(net.get(net.url("e1") + path))
    await asyncio.sleep(0.5)
    net.proxy.delay = 0
    async with net.http.post(net.url("e1") + "/_admin/purge", json={"ids": [image_id]},
                             headers=ADMIN) as r:
        assert r.status == 200
    status, cache, _ = await fill
    assert (status, cache) == (200, "MISS")  # the request in flight gets its bytes...
    status, cache, _ = await net.get(net.url("e1") + path)
    assert (status, cache) == (200, "MISS")  # ...but they were not kept past the purge


async def test_a_purge_of_one_id_leaves_the_others_hot_on_every_worker(net: Net) -> None:
    net.write(workers=2)
    await net.start_ingest()
    await net.start_edge("e1")
    a, b = await net.upload(images.jpeg()), await net.upload(images.png_alpha())
    await warm(net, "e1", paths_of(a) + paths_of(b), rounds=6)

    async def memory_entries() -> int:
        await asyncio.sleep(1.3)  # workers publish their counters once a second
        async with net.http.get(net.url("e1") + "/_admin/stats", headers=ADMIN) as r:
            return int((await r.json())["memory_entries"])

    before = await memory_entries()
    assert before >= 2 * len(paths_of(b))  # both images hot (in one worker or both)
    code, _, err = await net.cli("purge", str(a["id"]))
    assert code == 0, err
    after = await memory_entries()
    # Only a's entries left the hot tiers; b's stayed in every worker that held them.
    assert after >= before - 2 * len(paths_of(a)) and after >= len(paths_of(b))
    # Two purges at once from two clients: both applied.
    await warm(net, "e1", paths_of(a) + paths_of(b), rounds=4)
    results = await asyncio.gather(*(net.cli("purge", str(m["id"])) for m in (a, b)))
    assert all(code == 0 for code, _, _ in results), results
    for p in paths_of(a) + paths_of(b):
        assert (await net.get(net.url("e1") + p))[1] == "MISS", p


async def test_an_upload_after_a_cached_404_is_served_within_a_second(net: Net) -> None:
    net.write()
    await net.start_ingest()
    await net.start_edge("e1")
    data = images.jpeg(images.photo(640, 360))
    path = f"/i/{content_id(data)}/w320.webp"
    assert (await net.get(net.url("e1") + path))[0] == 404  # cached as missing (30 s TTL)
    assert (await net.get(net.url("e1") + path))[0] == 404
    await net.upload(data)
    t0 = time.monotonic()
    while (await net.get(net.url("e1") + path))[0] != 200:
        assert time.monotonic() - t0 < 1.0, "still 404 a second after the 201"
        await asyncio.sleep(0.05)


async def test_records_from_a_second_writer_or_stamped_in_the_past_are_applied(
        net: Net) -> None:
    net.write()
    await net.start_ingest()
    await net.start_edge("e1")
    a, b = await net.upload(images.jpeg()), await net.upload(images.png_alpha())
    await warm(net, "e1", paths_of(a) + paths_of(b), rounds=1)
    cfg = load_config(net.config, net.env)
    async with open_origin(cfg.origin) as origin:
        # A second writer (another ingest, with a clock a minute behind) records a purge of a.
        other = PurgeHub(origin, 60, 86400)
        await other.load()
        rec = await other.append("purge", [str(a["id"])])
        late = purgelog.Record(rec.seq + 1, "purge", (str(b["id"]),), False, None,
                               time.time_ns() - 60 * 10**9)
        assert await purgelog.try_write(origin, late)
        assert not await purgelog.try_write(origin, late)  # one writer per number, ever
    deadline = time.monotonic() + 3
    for p in paths_of(a) + paths_of(b):
        while (await net.get(net.url("e1") + p))[1] != "MISS":
            assert time.monotonic() < deadline, f"{p} still served from the cache"
            await asyncio.sleep(0.1)
    # An edge that was down while a record landed applies it before serving again.
    await warm(net, "e1", paths_of(a), rounds=1)
    await net.edges["e1"].stop()
    code, _, _ = await net.cli("purge", str(a["id"]))
    assert code == 1  # e1 was not there to apply it: named
    await net.start_edge("e1")
    assert (await net.get(net.url("e1") + paths_of(a)[0]))[1] == "MISS"


async def test_the_router_never_sends_clients_to_an_edge_catching_up(net: Net) -> None:
    net.write(edges=(("e1", "eu"), ("e2", "us")))
    await net.start_ingest()
    await net.start_edge("e2")
    manifest = await net.upload(images.jpeg())
    assert net.ingest is not None
    await net.ingest.stop()
    await net.proxy.stop()  # neither the log stream nor the origin: e1 cannot catch up
    await net.start_edge("e1")
    async with net.http.get(net.url("e1") + "/readyz") as r:
        body = await r.json()
        assert r.status == 503 and body["media"] is False, body
    router = await Service(["router", "--config", str(net.config)], net.env).start()
    try:
        await asyncio.sleep(0.6)
        async with net.http.get(f"{router.url}{paths_of(manifest)[0]}?region=eu",
                                allow_redirects=False) as r:
            assert r.status == 302
            assert r.headers["Location"].startswith(net.url("e2")), r.headers["Location"]
    finally:
        await router.stop()


async def test_readiness_costs_no_origin_request(net: Net) -> None:
    net.write()
    await net.start_ingest()
    await net.start_edge("e1")
    await asyncio.sleep(0.5)
    before = sum(net.proxy.counts.values())
    for _ in range(50):
        async with net.http.get(net.url("e1") + "/readyz") as r:
            assert r.status == 200
    # The follower's background probe may add one; fifty probes must not add fifty.
    assert sum(net.proxy.counts.values()) - before <= 2
    await net.proxy.stop()
    t0 = time.monotonic()
    # The origin went away; a client's miss finds out at once (an idle edge's probe only
    # every edge.origin_probe_seconds): not ready, but still serving media.
    assert (await net.get(net.url("e1") + f"/i/{'0' * 64}/w320.webp"))[0] in (502, 503, 504)
    while True:
        async with net.http.get(net.url("e1") + "/readyz") as r:
            body = await r.json()
            if r.status == 503:
                assert body["media"] is True and "origin" in body["reason"]
                break
        assert time.monotonic() - t0 < 8
        await asyncio.sleep(0.2)
    await net.proxy.start()
    t0 = time.monotonic()
    while True:  # and ready again without a restart
        async with net.http.get(net.url("e1") + "/readyz") as r:
            if r.status == 200:
                break
        assert time.monotonic() - t0 < 8
        await asyncio.sleep(0.2)


async def test_an_edge_started_with_the_origin_down_serves_its_cache_and_becomes_ready(
        net: Net) -> None:
    net.write()
    await net.start_ingest()
    await net.start_edge("e1")
    manifest = await net.upload(images.jpeg())
    path = paths_of(manifest)[0]
    assert (await net.get(net.url("e1") + path))[:2] == (200, "MISS")
    await net.edges["e1"].stop()
    await net.proxy.stop()  # S3 away; ingest still holds the purge log's tail
    await net.start_edge("e1")  # starts (no traceback, no exit) and catches up via ingest
    assert (await net.get(net.url("e1") + path))[:2] == (200, "HIT")
    async with net.http.get(net.url("e1") + "/readyz") as r:
        body = await r.json()
        assert r.status == 503 and body["media"] is True, body
    await net.proxy.start()
    t0 = time.monotonic()
    while True:  # ready without a restart once the origin answers again
        async with net.http.get(net.url("e1") + "/readyz") as r:
            if r.status == 200:
                break
        assert time.monotonic() - t0 < 10, "never became ready"
        await asyncio.sleep(0.2)


async def test_a_derivation_racing_a_delete_leaves_no_variant_behind(net: Net) -> None:
    net.write()
    await net.start_ingest()
    await net.start_edge("e1")
    # Big enough that deriving takes a while: the delete lists the image's objects before
    # the derivation writes its variant.
    manifest = await net.upload(images.jpeg(images.photo(6000, 4000)))
    image_id = str(manifest["id"])
    assert net.ingest is not None
    net.proxy.delay = 0.1
    derive = asyncio.create_task(net.http.post(
        f"{net.ingest.url}/_internal/derive/{image_id}/w2000.webp", headers=ADMIN))
    await asyncio.sleep(0.3)  # the derivation has read the manifest; the delete starts
    async with net.http.delete(f"{net.ingest.url}/v1/images/{image_id}",
                               headers=ADMIN) as r:
        assert r.status == 204
    resp = await derive
    resp.release()
    net.proxy.delay = 0
    cfg = load_config(net.config, net.env)
    async with open_origin(cfg.origin) as origin:
        assert await origin.list(f"variants/{image_id}/") == []  # nothing outlives it
    for name in ("w2000.webp", "w640.webp"):
        assert (await net.get(f"{net.url('e1')}/i/{image_id}/{name}"))[0] == 404


async def test_ingest_drains_at_once_with_edges_following_it(net: Net) -> None:
    net.write()
    await net.start_ingest()
    await net.start_edge("e1")
    await net.upload(images.jpeg())  # the edge's follower holds its stream to ingest now
    await asyncio.sleep(0.5)
    assert net.ingest is not None
    t0 = time.monotonic()
    assert await net.ingest.stop() == 0
    # Open streams are closed at shutdown, not waited out (the 10 s drain bound):
    # SIGTERM to exit well under it.
    assert time.monotonic() - t0 < 5


ADMIN_LINE = f"Authorization: Bearer {ADMIN_TOKEN}"


async def _stream(net: Net, node: str, after: int) -> aiohttp.ClientWebSocketResponse:
    assert net.ingest is not None
    return await net.http.ws_connect(
        net.ingest.url + "/_internal/purges/stream", headers=ADMIN,
        params={"after": str(after), "node": node, "region": "eu"})


async def _last(net: Net) -> int:
    assert net.ingest is not None
    async with net.http.get(net.ingest.url + "/_internal/purges", params={"after": "-1"},
                            headers=ADMIN) as r:
        return int((await r.json())["last"])


async def test_records_are_pushed_down_one_stream_and_its_acks_answer_purges(
        net: Net) -> None:
    # A follower holds one connection: each purge is pushed to it as it lands (no request
    # per record per edge, which is what 1,000 edges multiply), and the cursor it sends back
    # is what lets ingest answer the purge "applied".
    net.write()
    await net.start_ingest()
    ws = await _stream(net, "e1", await _last(net))
    first = json.loads(await ws.receive_bytes(timeout=5))  # what it lacks: nothing yet
    assert first["records"] == []
    ids = [content_id(bytes([i])) for i in range(3)]
    for image_id in ids:
        assert net.ingest is not None
        purge = asyncio.create_task(net.http.post(net.ingest.url + "/v1/purges",
                                                  json={"ids": [image_id]}, headers=ADMIN))
        pushed = json.loads(await ws.receive_bytes(timeout=5))
        [rec] = pushed["records"]
        assert rec["ids"] == [image_id] and pushed["last"] == rec["seq"]
        await asyncio.sleep(0.3)
        assert not purge.done()  # it waits for this edge's acknowledgement...
        await ws.send_str(str(rec["seq"]))
        async with await asyncio.wait_for(purge, 5) as r:  # ...and answers once it is in
            assert r.status == 200, await r.text()
            assert (await r.json())["edges"] == {"e1": "applied"}
    await ws.close()


async def test_a_follower_that_stops_reading_holds_back_no_other(net: Net) -> None:
    # One edge's stream stops being read (a stalled process, a full link) while large
    # purges land: the other edges still get every record at once, and the stalled one is
    # reported pending rather than holding anyone's answer past purge_ack_seconds.
    net.write()
    await net.start_ingest()
    assert net.ingest is not None
    last = await _last(net)
    # A raw WebSocket handshake, then the socket is never read (an aiohttp client would
    # keep draining it into its own queue): the stream backs up into ingest.
    reader, writer = await asyncio.open_connection("127.0.0.1", net.ports["ingest"])
    writer.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF,
                                                         4096)
    writer.write(f"GET /_internal/purges/stream?after={last}&node=stalled&region=eu HTTP/1.1\r\n"
                 f"Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
                 f"Sec-WebSocket-Version: 13\r\n{ADMIN_LINE}\r\n\r\n".encode())
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    live = await _stream(net, "e1", last)
    await live.receive_bytes(timeout=5)

    big = [[content_id(f"{n}-{i}".encode()) for i in range(8000)] for n in range(12)]

    async def purge(ids: list[str]) -> tuple[int, dict[str, str]]:
        assert net.ingest is not None
        async with net.http.post(net.ingest.url + "/v1/purges", json={"ids": ids},
                                 headers=ADMIN) as r:
            return r.status, (await r.json())["edges"]

    t0 = time.monotonic()
    posts = [asyncio.create_task(purge(ids)) for ids in big]
    got: set[str] = set()
    while len(got) < 12 * 8000:  # ~6.5 MB of records the stalled stream never takes
        pushed = json.loads(await live.receive_bytes(timeout=5))
        got.update(i for r in pushed["records"] for i in r["ids"])
        await live.send_str(str(pushed["last"]))
    answers = await asyncio.gather(*posts)
    assert time.monotonic() - t0 < 5 + 3  # purge_ack_seconds + slack, not one per record
    assert all(status == 202 and edges == {"e1": "applied", "stalled": "pending"}
               for status, edges in answers), answers
    writer.close()
    await live.close()


async def test_an_idle_edge_whose_origin_answers_does_not_probe_it_every_few_seconds(
        net: Net) -> None:
    # 1,000 idle edges probing every 5 s were 200 origin requests/s for nothing: while the
    # origin answers, an edge probes only when nothing proved it for origin_probe_seconds.
    net.write()
    await net.start_ingest()
    await net.start_edge("e1")
    await asyncio.sleep(1.0)
    before = dict(net.proxy.counts)
    await asyncio.sleep(6)  # a probe's worth at the old 5 s
    edge_calls = {k: v - before.get(k, 0) for k, v in net.proxy.counts.items()
                  if v - before.get(k, 0) and k[0] == "HEAD" and k[1].strip("/").count("/") == 0}
    # Ingest's own log poll HEADs a purge record key, never the bare bucket.
    assert edge_calls == {}, edge_calls


async def test_a_purge_answered_by_one_ingest_replica_waits_for_edges_on_the_others(
        net: Net) -> None:
    # Two ingest replicas behind one name (the Kubernetes manifests run 2-10): e1 follows
    # replica A; the purge reaches replica B. B must not answer "applied" while e1, which B
    # does not hold, still serves the old copy.
    net.write()
    text = net.config.read_text()
    b_port = free_port()
    peers = (f'peers = ["http://127.0.0.1:{net.ports["ingest"]}", '
             f'"http://localhost:{b_port}"]\n')
    text = text.replace("[ingest]\n", "[ingest]\n" + peers).replace(
        "log_poll_seconds = 0.2", "log_poll_seconds = 2")  # B's records reach A slowly
    net.config.write_text(text)
    b_config = net.tmp / "replica-b.toml"
    b_config.write_text(text.replace(f"port = {net.ports['ingest']}\n", f"port = {b_port}\n", 1))
    await net.start_ingest()
    replica_b = await Service(["ingest", "--config", str(b_config)], net.env).start()
    try:
        await net.start_edge("e1")
        m = await net.upload(images.jpeg(images.photo(700, 400)))
        path = paths_of(m)[0]
        await warm(net, "e1", [path])
        await asyncio.sleep(1.2)  # a refill after the purge shows a smaller Age
        for _ in range(3):
            t0 = time.monotonic()
            async with net.http.post(replica_b.url + "/v1/purges", json={"ids": [m["id"]]},
                                     headers=ADMIN) as r:
                assert r.status == 200, await r.text()
                assert (await r.json())["edges"] == {"e1": "applied"}
            status, cache, age = await net.get(net.url("e1") + path)
            assert status == 200 and (cache != "HIT" or age < time.monotonic() - t0 + 1), (
                f"old copy served after the purge was answered: {cache}, Age {age}")
            await warm(net, "e1", [path])
            await asyncio.sleep(1.2)
        # A replica that does not answer is left out (its edges read the log on their own);
        # B still answers within purge_ack_seconds.
        assert net.ingest is not None
        await net.ingest.stop()
        t0 = time.monotonic()
        async with net.http.post(replica_b.url + "/v1/purges", json={"ids": [m["id"]]},
                                 headers=ADMIN) as r:
            assert r.status in (200, 202), await r.text()
        assert time.monotonic() - t0 < 5 + 3
    finally:
        await replica_b.stop()
