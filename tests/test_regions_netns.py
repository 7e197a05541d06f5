"""Regions with real addresses and WAN latency: every edge and every region's client in its
own network namespace, the router choosing by the client's real source address, and delay
on the links from the regions to the origin site.

    origin ns (the origin site, in eu-west): ingest, router, and the WAN ends of the links
      198.19.0.1  router :8000, ingest :8001 and S3 :9000 through delay relays
      ingest itself on the namespace's 127.0.0.1:8011; S3 (the suite's server behind a
      counting proxy) on the test's own loopback, reached by the S3 relay
    one namespace per region (a router between its LAN and its WAN uplink)
      eu-west 198.18.1.0/24, us-east 198.18.2.0/24, ap-south 198.18.3.0/24 (the config's
      cidrs); each edge and each region's client in a namespace of its own on that LAN

Latency (the kernel has no netem): `tests/delaylink.py` holds every chunk for the one-way
delay of the client's region, both ways, and a new connection one round trip more. The
origin sits in eu-west: eu-west -> origin adds nothing, us-east -> origin 80 ms RTT (the
eu-us link), ap-south -> origin 160 ms (eu-ap). Nothing in this topology crosses us-ap
(no shield configured, clients go to their own region), so its 180 ms is on no path.
Router -> edge probes and client -> edge requests stay inside a region or on the origin
site's LAN: no delay. Linux's own forwarding between namespaces is what carries packets;
links are cut with `ip link set down` on one end: the other end loses its carrier and drops
whatever is sent into it (a black hole, as a WAN cut looks to TCP: no reset, no refusal),
and the end set down loses its routes until it is up again.

Skipped, saying why, unless root and `ip netns` work. Figures are printed (`-s`) and
written to `regions-wan.json` in the pytest tmp dir.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import pytest_asyncio

from edge.rendezvous import score
from tests import images, netns
from tests.delaylink import DelayLink
from tests.helpers import ADMIN, AUTH
from tests.proxy import CountingProxy
from tests.s3server import S3Server
from tests.topology import Service, env

# Fixed namespace names and addresses, one topology for the module: one xdist worker.
pytestmark = [pytest.mark.timeout(120), pytest.mark.asyncio(loop_scope="module"),
              pytest.mark.xdist_group("netns")]

SITE = "198.19.0.1"  # the origin site's service address
ROUTER_PORT, INGEST_RELAY, INGEST_PORT, S3_RELAY, EDGE_PORT = 8000, 8001, 8011, 9000, 8100
REGIONS = {"eu-west": ("eu", 1), "us-east": ("us", 2), "ap-south": ("ap", 3)}
RTT_TO_ORIGIN = {"eu-west": 0.0, "us-east": 0.080, "ap-south": 0.160}
EDGES = [("eu-west-a", "eu-west"), ("eu-west-b", "eu-west"), ("us-east-a", "us-east"),
         ("ap-south-a", "ap-south")]
CLIENT_SLOT = 15  # the client's /30 in its region: 198.18.i.60/30
# The router's health settings, and the follower's (the partition bound).
PROBE_INTERVAL, PROBE_TIMEOUT, FALL, RISE = 0.5, 0.5, 2, 2
FOLLOW_SECONDS, POLL_SECONDS, ORIGIN_TIMEOUT = 1.0, 0.5, 1.5
# An edge that hears nothing from ingest nor the origin's log for its lease stops beating;
# its workers refuse media once the beat (1 s apart) is 5 s old (docs/design.md).
LEASE = max(1.5 * FOLLOW_SECONDS, POLL_SECONDS + 1) + 2 * ORIGIN_TIMEOUT
REFUSED_WITHIN = LEASE + 1 + 5


def cidr(region: str) -> ipaddress.IPv4Network:
    return ipaddress.ip_network(f"198.18.{REGIONS[region][1]}.0/24")  # type: ignore[return-value]


def lan(region: str, slot: int) -> tuple[str, str]:
    """The (router side, host side) addresses of a host's /30 on its region's LAN."""
    base = f"198.18.{REGIONS[region][1]}"
    return f"{base}.{4 * slot + 1}", f"{base}.{4 * slot + 2}"


def region_of(address: str) -> str | None:
    addr = ipaddress.ip_address(address)
    return next((r for r in REGIONS if addr in cidr(r)), None)


def one_way(address: str) -> float:
    """The relays' delay for a client address: its region's link to the origin site."""
    region = region_of(address)
    return RTT_TO_ORIGIN[region] / 2 if region else 0.0


@dataclass
class Edge:
    name: str
    region: str
    ns: str
    addr: str
    service: Service

    @property
    def url(self) -> str:
        return f"http://{self.addr}:{EDGE_PORT}"


@dataclass
class Wan:
    net: netns.Net
    site: str  # the origin site's namespace
    regions: dict[str, str]  # region -> its router namespace
    edges: dict[str, Edge]
    clients: dict[str, aiohttp.ClientSession]  # region -> a client in its namespace
    client_addr: dict[str, str]
    admin: aiohttp.ClientSession  # the test's own client, on the origin site
    proxy: CountingProxy
    ingest: Service
    router: Service
    figures: dict[str, Any] = field(default_factory=dict)
    out: Path = Path()

    ingest_url = f"http://127.0.0.1:{INGEST_PORT}"
    router_url = f"http://{SITE}:{ROUTER_PORT}"

    async def upload(self, data: bytes) -> dict[str, Any]:
        async with self.admin.post(self.ingest_url + "/v1/images", data=data,
                                   headers=AUTH) as r:
            assert r.status in (200, 201), await r.text()
            return await r.json()  # type: ignore[no-any-return]

    async def get(self, region: str, url: str) -> tuple[int, str, float]:
        """Status, X-Cache and seconds to the response head, from `region`'s client."""
        t0 = time.monotonic()
        async with asyncio.timeout(10):
            async with self.clients[region].get(url, allow_redirects=False) as r:
                head = time.monotonic() - t0
                await r.read()
                return r.status, r.headers.get("X-Cache", ""), head

    def record(self, section: str, value: Any) -> None:
        self.figures[section] = value
        self.out.write_text(json.dumps(self.figures, indent=2))


def _config(tmp: Path, bucket: str) -> Path:
    regions = "\n".join(
        f'[[regions]]\nname = "{r}"\nlat = {lat}\nlon = {lon}\ncidrs = ["{cidr(r)}"]\n'
        for r, (lat, lon) in (("eu-west", (48.86, 2.35)), ("us-east", (39.04, -77.49)),
                              ("ap-south", (1.35, 103.82))))
    slots: dict[str, int] = {}
    blocks = []
    for name, region in EDGES:
        slots[region] = slots.get(region, -1) + 1
        blocks.append(f'[[edges]]\nname = "{name}"\nregion = "{region}"\n'
                      f'host = "{lan(region, slots[region])[1]}"\nport = {EDGE_PORT}\n')
    path = tmp / "mediacdn.toml"
    path.write_text(f"""
log_level = "warning"
[origin]
kind = "s3"
bucket = "{bucket}"
endpoint_url = "http://{SITE}:{S3_RELAY}"
connect_timeout = 1
read_timeout = 3
max_attempts = 1
[ingest]
host = "127.0.0.1"
port = {INGEST_PORT}
url = "http://{SITE}:{INGEST_RELAY}"
purge_ack_seconds = 1.5
log_poll_seconds = 0.5
[edge]
cache_root = "{tmp / 'cache'}"
cache_bytes = 67108864
negative_ttl = 2
origin_timeout = {ORIGIN_TIMEOUT}
purge_follow_seconds = {FOLLOW_SECONDS}
purge_poll_seconds = {POLL_SECONDS}
[router]
host = "{SITE}"
port = {ROUTER_PORT}
default_region = "eu-west"
probe_interval = {PROBE_INTERVAL}
probe_timeout = {PROBE_TIMEOUT}
fall = {FALL}
rise = {RISE}
{regions}
{chr(10).join(blocks)}
""")
    return path


def _build(net: netns.Net) -> tuple[str, dict[str, str], dict[str, tuple[str, str]],
                                    dict[str, tuple[str, str]]]:
    """The namespaces and links; returns the site, the region routers, each edge's
    (namespace, address) and each region's client (namespace, address)."""
    site = net.ns("o")
    net.address(site, f"{SITE}/32")
    routers: dict[str, str] = {}
    for region, (short, i) in REGIONS.items():
        ns = routers[region] = net.ns(short, forwarding=True)
        net.link(site, f"up-{short}", f"198.19.{i}.1/30", ns, "wan", f"198.19.{i}.2/30")
        net.route(ns, "default", f"198.19.{i}.1")
        net.route(site, str(cidr(region)), f"198.19.{i}.2")
    edges: dict[str, tuple[str, str]] = {}
    slots: dict[str, int] = {}
    for name, region in EDGES:
        slots[region] = slots.get(region, -1) + 1
        gw, addr = lan(region, slots[region])
        ns = net.ns(f"{REGIONS[region][0]}-{name[-1]}")
        net.link(routers[region], f"lan{slots[region]}", f"{gw}/30", ns, "eth0", f"{addr}/30")
        net.route(ns, "default", gw)
        edges[name] = (ns, addr)
    clients: dict[str, tuple[str, str]] = {}
    for region, (short, _) in REGIONS.items():
        gw, addr = lan(region, CLIENT_SLOT)
        ns = net.ns(f"{short}-c")
        net.link(routers[region], "lanc", f"{gw}/30", ns, "eth0", f"{addr}/30")
        net.route(ns, "default", gw)
        clients[region] = (ns, addr)
    return site, routers, edges, clients


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def wan(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
              ) -> AsyncIterator[Wan]:
    reason = netns.unavailable()
    if reason:
        pytest.skip(f"network namespace topology not run: {reason}")
    s3_server: S3Server = request.getfixturevalue("s3_server")
    tmp = tmp_path_factory.mktemp("wan")
    net = netns.Net()
    services: list[Service] = []
    links: list[DelayLink] = []
    sessions: list[aiohttp.ClientSession] = []
    proxy = CountingProxy(s3_server.endpoint)
    try:
        site, routers, edge_addrs, client_addrs = _build(net)
        await proxy.start()
        links = [DelayLink(site, (SITE, S3_RELAY), None, ("127.0.0.1", proxy.port), one_way),
                 DelayLink(site, (SITE, INGEST_RELAY), site, ("127.0.0.1", INGEST_PORT),
                           one_way)]
        for link in links:
            await link.start()
        config = _config(tmp, f"t-{uuid.uuid4().hex[:16]}")
        environ = env({"AWS_ACCESS_KEY_ID": s3_server.access_key,
                       "AWS_SECRET_ACCESS_KEY": s3_server.secret_key})
        conf = ["--config", str(config)]
        ingest = await Service(["ingest", *conf], environ, site).start()
        services.append(ingest)
        started = await asyncio.gather(*(
            Service(["edge", "--node", name, *conf], environ, edge_addrs[name][0]).start()
            for name, _ in EDGES))
        services += started
        router = await Service(["router", *conf], environ, site).start()
        services.append(router)
        edges = {name: Edge(name, region, edge_addrs[name][0], edge_addrs[name][1], svc)
                 for (name, region), svc in zip(EDGES, started, strict=True)}
        clients = {r: netns.session_in(ns) for r, (ns, _) in client_addrs.items()}
        admin = netns.session_in(site)
        sessions = [*clients.values(), admin]
        w = Wan(net, site, routers, edges, clients, {r: a for r, (_, a) in client_addrs.items()},
                admin, proxy, ingest, router, out=tmp / "regions-wan.json")
        await _all_routed_home(w)
        w.record("links", {"origin_site": "eu-west",
                           "rtt_to_origin_ms": {r: v * 1000 for r, v in RTT_TO_ORIGIN.items()},
                           "measured": await _measure_rtt(w)})
        yield w
        _print_table(w)
    finally:
        for s in sessions:
            await s.close()
        await asyncio.gather(*(s.stop() for s in services), return_exceptions=True)
        for link in links:
            await link.close()
        await proxy.close()
        net.close()


async def _all_routed_home(w: Wan) -> None:
    """Until every region's client is sent to its own region (edges caught up and probed)."""
    async with asyncio.timeout(30):
        while True:
            homes = [await _route(w, r) for r in REGIONS]
            if all(h["served_by_region"] == r for h, r in zip(homes, REGIONS, strict=True)):
                return
            await asyncio.sleep(0.2)


async def _route(w: Wan, region: str, image_id: str = "") -> dict[str, Any]:
    query = f"?id={image_id}" if image_id else ""
    async with w.clients[region].get(f"{w.router_url}/v1/route{query}") as r:
        assert r.status == 200, await r.text()
        return await r.json()  # type: ignore[no-any-return]


async def _measure_rtt(w: Wan) -> dict[str, dict[str, float]]:
    """Through each region's WAN link, from its edge's namespace: a TCP connect plus one
    small request on it (the relay charges the handshake's round trip first), then a second
    request on the same connection (one round trip)."""
    out: dict[str, dict[str, float]] = {}
    for region in REGIONS:
        edge = next(e for e in w.edges.values() if e.region == region)
        async with netns.session_in(edge.ns) as s:
            times = []
            for _ in range(2):
                t0 = time.monotonic()
                async with s.get(f"http://{SITE}:{INGEST_RELAY}/healthz") as r:
                    await r.read()
                    assert r.status == 200
                times.append(time.monotonic() - t0)
        out[region] = {"new_connection_ms": round(times[0] * 1000, 1),
                       "reused_connection_ms": round(times[1] * 1000, 1)}
        # The delay is really there (a lower bound: what the link adds, never less).
        assert times[0] >= 2 * RTT_TO_ORIGIN[region] and times[1] >= RTT_TO_ORIGIN[region]
    return out


def _owner(region: str, image_id: str) -> str:
    names = [n for n, r in EDGES if r == region]
    return max(names, key=lambda n: score(n, image_id))


# -- 1. routing by the real source address ---------------------------------------------
async def test_each_region_is_routed_to_its_own_edge_by_source_address(wan: Wan) -> None:
    manifest = await wan.upload(images.jpeg(images.photo(820, 410)))
    image_id, path = manifest["id"], manifest["variants"][2]["path"]
    seen = {}
    for region in REGIONS:
        # No X-Forwarded-For, no country, no ?region=: only the packets' source address.
        async with wan.clients[region].get(wan.router_url + path, allow_redirects=False) as r:
            assert r.status == 302, await r.text()
            location, edge = r.headers["Location"], r.headers["X-Edge"]
        assert edge == _owner(region, image_id)
        assert region_of(str(urlsplit(location).hostname)) == region
        status, _, _ = await wan.get(region, location)
        assert status == 200
        explained = await _route(wan, region, image_id)
        assert (explained["client"], explained["reason"], explained["region"]) == (
            wan.client_addr[region], "cidr", region)
        seen[region] = {"client": wan.client_addr[region], "edge": edge}
    wan.record("routing", seen)


# -- 2. tiered fetch over the WAN --------------------------------------------------------
async def test_one_origin_get_per_object_per_region_and_time_to_first_byte(wan: Wan) -> None:
    manifest = await wan.upload(images.jpeg(images.photo(840, 420)))
    image_id = manifest["id"]
    variant = manifest["variants"][0]
    key = variant["path"].split("/i/", 1)[1].replace(f"{image_id}/", f"variants/{image_id}/")
    figures = {}
    for region in REGIONS:
        before = wan.proxy.gets(key)
        owner = _owner(region, image_id)
        order = [owner, *(n for n, r in EDGES if r == region and n != owner)]
        ttfb: dict[str, float] = {}
        for name in order:
            url = wan.edges[name].url + variant["path"]
            status, cache, miss = await wan.get(region, url)
            assert (status, cache) == (200, "MISS"), (name, status, cache)
            status, cache, hit = await wan.get(region, url)
            assert (status, cache) == (200, "HIT"), (name, status, cache)
            ttfb[f"{name} miss"], ttfb[f"{name} hit"] = miss, hit
        gets = wan.proxy.gets(key) - before
        assert gets == 1, f"{region}: {gets} origin GETs for one object"
        figures[region] = {"origin_gets": gets,
                           **{k: round(v * 1000, 1) for k, v in ttfb.items()}}
    wan.record("tiered_fetch_ttfb_ms", figures)


# -- 3. purge and delete applied everywhere within one RTT + 100 ms ----------------------
async def _first_applied(wan: Wan, region: str, url: str, answered: float,
                         applied: tuple[int, str]) -> float:
    """Seconds from the answer to the sending of the first request that sees the purge
    applied (the edge is in the client's region: no WAN on this path)."""
    async with asyncio.timeout(10):
        while True:
            sent = time.monotonic()
            status, cache, _ = await wan.get(region, url)
            if (status, cache if applied[1] else "") == applied:
                return sent - answered
            await asyncio.sleep(0.01)


async def test_purge_and_delete_are_applied_on_every_edge_within_an_rtt(wan: Wan) -> None:
    manifest = await wan.upload(images.jpeg(images.photo(860, 430)))
    image_id, path = manifest["id"], manifest["variants"][1]["path"]
    for name, region in EDGES:  # cached (HIT) on every edge
        for _ in range(2):
            await wan.get(region, wan.edges[name].url + path)
        assert (await wan.get(region, wan.edges[name].url + path))[1] == "HIT"
    asked = time.monotonic()
    async with wan.admin.post(wan.ingest_url + "/v1/purges", json={"ids": [image_id]},
                              headers=ADMIN) as r:
        body = await r.json()
        answered = time.monotonic()
        purge_answer = answered - asked
        assert r.status == 200, body
    assert body["edges"] == {n: "applied" for n, _ in EDGES}, body
    purge = await asyncio.gather(*(
        _first_applied(wan, region, wan.edges[name].url + path, answered, (200, "MISS"))
        for name, region in EDGES))
    asked = time.monotonic()
    async with wan.admin.delete(f"{wan.ingest_url}/v1/images/{image_id}",
                                headers=ADMIN) as r:
        answered = time.monotonic()
        delete_answer = answered - asked
        assert r.status == 204, await r.text()
        seq = r.headers["X-Purge-Seq"]
    async with wan.admin.get(f"{wan.ingest_url}/v1/purges/{seq}", headers=ADMIN) as r:
        assert (await r.json())["edges"] == {n: "applied" for n, _ in EDGES}
    delete = await asyncio.gather(*(
        _first_applied(wan, region, wan.edges[name].url + path, answered, (404, ""))
        for name, region in EDGES))
    figures = {}
    for (name, region), p, d in zip(EDGES, purge, delete, strict=True):
        bound = RTT_TO_ORIGIN[region] + 0.1
        assert p <= bound and d <= bound, (name, p, d, bound)
        figures[name] = {"purge_ms": round(p * 1000, 1), "delete_ms": round(d * 1000, 1),
                         "bound_ms": round(bound * 1000)}
    # The answers themselves wait for the farthest edge's acknowledgement.
    figures["answer_ms"] = {"purge": round(purge_answer * 1000, 1),
                            "delete": round(delete_answer * 1000, 1)}
    wan.record("applied_after_answer_ms", figures)


# -- 4. failover when an edge's link is cut ----------------------------------------------
async def test_the_router_stops_sending_clients_to_a_cut_edge(wan: Wan) -> None:
    image_id = (await wan.upload(images.jpeg(images.photo(880, 440))))["id"]
    owner = _owner("eu-west", image_id)
    edge = wan.edges[owner]
    assert (await _route(wan, "eu-west", image_id))["edge"] == owner
    # Worst case: the cut lands just after a good probe of this edge; its round ends
    # within a timeout, then `fall` probes each wait an interval and time out.
    bound = FALL * (PROBE_INTERVAL + PROBE_TIMEOUT) + PROBE_TIMEOUT + 0.5
    wan.net.set_link(edge.ns, "eth0", up=False)
    cut = time.monotonic()
    try:
        async with asyncio.timeout(bound + 5):
            while (await _route(wan, "eu-west", image_id))["edge"] == owner:  # noqa: ASYNC110
                await asyncio.sleep(0.05)  # the router's probes decide, in another process
        moved = time.monotonic() - cut
        after = await _route(wan, "eu-west", image_id)
        assert after["served_by_region"] == "eu-west" and after["edge"] != owner
    finally:
        wan.net.set_link(edge.ns, "eth0", up=True)
    back_at = time.monotonic()
    async with asyncio.timeout(30):
        while (await _route(wan, "eu-west", image_id))["edge"] != owner:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    back = time.monotonic() - back_at
    wan.record("failover", {"edge": owner, "moved_after_cut_s": round(moved, 2),
                            "bound_s": bound, "back_after_restore_s": round(back, 2)})
    assert moved <= bound, (moved, bound)


# -- 5. a partitioned region during deletes ----------------------------------------------
async def test_a_region_cut_off_during_deletes_serves_none_of_them_after(wan: Wan) -> None:
    region, edge = "ap-south", wan.edges["ap-south-a"]
    manifests = [await wan.upload(images.jpeg(images.photo(900 + i * 20, 450)))
                 for i in range(4)]
    paths = [m["variants"][3]["path"] for m in manifests]
    deleted, kept = paths[:3], paths[3]
    for p in paths:
        await wan.get(region, edge.url + p)
        assert (await wan.get(region, edge.url + p))[:2] == (200, "HIT")
    short = REGIONS[region][0]
    # The region's uplink: its edge reaches neither ingest nor the origin; its clients
    # still reach it.
    wan.net.set_link(wan.site, f"up-{short}", up=False)
    cut = time.monotonic()
    restored = False
    try:

        async def delete(image_id: str) -> tuple[int, int]:
            async with wan.admin.delete(f"{wan.ingest_url}/v1/images/{image_id}",
                                        headers=ADMIN) as r:
                return r.status, int(r.headers.get("X-Purge-Seq", "0"))

        answers = await asyncio.gather(*(delete(m["id"]) for m in manifests[:3]))
        assert [status for status, _ in answers] == [204] * 3
        seq = max(s for _, s in answers)
        async with wan.admin.get(f"{wan.ingest_url}/v1/purges/{seq}", headers=ADMIN) as r:
            acks = (await r.json())["edges"]  # who ingest says applied the last delete
        assert acks.get(edge.name) != "applied", acks
        deleted_at = time.monotonic() - cut
        # While cut: what the edge answers, until it refuses media or the bound has passed.
        bound = REFUSED_WITHIN + 1  # + scheduling slack on a shared box
        stale_while_cut, refused_at = 0, None
        async with asyncio.timeout(bound + 5):
            while refused_at is None and time.monotonic() - cut < bound + 2:
                status = (await wan.get(region, edge.url + deleted[0]))[0]
                if status == 200:
                    stale_while_cut += 1
                elif status == 503:
                    refused_at = time.monotonic() - cut
                await asyncio.sleep(0.1)
        kept_while_cut = (await wan.get(region, edge.url + kept))[0]
        # The router sits at the origin site: the cut region's clients cannot reach it, and
        # it cannot probe the cut edge. Asked from the site, where would it send them?
        async with wan.admin.get(f"{wan.router_url}/v1/route?region={region}") as r:
            routed_while_cut = (await r.json())["served_by_region"]
        wan.net.set_link(wan.site, f"up-{short}", up=True)
        restored = True
        back = time.monotonic()
        # From the moment the link is back: no 200 for any deleted id, ever.
        # Until every deleted id is 404 and the kept one is served again.
        stale_after, served_again, all_gone = 0, None, None
        statuses: dict[int, int] = {}
        async with asyncio.timeout(30):
            while served_again is None or all_gone is None:
                round_ = [(await wan.get(region, edge.url + p))[0] for p in deleted]
                for status in round_:
                    statuses[status] = statuses.get(status, 0) + 1
                stale_after += round_.count(200)
                if all_gone is None and round_ == [404] * len(deleted):
                    all_gone = time.monotonic() - back
                if served_again is None and (await wan.get(region, edge.url + kept))[0] == 200:
                    served_again = time.monotonic() - back
                await asyncio.sleep(0.05)
    finally:
        if not restored:
            wan.net.set_link(wan.site, f"up-{short}", up=True)
    wan.record("partition", {
        "region": region, "deletes_answered_after_cut_s": round(deleted_at, 2),
        "ingest_says": acks,
        "stale_serves_while_cut": stale_while_cut,
        "media_refused_after_cut_s": None if refused_at is None else round(refused_at, 2),
        "refusal_bound_s": bound, "kept_image_while_cut": kept_while_cut,
        "router_at_the_site_sends_its_clients_to": routed_while_cut,
        "serves_again_after_restore_s": round(served_again, 2),
        "deleted_all_404_after_restore_s": round(all_gone, 2),
        "stale_serves_after_restore": stale_after, "statuses_after_restore": statuses})
    assert stale_after == 0, statuses
    assert refused_at is not None and refused_at <= bound, (refused_at, bound)
    assert kept_while_cut == 503  # it cannot prove anything fresh: it serves nothing


def _print_table(w: Wan) -> None:
    f = w.figures
    lines = ["", "Regions over a WAN (network namespaces, delay relays; origin site in eu-west)"]
    links = f.get("links", {})
    lines.append(f"{'region':10} {'RTT->origin':>11} {'new conn':>9} {'reused':>7} "
                 f"{'miss ms':>8} {'hit ms':>7} {'purge ms':>9} {'delete ms':>10}")
    for region in REGIONS:
        m = links.get("measured", {}).get(region, {})
        t = f.get("tiered_fetch_ttfb_ms", {}).get(region, {})
        owner_miss = next((v for k, v in t.items() if k.endswith("miss")), "-")
        owner_hit = next((v for k, v in t.items() if k.endswith("hit")), "-")
        applied = [v for k, v in f.get("applied_after_answer_ms", {}).items()
                   if k.startswith(region) and "purge_ms" in v]
        purge = max((a["purge_ms"] for a in applied), default="-")
        delete = max((a["delete_ms"] for a in applied), default="-")
        new, reused = m.get("new_connection_ms", "-"), m.get("reused_connection_ms", "-")
        lines.append(f"{region:10} {RTT_TO_ORIGIN[region] * 1000:>9.0f}ms {new:>9} {reused:>7} "
                     f"{owner_miss:>8} {owner_hit:>7} {purge:>9} {delete:>10}")
    answers = f.get("applied_after_answer_ms", {}).get("answer_ms")
    if answers:
        lines.append(f"purge answered in {answers['purge']} ms, delete in {answers['delete']} ms "
                     "(from the origin site: every edge applied it)")
    for key in ("failover", "partition"):
        if key in f:
            lines.append(f"{key}: {json.dumps(f[key])}")
    lines.append(f"figures: {w.out}")
    print("\n".join(lines))
