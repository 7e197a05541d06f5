"""Shielding, as real processes on loopback: us-east and ap-south name eu-west as their
shield, so their owner edges fill from eu-west's owner before the origin, and the origin
(a real S3 server behind a counting proxy) sees one GET per object for all three regions."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from common.hashing import content_id
from edge.rendezvous import score
from tests import images
from tests.helpers import AUTH
from tests.proxy import CountingProxy
from tests.s3server import S3Server
from tests.topology import EDGES, Ports, Service, env, write_config

pytestmark = pytest.mark.timeout(180)


@dataclass
class Net:
    ports: Ports
    proxy: CountingProxy
    ingest: Service
    edges: dict[str, Service]
    http: aiohttp.ClientSession

    def url(self, edge: str) -> str:
        return f"http://127.0.0.1:{self.ports.edges[edge]}"


@pytest.fixture
async def net(tmp_path: Path, s3_server: S3Server) -> AsyncIterator[Net]:
    proxy = CountingProxy(s3_server.endpoint)
    await proxy.start()
    origin = (f'kind = "s3"\nbucket = "t-{uuid.uuid4().hex[:16]}"\n'
              f'endpoint_url = "{proxy.url}"\nconnect_timeout = 0.5\nread_timeout = 2\n'
              "max_attempts = 1\n")
    config, ports = write_config(tmp_path, origin)
    text = config.read_text()
    for region in ("us-east", "ap-south"):
        text = text.replace(f'name = "{region}"\n', f'name = "{region}"\nshield = "eu-west"\n')
    config.write_text(text)
    environ = env({"AWS_ACCESS_KEY_ID": s3_server.access_key,
                   "AWS_SECRET_ACCESS_KEY": s3_server.secret_key})
    conf = ["--config", str(config)]
    ingest = await Service(["ingest", *conf], environ).start()
    edges = dict(zip([n for n, _ in EDGES], await asyncio.gather(
        *(Service(["edge", "--node", n, *conf], environ).start() for n, _ in EDGES)),
        strict=True))
    async with aiohttp.ClientSession() as http:
        yield Net(ports, proxy, ingest, edges, http)
    await asyncio.gather(ingest.stop(), *(e.stop() for e in edges.values()))
    await proxy.close()


async def _upload(net: Net) -> dict[str, object]:
    async with net.http.post(net.ingest.url + "/v1/images", data=images.jpeg(),
                             headers=AUTH) as r:
        assert r.status in (200, 201)
        return await r.json()  # type: ignore[no-any-return]


async def _get(net: Net, edge: str, path: str) -> bytes:
    async with net.http.get(net.url(edge) + path) as r:
        assert r.status == 200, await r.text()
        return await r.read()


async def test_one_object_in_three_regions_is_one_origin_get(net: Net) -> None:
    manifest = await _upload(net)
    v = manifest["variants"][0]  # type: ignore[index]
    image_id, path = manifest["id"], v["path"]
    key = path.split("/i/", 1)[1].replace(f"{image_id}/", f"variants/{image_id}/")
    # Shielded regions first, so the shield is filled by their request, not a client's.
    for edge in ("us-east-a", "ap-south-a", "eu-west-a", "eu-west-b"):
        assert content_id(await _get(net, edge, path)) == v["blake3"]
    assert net.proxy.gets(key) == 1, net.proxy.counts


async def test_the_origin_serves_when_the_shield_is_down(net: Net) -> None:
    manifest = await _upload(net)
    v = manifest["variants"][1]  # type: ignore[index]
    shield = max(("eu-west-a", "eu-west-b"), key=lambda n: score(n, str(manifest["id"])))
    await net.edges[shield].stop()
    assert content_id(await _get(net, "ap-south-a", str(v["path"]))) == v["blake3"]

