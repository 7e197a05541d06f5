"""Operating it (contract v2): TLS on every service, trusted proxies, the admin listener,
and the CLI and HTTP surface a new operator meets. Real processes on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
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
from tests.s3server import free_port
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


# -- 2. Behind proxies --------------------------------------------------------------------


async def _route_from(source: str, url: str, headers: dict[str, str]) -> dict[str, str]:
    """/v1/route asked from loopback address `source` (127.0.0.2 is loopback too)."""
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with aiohttp.ClientSession(connector=connector) as http, http.get(
            url + "/v1/route", headers=headers) as r:
        assert r.status == 200
        return await r.json()  # type: ignore[no-any-return]


async def test_forwarded_for_is_believed_from_trusted_proxies_only(tmp_path: Path) -> None:
    path, ports = config(tmp_path, router='trusted_proxies = ["127.0.0.2/32"]\n')
    async with running(path, ports, [*(n for n, _ in EDGES), "router"]) as t:
        router = t.url("router")
        xff = {"X-Forwarded-For": "10.2.3.4"}
        got = await _route_from("127.0.0.2", router, xff)
        assert (got["region"], got["reason"], got["client"]) == ("us-east", "cidr", "10.2.3.4")
        # A client's own X-Forwarded-For entries come first: the right-most untrusted wins.
        spoofed = {"X-Forwarded-For": "10.3.0.9, 10.2.3.4, 127.0.0.2"}
        got = await _route_from("127.0.0.2", router, spoofed)
        assert (got["region"], got["client"]) == ("us-east", "10.2.3.4")
        got = await _route_from("127.0.0.2", router, {"Forwarded": 'for="10.3.1.1:4711"'})
        assert (got["region"], got["client"]) == ("ap-south", "10.3.1.1")
        # From an address not in trusted_proxies the headers are ignored.
        got = await _route_from("127.0.0.1", router, xff)
        assert (got["region"], got["reason"], got["client"]) == ("eu-west", "default",
                                                                 "127.0.0.1")
        # The redirect itself follows the same choice.
        connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
        async with aiohttp.ClientSession(connector=connector) as http, http.get(
                f"{router}/i/{UNKNOWN_ID}/w640.webp", headers=xff,
                allow_redirects=False) as r:
            assert r.status == 302 and r.headers["X-Edge"] == "us-east-a"


# -- 4. Admin on its own listener ----------------------------------------------------------


async def test_admin_surface_only_on_the_admin_port(tmp_path: Path) -> None:
    admin = {n: free_port() for n in ("ingest", "router", *(n for n, _ in EDGES))}
    path, ports = config(tmp_path, ingest=f"admin_port = {admin['ingest']}\n",
                         router=f"admin_port = {admin['router']}\n",
                         nodes={n: f"admin_port = {admin[n]}\n" for n, _ in EDGES})
    async with running(path, ports, ALL) as t, aiohttp.ClientSession() as http:
        def on(name: str, port: int) -> str:
            return f"http://127.0.0.1:{port}"
        checks = [("ingest", "/metrics"), ("ingest", "/_internal/purges?after=-1"),
                  ("router", "/metrics"), ("eu-west-a", "/metrics"),
                  ("eu-west-a", "/_admin/stats"), ("us-east-a", "/_admin/stats")]
        for name, route in checks:
            async with http.get(t.url(name) + route, headers=ADMIN) as r:
                assert r.status == 404, (name, route)
                assert r.content_type == "application/problem+json"
            async with http.get(on(name, admin[name]) + route, headers=ADMIN) as r:
                assert r.status == 200, (name, route, await r.text())
        async with http.post(t.url("eu-west-a") + "/_admin/purge", json={"all": True},
                             headers=ADMIN) as r:
            assert r.status == 404
        # Media and health stay on the public port.
        async with http.get(t.url("eu-west-a") + "/healthz") as r:
            assert r.status == 200
        # Edges follow ingest's purge stream at its admin URL: each applies the purge in
        # time (else ingest names it pending and the CLI exits 1); the CLI's purge, delete
        # and stats use the admin URLs.
        code, out, err = await t.cli("purge", UNKNOWN_ID)
        assert code == 0, err
        assert len([ln for ln in out.splitlines() if " ok applied" in ln]) == len(EDGES)
        code, out, err = await t.cli("stats", "--json")
        assert code == 0, err
        code, out, err = await t.cli("delete", UNKNOWN_ID)
        assert code == 1 and "404" in err


# -- 9. CLI and surface polish -------------------------------------------------------------


def cli(*argv: str, environ: dict[str, str] | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MEDIACDN, *argv], env=environ or env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_config_before_the_subcommand(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("bogus = 1\n")
    r = cli("--config", str(bad), "stats")
    assert r.returncode == 2 and "bogus" in r.stderr, r.stderr


def test_version() -> None:
    r = cli("--version")
    assert r.returncode == 0 and re.fullmatch(r"mediacdn \d+\.\d+\.\d+\S*\n", r.stdout)


@pytest.mark.parametrize("command", ["up", "ingest", "edge", "router", "upload", "purge",
                                     "delete", "stats", "warm", "reprocess", "sign"])
def test_each_subcommand_help_lists_env_and_an_example(command: str) -> None:
    r = cli(command, "--help")
    assert r.returncode == 0
    assert "MEDIACDN_CONFIG" in r.stdout and f"example:\n  mediacdn {command}" in r.stdout
    if command in ("purge", "delete", "stats"):
        assert "MEDIACDN_ADMIN_TOKEN" in r.stdout
    if command == "upload":
        assert "MEDIACDN_API_KEY" in r.stdout


def test_an_error_is_printed_once(tmp_path: Path) -> None:
    path, _ = config(tmp_path)  # nothing runs on its ports
    r = cli("purge", UNKNOWN_ID, "--config", str(path))
    assert r.returncode == 1
    both = r.stdout + r.stderr
    assert both.count("unreachable") == 1, both


async def test_stats_with_a_wrong_token_exits_1_without_a_table(tmp_path: Path) -> None:
    path, ports = config(tmp_path)
    async with running(path, ports, ["ap-south-a"]) as t:
        wrong = env({"MEDIACDN_ADMIN_TOKEN": "wrong-token-but-long-enough"})
        code, out, err = await t.cli("stats", "--region", "ap-south", environ=wrong)
        assert code == 1
        assert out == "", out  # no table of zeros
        assert err.count("401") == 1 and "ap-south-a" in err, err


async def test_warm_an_unknown_id_says_no_such_image(tmp_path: Path) -> None:
    path, ports = config(tmp_path)
    async with running(path, ports, ["ap-south-a"]) as t:
        code, _, err = await t.cli("warm", UNKNOWN_ID, "--region", "ap-south")
        assert code == 1 and "no such image" in err, err
        assert "404" not in err


def test_a_second_up_on_busy_ports_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    path, ports = config(tmp_path)
    with socket.create_server(("127.0.0.1", ports.ingest)):  # as a first `up` would
        proc = subprocess.Popen([*MEDIACDN, "up", "--config", str(path)], env=env(),
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        try:
            out, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)  # it drains its children
            proc.communicate(timeout=30)
            raise AssertionError("a second `up` kept running") from None
    assert proc.returncode == 2
    lines = (out + err).strip().splitlines()
    assert len(lines) == 1 and f"{ports.ingest}" in lines[0] and "in use" in lines[0], lines


async def test_up_prints_readable_aligned_service_lines(tmp_path: Path) -> None:
    path, _ = config(tmp_path)
    proc = await asyncio.create_subprocess_exec(
        *MEDIACDN, "up", "--config", str(path), env=env(), cwd=str(ROOT),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(60):
            while len(lines) < len(ALL):
                line = (await proc.stdout.readline()).decode().rstrip("\n")
                if not line.startswith("secret "):  # a generated secret, not a service
                    lines.append(line)
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            await proc.wait()
    assert {ln.split()[1] for ln in lines} == set(ALL)
    assert all(len(ln.split()) == 3 for ln in lines)  # still SERVICE NAME URL
    assert len({ln.index("http://") for ln in lines}) == 1, "\n".join(lines)


async def test_no_server_header_with_versions(tmp_path: Path) -> None:
    path, ports = config(tmp_path)
    async with running(path, ports, ["ingest", "ap-south-a", "router"]) as t, \
            aiohttp.ClientSession() as http:
        for name in ("ingest", "ap-south-a", "router"):
            for route in ("/healthz", "/nowhere", f"/i/{UNKNOWN_ID}/w640.webp"):
                async with http.get(t.url(name) + route, allow_redirects=False) as r:
                    assert r.headers.get("Server") == "mediacdn", (name, route, r.headers)


async def test_root_says_what_each_service_is(tmp_path: Path) -> None:
    path, ports = config(tmp_path)
    async with running(path, ports, ["ingest", "ap-south-a", "router"]) as t, \
            aiohttp.ClientSession() as http:
        for name, what in (("ingest", "mediacdn ingest"), ("ap-south-a", "mediacdn edge"),
                           ("router", "mediacdn router")):
            async with http.get(t.url(name) + "/") as r:
                assert r.status == 200
                body = await r.json()
            assert body["service"] == what and body["name"] == name
            assert body["about"] and body["health"] == "/healthz"


# -- 2. The reference front: nginx terminating TLS and HTTP/2 ----------------------------


def _nginx_conf(tmp: Path, front: str) -> Path:
    for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp / d).mkdir(exist_ok=True)
    (tmp / "front.conf").write_text(front)
    conf = tmp / "nginx.conf"
    conf.write_text(f"""worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
events {{}}
http {{
    access_log off;
    client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
    include {tmp}/front.conf;
}}
""")
    return conf


@pytest.mark.skipif(shutil.which("nginx") is None or shutil.which("curl") is None,
                    reason="needs Debian's nginx and curl (apt-get install nginx-light curl)")
async def test_reference_nginx_front_terminates_tls_and_h2_and_forwards_the_client(
        tmp_path: Path) -> None:
    ca = CertAuthority.create(tmp_path)
    cert, key = tmp_path / "front.pem", tmp_path / "front.key"
    ca.issue(cert, key)
    path, ports = config(tmp_path, router='trusted_proxies = ["127.0.0.1/32"]\n')
    # The client's own address (127.0.0.3) routes to us-east by CIDR.
    text = path.read_text().replace('cidrs = ["10.2.0.0/16"]', 'cidrs = ["10.2.0.0/16", '
                                    '"127.0.0.3/32"]')
    path.write_text(text)
    front_port = free_port()
    front = (ROOT / "deploy/nginx/edge-front.conf").read_text()
    front = (front.replace("server 127.0.0.1:8101;", f"server 127.0.0.1:{ports.router};")
             .replace("listen 443 ssl http2;", f"listen 127.0.0.1:{front_port} ssl http2;")
             .replace("listen [::]:443 ssl http2;", "")
             .replace("/etc/ssl/mediacdn/edge-eu-west-a.pem", str(cert))
             .replace("/etc/ssl/mediacdn/edge-eu-west-a.key", str(key)))
    conf = _nginx_conf(tmp_path, front)
    nginx = await asyncio.create_subprocess_exec(
        "nginx", "-c", str(conf), "-g", "daemon off;", stderr=asyncio.subprocess.DEVNULL)
    try:
        async with running(path, ports, [*(n for n, _ in EDGES), "router"]):
            url = f"https://localhost:{front_port}/i/{UNKNOWN_ID}/w640.webp"
            # A client that claims to be in ap-south (10.3.0.1): nginx appends the address it
            # saw, and the router believes only that.
            argv = ["curl", "-sS", "--http2", "--cacert", str(ca.path), "--interface",
                    "127.0.0.3", "-H", "X-Forwarded-For: 10.3.0.1", "-o", "/dev/null",
                    "-D", "-", "-w", "%{http_version}", url]
            async with asyncio.timeout(20):
                while True:
                    curl = await asyncio.create_subprocess_exec(
                        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
                    raw_out, _ = await curl.communicate()
                    if curl.returncode == 0:
                        break
                    await asyncio.sleep(0.2)  # nginx still starting
            out = raw_out.decode()
            head = out.lower()
            assert head.startswith("http/2 302"), out
            assert "x-edge: us-east-a" in head, out
            assert out.endswith("2")  # HTTP/2 to the client
    finally:
        nginx.terminate()
        async with asyncio.timeout(10):
            await nginx.wait()
