"""The topology as real processes on loopback: router, tiered fetch, purge, delete, the ops
CLI, all against a real S3 server behind a counting proxy."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from common.hashing import content_id
from tests import images
from tests.helpers import AUTH
from tests.proxy import CountingProxy
from tests.s3server import S3Server
from tests.topology import EDGES, Ports, Service, env, run_cli, write_config

pytestmark = pytest.mark.timeout(180)


@dataclass
class Topo:
    config: Path
    ports: Ports
    env: dict[str, str]
    proxy: CountingProxy
    ingest: Service
    router: Service
    edges: dict[str, Service]
    http: aiohttp.ClientSession

    def edge_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports.edges[name]}"

    async def upload(self, data: bytes) -> dict[str, object]:
        async with self.http.post(self.ingest.url + "/v1/images", data=data, headers=AUTH) as r:
            assert r.status in (200, 201)
            return await r.json()  # type: ignore[no-any-return]

    async def get(self, url: str, **kw: object) -> tuple[int, str, bytes]:
        async with self.http.get(url, allow_redirects=False, **kw) as r:  # type: ignore[arg-type]
            return r.status, r.headers.get("X-Cache", ""), await r.read()

    async def cli(self, *argv: str) -> tuple[int, str, str]:
        return await run_cli(*argv, "--config", str(self.config), environ=self.env)


@pytest.fixture
async def topo(tmp_path: Path, s3_server: S3Server) -> AsyncIterator[Topo]:
    proxy = CountingProxy(s3_server.endpoint)
    await proxy.start()
    origin = (f'kind = "s3"\nbucket = "t-{uuid.uuid4().hex[:16]}"\n'
              f'endpoint_url = "{proxy.url}"\nconnect_timeout = 0.5\nread_timeout = 2\n'
              "max_attempts = 1\n")
    config, ports = write_config(tmp_path, origin)
    environ = env({"AWS_ACCESS_KEY_ID": s3_server.access_key,
                   "AWS_SECRET_ACCESS_KEY": s3_server.secret_key})
    conf = ["--config", str(config)]
    ingest = await Service(["ingest", *conf], environ).start()
    edges = dict(zip([n for n, _ in EDGES], await asyncio.gather(
        *(Service(["edge", "--node", n, *conf], environ).start() for n, _ in EDGES)),
        strict=True))
    router = await Service(["router", *conf], environ).start()
    async with aiohttp.ClientSession() as http:
        yield Topo(config, ports, environ, proxy, ingest, router, edges, http)
    await asyncio.gather(ingest.stop(), router.stop(), *(e.stop() for e in edges.values()))
    await proxy.close()


async def _route(t: Topo, query: str, headers: dict[str, str] | None = None) -> dict[str, str]:
    async with t.http.get(f"{t.router.url}/v1/route?{query}", headers=headers) as r:
        assert r.status == 200, await r.text()
        return await r.json()  # type: ignore[no-any-return]


async def _wait_for(predicate: Callable[[], Awaitable[bool]]) -> None:
    """Poll a condition another process will make true (health probes run on a timer)."""
    async with asyncio.timeout(10):
        while not await predicate():  # noqa: ASYNC110 - the event lives in other processes
            await asyncio.sleep(0.1)


async def test_router_picks_the_region(topo: Topo) -> None:
    image_id = content_id(b"any")
    assert (await _route(topo, "region=ap-south"))["region"] == "ap-south"
    r = await _route(topo, f"id={image_id}", {"X-Client-Country": "US"})
    assert (r["region"], r["reason"], r["edge"]) == ("us-east", "country", "us-east-a")
    assert (await _route(topo, "ip=10.3.7.9"))["region"] == "ap-south"
    assert (await _route(topo, "ip=10.3.7.9"))["reason"] == "cidr"
    r = await _route(topo, "ip=192.0.2.1")
    assert (r["region"], r["reason"]) == ("eu-west", "default")
    async with topo.http.get(f"{topo.router.url}/v1/route?region=mars") as resp:
        assert resp.status == 400
    async with topo.http.get(f"{topo.router.url}/i/{image_id}/w320.webp", allow_redirects=False,
                             headers={"X-Client-Country": "SG"}) as resp:
        assert resp.status == 302
        assert resp.headers["Location"] == f"{topo.edge_url('ap-south-a')}/i/{image_id}/w320.webp"
    async with topo.http.get(f"{topo.router.url}/i/nothex/w320.webp") as resp:
        assert resp.status == 400


async def test_redirect_follows_to_the_bytes(topo: Topo) -> None:
    manifest = await topo.upload(images.jpeg())
    v = manifest["variants"][0]  # type: ignore[index]
    async with topo.http.get(topo.router.url + v["path"], headers={"X-Client-Country": "DE"}) as r:
        assert r.status == 200 and content_id(await r.read()) == v["blake3"]


async def test_failover_to_the_nearest_region_and_back(topo: Topo) -> None:
    image_id = content_id(b"failover")
    before = await _route(topo, f"region=eu-west&id={image_id}")
    assert before["served_by_region"] == "eu-west"
    owner = before["edge"]
    await topo.edges[owner].stop()  # one edge of two: the other takes over in-region

    async def moved() -> bool:
        r = await _route(topo, f"region=eu-west&id={image_id}")
        return r["edge"] != owner and r["served_by_region"] == "eu-west"

    await _wait_for(moved)
    other = next(n for n, r in EDGES if r == "eu-west" and n != owner)
    await topo.edges[other].stop()  # the whole region down: nearest region (us-east)

    async def failed_over() -> bool:
        return (await _route(topo, f"region=eu-west&id={image_id}"))["served_by_region"] \
            == "us-east"

    await _wait_for(failed_over)
    await topo.edges[owner].start()

    async def back() -> bool:
        return (await _route(topo, f"region=eu-west&id={image_id}"))["edge"] == owner

    await _wait_for(back)


async def test_tiered_fetch_one_origin_get_per_region(topo: Topo) -> None:
    manifest = await topo.upload(images.jpeg(images.photo(900, 600)))
    path = manifest["variants"][0]["path"]  # type: ignore[index]
    topo.proxy.counts.clear()
    for name in ("eu-west-a", "eu-west-b", "eu-west-b", "eu-west-a"):
        status, _, _ = await topo.get(topo.edge_url(name) + path)
        assert status == 200
    assert topo.proxy.gets("/variants/") == 1  # both edges of the region, one origin GET
    status, _, _ = await topo.get(topo.edge_url("us-east-a") + path)
    assert status == 200 and topo.proxy.gets("/variants/") == 2  # another region: its own


async def test_cli_purge_makes_every_edge_miss(topo: Topo) -> None:
    manifest = await topo.upload(images.jpeg())
    image_id = manifest["id"]
    # A different variant per edge: a refill of one edge through its region's owner must
    # not warm the owner for the variant the owner is checked with.
    paths = [v["path"] for v in manifest["variants"]][: len(EDGES)]  # type: ignore[index]
    for path in paths:
        for name, _ in EDGES:
            await topo.get(topo.edge_url(name) + path)
            assert (await topo.get(topo.edge_url(name) + path))[1] == "HIT"
    code, out, err = await topo.cli("purge", str(image_id))
    assert code == 0, err
    assert len([line for line in out.splitlines() if " ok applied" in line]) == len(EDGES)
    for (name, _), path in zip(EDGES, paths, strict=True):
        assert (await topo.get(topo.edge_url(name) + path))[1] == "MISS", name
    code, out, _ = await topo.cli("purge", "--all", "--region", "us-east", "--json")
    assert code == 0
    body = json.loads(out)
    assert [r["edge"] for r in body["results"]] == ["us-east-a"] and body["failed"] == 0


async def test_cli_purge_with_an_edge_down_names_it(topo: Topo) -> None:
    await topo.edges["eu-west-b"].stop()
    code, out, err = await topo.cli("purge", content_id(b"x"))
    assert code == 1
    assert "eu-west-b" in err and "unreachable" in err
    assert "edge eu-west-a eu-west ok" in out


async def test_cli_delete_everywhere_even_for_an_edge_that_was_down(topo: Topo) -> None:
    manifest = await topo.upload(images.png_alpha())
    image_id = str(manifest["id"])
    path = manifest["variants"][0]["path"]  # type: ignore[index]
    for name, _ in EDGES:
        assert (await topo.get(topo.edge_url(name) + path))[0] == 200
    await topo.edges["ap-south-a"].stop()  # cut off during the delete
    code, out, err = await topo.cli("delete", image_id)
    assert code == 1 and "ap-south-a" in err  # it could not be told: named
    assert f"deleted {image_id}" in out
    for name in ("eu-west-a", "eu-west-b", "us-east-a"):
        assert (await topo.get(topo.edge_url(name) + path))[0] == 404
    await topo.edges["ap-south-a"].start()
    # Its very first answer after the restart already knows about the delete.
    assert (await topo.get(topo.edge_url("ap-south-a") + path))[0] == 404
    async with topo.http.get(f"{topo.ingest.url}/v1/images/{image_id}") as r:
        assert r.status == 404
    code, _, err = await topo.cli("delete", image_id)
    assert code == 1 and "404" in err


async def test_cli_upload_stats_warm(topo: Topo, tmp_path: Path) -> None:
    files = []
    for i, maker in enumerate((images.jpeg, images.png_alpha)):
        f = tmp_path / f"img{i}"
        f.write_bytes(maker())
        files.append(str(f))
    code, out, err = await topo.cli("upload", *files)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 2 and all(" created " in line for line in lines)
    code, out, _ = await topo.cli("upload", "--json", *files)
    results = json.loads(out)["results"]
    assert [r["status"] for r in results] == ["exists", "exists"]  # hash-first: not re-sent
    image_id = results[0]["id"]
    code, out, err = await topo.cli("warm", image_id)
    assert code == 0, err
    assert len(out.splitlines()) == 3  # one owner edge per region
    owner = out.splitlines()[0].split()[2]
    status, cache, _ = await topo.get(f"{topo.edge_url(owner)}/i/{image_id}/w640.jpg")
    assert (status, cache) == (200, "HIT")
    code, out, _ = await topo.cli("stats", "--json")
    body = json.loads(out)
    assert code == 0 and body["totals"]["hits"] >= 1
    assert {r["edge"] for r in body["results"]} == {n for n, _ in EDGES}
    code, out, _ = await topo.cli("stats", "--region", "eu-west")
    assert code == 0 and out.splitlines()[0].startswith("edge") and "total" in out
    code, out, err = await topo.cli("upload", str(tmp_path / "missing.jpg"))
    assert code == 1 and "missing.jpg" in err


async def test_cli_wrong_token_is_a_clear_failure(topo: Topo) -> None:
    wrong = dict(topo.env, MEDIACDN_ADMIN_TOKEN="wrong-token-but-long-enough")
    code, _, err = await run_cli("purge", "--all", "--config", str(topo.config), environ=wrong)
    assert code == 1 and "401" in err and "Traceback" not in err
