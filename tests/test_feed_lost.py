"""An edge that can reach neither ingest nor the origin cannot learn of purges or deletes:
it must stop serving media within a bound rather than serve its cache forever (and keep
serving what was deleted meanwhile once the link returns, until its follower reconnects).
One that still reaches the origin's log keeps serving.

The bound, from the config: a healthy follower hears from its feed (its stream to ingest,
whose heartbeat finds a dead link within 1.5 intervals, or a read of the origin's log while
ingest is away) at least every
    lease = max(1.5 * purge_follow_seconds, purge_poll_seconds + 1) + 2 * origin_timeout
seconds; past that it stops beating, and every worker refuses media once the heartbeat is
5 s old (beats are 1 s apart).

Real processes on loopback: ingest frozen with SIGSTOP (its socket still accepts, nothing
answers: what a cut link looks like to TCP; the stream's handshake needs its own deadline
then), the origin behind the suite's stoppable proxy.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from pathlib import Path

import aiohttp
import pytest

from tests import images
from tests.helpers import AUTH
from tests.proxy import CountingProxy
from tests.s3server import S3Server, free_port
from tests.topology import Service, env

pytestmark = pytest.mark.timeout(120)

FOLLOW, POLL, TIMEOUT = 0.5, 0.5, 0.5
LEASE = max(1.5 * FOLLOW, POLL + 1) + 2 * TIMEOUT
REFUSED_WITHIN = LEASE + 1 + 5 + 1  # + a beat, the workers' grace, scheduling slack


def _config(tmp: Path, proxy: CountingProxy, ingest_port: int, edge_port: int) -> Path:
    path = tmp / "mediacdn.toml"
    path.write_text(f"""
log_level = "warning"
[origin]
kind = "s3"
bucket = "t-{uuid.uuid4().hex[:16]}"
endpoint_url = "{proxy.url}"
connect_timeout = 0.5
read_timeout = 1
max_attempts = 1
[ingest]
port = {ingest_port}
purge_ack_seconds = 1
[edge]
cache_root = "{tmp / 'cache'}"
origin_timeout = {TIMEOUT}
purge_follow_seconds = {FOLLOW}
purge_poll_seconds = {POLL}
[router]
port = {free_port()}
default_region = "eu"
[[regions]]
name = "eu"
lat = 48.86
lon = 2.35
[[edges]]
name = "e1"
region = "eu"
port = {edge_port}
""")
    return path


async def _status(http: aiohttp.ClientSession, url: str) -> int:
    async with asyncio.timeout(5), http.get(url) as r:
        await r.read()
        return r.status


async def test_an_edge_cut_from_ingest_and_origin_refuses_media_within_the_bound(
        tmp_path: Path, s3_server: S3Server) -> None:
    proxy = CountingProxy(s3_server.endpoint)
    await proxy.start()
    edge_port = free_port()
    config = _config(tmp_path, proxy, free_port(), edge_port)
    environ = env({"AWS_ACCESS_KEY_ID": s3_server.access_key,
                   "AWS_SECRET_ACCESS_KEY": s3_server.secret_key})
    ingest = await Service(["ingest", "--config", str(config)], environ).start()
    edge = await Service(["edge", "--node", "e1", "--config", str(config)], environ).start()
    assert ingest.proc is not None
    frozen = False
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(ingest.url + "/v1/images", data=images.jpeg(),
                                 headers=AUTH) as r:
                assert r.status in (200, 201)
                path = (await r.json())["variants"][0]["path"]
            url = f"http://127.0.0.1:{edge_port}{path}"
            assert await _status(http, url) == 200
            ingest.proc.send_signal(signal.SIGSTOP)
            frozen = True
            # Ingest away, the origin's log still read: the edge keeps serving, past the
            # time it would refuse without a feed.
            t0 = time.monotonic()
            while time.monotonic() - t0 < REFUSED_WITHIN:
                assert await _status(http, url) == 200, "refused with the origin reachable"
                await asyncio.sleep(0.25)
            await proxy.stop()  # now no feed at all
            cut = time.monotonic()
            while (status := await _status(http, url)) == 200:
                assert time.monotonic() - cut < REFUSED_WITHIN, \
                    f"still serving {REFUSED_WITHIN} s after losing every purge feed"
                await asyncio.sleep(0.2)
            assert status == 503
            async with http.get(f"http://127.0.0.1:{edge_port}/readyz") as r:
                body = await r.json()
                assert r.status == 503 and body["media"] is False, body
            ingest.proc.send_signal(signal.SIGCONT)
            frozen = False
            await proxy.start()
            back = time.monotonic()
            while await _status(http, url) != 200:  # serves again, no restart
                assert time.monotonic() - back < 15, "never served again"
                await asyncio.sleep(0.2)
    finally:
        if frozen:
            ingest.proc.send_signal(signal.SIGCONT)
        await asyncio.gather(edge.stop(), ingest.stop(), return_exceptions=True)
        await proxy.close()
