"""The S3 origin's limits, against a real S3 server (moto) behind a real proxy, or a real
socket that never answers: `max_attempts` counts attempts, every call has one deadline,
and a broken bucket is an outage, never a missing object."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest

from common.errors import NotFound, OriginTimeout, OriginUnavailable
from origin import keys as K
from origin import open_origin
from tests.conftest import s3_origin_config
from tests.proxy import CountingProxy
from tests.s3server import S3Server, free_port

pytestmark = pytest.mark.timeout(60)
ID = "ab" * 32


@pytest.mark.parametrize("attempts", [1, 2, 3])
async def test_max_attempts_counts_attempts(
    s3_server: S3Server, proxy: CountingProxy, attempts: int
) -> None:
    cfg = s3_origin_config(s3_server, endpoint_url=proxy.url, max_attempts=attempts,
                           create_bucket=False)
    async with open_origin(cfg) as origin:
        proxy.fail_after_puts = -1  # S3 answers 503 SlowDown to everything
        with pytest.raises(OriginUnavailable):
            await origin.read(K.original(ID))
    assert proxy.gets(K.original(ID)) == attempts


async def test_a_hung_s3_holds_a_call_for_call_timeout_not_attempts_x_read_timeout(
    s3_server: S3Server
) -> None:
    held: list[asyncio.StreamWriter] = []

    async def accept(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        held.append(w)  # accepted, never answered

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cfg = s3_origin_config(s3_server, endpoint_url=f"http://127.0.0.1:{port}",
                           create_bucket=False, read_timeout=1.0, max_attempts=3,
                           call_timeout=1.5)
    loop = asyncio.get_running_loop()
    try:
        async with open_origin(cfg) as origin:
            for call in (origin.head(K.original(ID)), origin.read(K.original(ID)),
                         origin.put(K.original(ID), b"x", "image/jpeg", {})):
                t0 = loop.time()
                with pytest.raises(OriginTimeout):
                    await call
                # 3 attempts x 1 s of read timeout would be 3 s and more.
                assert loop.time() - t0 < cfg.call_timeout + 0.5
    finally:
        for w in held:
            w.close()
        server.close()


async def test_a_missing_bucket_is_an_outage_for_every_read(s3_server: S3Server) -> None:
    cfg = s3_origin_config(s3_server, bucket=f"gone-{os.urandom(6).hex()}",
                           create_bucket=False)
    async with open_origin(cfg) as origin:
        for call in (origin.head(K.original(ID)), origin.read(K.original(ID)),
                     origin.ping()):
            with pytest.raises(OriginUnavailable):
                await call
    async with open_origin(s3_origin_config(s3_server, bucket=cfg.bucket)) as origin:
        with pytest.raises(NotFound):  # made (create_bucket): now a key can be missing
            await origin.head(K.original(ID))


@pytest.fixture
def checking_s3() -> Iterator[S3Server]:
    """moto's server checking credentials (by default it accepts any)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = S3Server(f"http://127.0.0.1:{port}", "AKIANOSUCHKEY0000000", "wrong", "moto",
                      proc)
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(server.endpoint + "/moto-api/", timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        yield server
    finally:
        server.stop()


async def test_refused_credentials_are_an_outage_never_a_missing_object(
    checking_s3: S3Server
) -> None:
    cfg = s3_origin_config(checking_s3, create_bucket=False, max_attempts=1)
    async with open_origin(cfg) as origin:
        for call in (origin.head(K.original(ID)), origin.read(K.original(ID)),
                     origin.ping(), origin.list("purges/")):
            with pytest.raises(OriginUnavailable):  # InvalidAccessKeyId, or a bare 403
                await call
