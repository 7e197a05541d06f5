"""Operating it (contract v2): TLS on every service, trusted proxies, the admin listener,
and the CLI and HTTP surface a new operator meets. Real processes on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from common.hashing import content_id
from tests import images
from tests.certs import CertAuthority
from tests.helpers import ADMIN, AUTH, ROOT
from tests.topology import EDGES, MEDIACDN, Ports, Service, env, run_cli, write_config

pytestmark = pytest.mark.timeout(180)
UNKNOWN_ID = content_id(b"never uploaded")


def config(tmp: Path, *, root: str = "", ingest: str = "", edge: str = "", router: str = "",
           nodes: dict[str, str] | None = None) -> tuple[Path, Ports]:
    """tests/topology.py's config (fs origin) with lines added to its tables."""
    path, ports = write_config(tmp, f'kind = "fs"\npath = "{tmp / "origin"}"')
    text = path.read_text()
    text = text.replace('log_level = "warning"\n', f'log_level = "warning"\n{root}', 1)
    for table, extra in (("[ingest]", ingest), ("[edge]", edge), ("[router]", router)):
        text = text.replace(f"{table}\n", f"{table}\n{extra}", 1)
    for name, extra in (nodes or {}).items():
        line = f"port = {ports.edges[name]}\n"
        text = text.replace(line, line + extra, 1)
    path.write_text(text)
    return path, ports


@dataclass
class Running:
    config: Path
    ports: Ports
    services: dict[str, Service]

    def url(self, name: str) -> str:
        return self.services[name].url

    async def cli(self, *argv: str, environ: dict[str, str] | None = None
                  ) -> tuple[int, str, str]:
        return await run_cli(*argv, "--config", str(self.config), environ=environ or env())


@contextlib.asynccontextmanager
async def running(path: Path, ports: Ports, names: list[str]) -> AsyncIterator[Running]:
    """`names` among "ingest", "router" and the edges; edges and ingest before the router."""
    conf = ["--config", str(path)]
    argv = {"ingest": ["ingest", *conf], "router": ["router", *conf]}
    argv.update({n: ["edge", "--node", n, *conf] for n, _ in EDGES})
    services: dict[str, Service] = {}
    try:
        first = [n for n in names if n != "router"]
        started = await asyncio.gather(*(Service(argv[n], env()).start() for n in first))
        services.update(zip(first, started, strict=True))
        if "router" in names:
            services["router"] = await Service(argv["router"], env()).start()
        yield Running(path, ports, services)
    finally:
        await asyncio.gather(*(s.stop() for s in services.values()), return_exceptions=True)


def verifying(ca: Path, **kw: object) -> aiohttp.ClientSession:
    ctx = ssl.create_default_context(cafile=str(ca))
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, **kw))  # type: ignore[arg-type]


ALL = ["ingest", *(n for n, _ in EDGES), "router"]


# -- 1. TLS -----------------------------------------------------------------------------


async def test_tls_on_every_service_and_hits_read_whole_through_tls(tmp_path: Path) -> None:
    ca = CertAuthority.create(tmp_path)
    cert, key = tmp_path / "svc.pem", tmp_path / "svc.key"
    ca.issue(cert, key)
    tls = f'tls_cert = "{cert}"\ntls_key = "{key}"\n'
    path, ports = config(tmp_path, root=f'tls_ca = "{ca.path}"\n', ingest=tls, edge=tls,
                         router=tls)
    async with running(path, ports, ALL) as t, verifying(ca.path) as https:
        for name in ALL:
            assert t.url(name).startswith("https://127.0.0.1:"), (name, t.url(name))
            async with https.get(t.url(name) + "/healthz") as r:
                assert r.status == 200
        # HTTPS only: plain HTTP on the same port gets no answer.
        async with aiohttp.ClientSession() as plain:
            with pytest.raises(aiohttp.ClientError):
                async with plain.get(f"http://127.0.0.1:{ports.ingest}/healthz") as r:
                    await r.read()
        data = images.jpeg(images.noisy(1600, 1200))
        async with https.post(t.url("ingest") + "/v1/images", data=data, headers=AUTH) as r:
            assert r.status == 201, await r.text()
            manifest = await r.json()
        # Big enough that a plain-HTTP hit would be sent with sendfile (and pass the
        # connection's 64 KiB buffer), small enough for the memory tier (1 MiB).
        variant = max((v for v in manifest["variants"] if v["bytes"] < 1 << 20),
                      key=lambda v: v["bytes"])
        assert variant["bytes"] > 128 << 10, variant
        image_id = manifest["id"]
        for expect in ("MISS", "HIT", "HIT"):
            # Through the router (its probes reached the edges over TLS) to the owner edge.
            async with https.get(f"{t.url('router')}{variant['path']}?region=eu-west") as r:
                assert r.status == 200 and r.url.scheme == "https"
                assert r.headers["X-Cache"] == expect
                body = await r.read()
            assert len(body) == variant["bytes"]
            assert content_id(body) == variant["blake3"]
        # The other eu-west edge fills from the owner over TLS (a peer fetch).
        async with https.get(f"{t.url('router')}/v1/route?region=eu-west&id={image_id}") as r:
            owner = (await r.json())["edge"]
        other = next(n for n, reg in EDGES if reg == "eu-west" and n != owner)
        for _ in range(2):
            async with https.get(t.url(other) + variant["path"]) as r:
                assert content_id(await r.read()) == variant["blake3"]
        async with https.get(t.url(other) + "/_admin/stats", headers=ADMIN) as r:
            assert (await r.json())["peer_fetches"] == 1
        # The CLI verifies with tls_ca; every edge applied the purge it followed over TLS.
        code, out, err = await t.cli("purge", image_id)
        assert code == 0, err
        assert len([ln for ln in out.splitlines() if " ok applied" in ln]) == len(EDGES)


async def _peer_serial_and_healthz(reader: asyncio.StreamReader,
                                   writer: asyncio.StreamWriter) -> int:
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
    await reader.readexactly(length)
    sslobj = writer.get_extra_info("ssl_object")
    der = sslobj.getpeercert(binary_form=True)
    from cryptography import x509

    return x509.load_der_x509_certificate(der).serial_number


async def test_sighup_reloads_the_certificate_and_keeps_open_connections(
        tmp_path: Path) -> None:
    ca = CertAuthority.create(tmp_path)
    cert, key = tmp_path / "ingest.pem", tmp_path / "ingest.key"
    first = ca.issue(cert, key)
    path, ports = config(tmp_path, ingest=f'tls_cert = "{cert}"\ntls_key = "{key}"\n')
    ctx = ssl.create_default_context(cafile=str(ca.path))
    async with running(path, ports, ["ingest"]) as t:
        old = await asyncio.open_connection("127.0.0.1", ports.ingest, ssl=ctx)
        assert await _peer_serial_and_healthz(*old) == first
        second = ca.issue(cert, key)
        proc = t.services["ingest"].proc
        assert proc is not None
        proc.send_signal(signal.SIGHUP)
        seen = first
        async with asyncio.timeout(10):
            while seen != second:
                await asyncio.sleep(0.1)
                fresh = await asyncio.open_connection("127.0.0.1", ports.ingest, ssl=ctx)
                seen = await _peer_serial_and_healthz(*fresh)
                fresh[1].close()
        # The connection opened before the reload still works, with its certificate.
        assert await _peer_serial_and_healthz(*old) == first
        assert proc.returncode is None
        old[1].close()
