"""Hits over TLS: mediacdn edge (`tls_cert`/`tls_key`) vs nginx (`ssl`) on the same
certificate and the same objects, in the same run, with a plain-HTTP pair beside them so the
cost of TLS shows.

One worker each pinned to core 0, wrk on core 1 (https, keep-alive: the handshakes happen once
per connection, so this is the cost per byte of encryption), 64 connections, 1,000 objects of
~60 KB, all hits. Per row: hits/s, p50/p99 and the server's CPU time per hit (its process
tree's user + system time over the wrk run, divided by the hits it served).

    .venv/bin/python -m scripts.bench.tls [--seconds 10] [--connections 64]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import ssl
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from common.hashing import content_id
from origin import keys as K
from origin.fs import FsOrigin
from scripts.bench.common import (
    WrkResult,
    ensure_debian_packages,
    free_port,
    run_wrk,
    write_bench_config,
    wrk_paths_script,
)
from scripts.bench.common import (
    start_nginx as common_nginx,
)
from tests.certs import CertAuthority

ROOT = Path(__file__).resolve().parents[2]
OBJECTS, SIZE = 1000, 60 * 1024
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Row:
    wrk: WrkResult
    cpu_seconds: float
    seconds: int

    @property
    def cpu_us_per_hit(self) -> float:
        hits = self.wrk.rps * self.seconds
        return self.cpu_seconds / hits * 1e6 if hits else float("nan")

    def line(self, name: str) -> str:
        return f"{self.wrk.row(name)}  cpu {self.cpu_us_per_hit:6.1f} us/hit"


@dataclass(frozen=True)
class Tls:
    ca: Path
    cert: Path
    key: Path


def tree_cpu_seconds(pid: int) -> float:
    """User + system time of `pid` and its descendants (nginx: master and workers)."""
    total = 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += tree_cpu_seconds(int(child))
    except (OSError, IndexError, ValueError):
        pass  # a process that just exited
    return total


async def seed(origin_dir: Path, static_dir: Path) -> list[str]:
    origin = FsOrigin(origin_dir)
    paths = []
    for i in range(OBJECTS):
        data = os.urandom(SIZE + (i % 7) * 512)
        image_id = content_id(i.to_bytes(4, "big") + b"tls-bench")
        await origin.put(K.variant(image_id, "w640", "webp"), data, "image/webp",
                         {"blake3": content_id(data)})
        path = f"/i/{image_id}/w640.webp"
        (static_dir / path[1:]).parent.mkdir(parents=True, exist_ok=True)
        (static_dir / path[1:]).write_bytes(data)
        paths.append(path)
    return paths


def start_nginx(tmp: Path, static: Path, port: int, tls: Tls | None) -> subprocess.Popen[bytes]:
    ssl_lines = (f"ssl_certificate {tls.cert};\n    ssl_certificate_key {tls.key};\n"
                 "    ssl_protocols TLSv1.2 TLSv1.3;\n    ssl_session_cache shared:SSL:1m;"
                 if tls else "")
    return common_nginx(tmp, static, port, "0", 1, " ssl" if tls else "", ssl_lines)


def start_edge(tmp: Path, port: int, tls: Tls | None) -> subprocess.Popen[bytes]:
    settings = "memory_bytes = 268435456\n"
    if tls:
        settings += f'tls_cert = "{tls.cert}"\ntls_key = "{tls.key}"\n'
    name = "tls" if tls else "plain"
    cfg = write_bench_config(tmp / f"edge-{name}.toml", tmp, edges=[("bench", "bench", port)],
                             edge_settings=settings, cache_root=tmp / f"cache-{name}")
    if tls:  # the edge's own clients (none in a hit) would verify with the test CA
        cfg.write_text(f'tls_ca = "{tls.ca}"\n' + cfg.read_text())
    env = dict(os.environ, MEDIACDN_ADMIN_TOKEN="bench-admin-token-0123456789",
               MEDIACDN_API_KEY="bench-api-key-0123456789", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-m", "scripts", "edge",
                             "--node", "bench", "--config", str(cfg)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    proc.stdout.readline()  # "edge bench URL": listening
    return proc


async def fetch_all(base: str, paths: list[str], ctx: ssl.SSLContext | None,
                    expect_cache: str | None) -> None:
    """Every object once (the edge: fills its cache; both: proves the server answers)."""
    connector = aiohttp.TCPConnector(ssl=ctx if ctx is not None else False)
    async with aiohttp.ClientSession(connector=connector) as s:
        sem = asyncio.Semaphore(32)

        async def one(p: str) -> None:
            async with sem, s.get(base + p) as r:
                body = await r.read()
                assert r.status == 200 and len(body) >= SIZE, (p, r.status)
                if expect_cache:
                    assert r.headers.get("X-Cache") == expect_cache, r.headers

        for _ in range(60):  # the server may still be starting
            try:
                await one(paths[0])
                break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.25)
        await asyncio.gather(*(one(p) for p in paths))


def measure(proc: subprocess.Popen[bytes], base: str, paths: list[str], ctx: ssl.SSLContext |
            None, edge: bool, script: Path, seconds: int, connections: int) -> Row:
    try:
        asyncio.run(fetch_all(base, paths, ctx, None))
        if edge:
            asyncio.run(fetch_all(base, paths, ctx, "HIT"))  # all cached now
        cpu0 = tree_cpu_seconds(proc.pid)
        result = run_wrk(base, script, seconds, connections, "1")
        return Row(result, tree_cpu_seconds(proc.pid) - cpu0, seconds)
    finally:
        proc.send_signal(signal.SIGTERM if edge else signal.SIGQUIT)
        proc.wait(20)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    args = ap.parse_args()
    ensure_debian_packages("wrk", "nginx", "taskset")
    with tempfile.TemporaryDirectory(prefix="mediacdn-bench-tls-") as d:
        tmp = Path(d)
        tmp.chmod(0o755)  # nginx workers run as an unprivileged user
        ca = CertAuthority.create(tmp)
        tls = Tls(ca.path, tmp / "server.pem", tmp / "server.key")
        ca.issue(tls.cert, tls.key)
        tls.key.chmod(0o644)  # readable by nginx's workers too (a throwaway test key)
        ctx = ssl.create_default_context(cafile=str(ca.path))
        static = tmp / "static"
        paths = asyncio.run(seed(tmp / "origin", static))
        script = wrk_paths_script(paths, tmp / "paths.lua")
        wrk = (script, args.seconds, args.connections)
        rows: dict[str, Row] = {}
        for name, kind, secure in (("nginx, TLS", "nginx", True),
                                   ("mediacdn edge, TLS", "edge", True),
                                   ("nginx, plain HTTP (sendfile)", "nginx", False),
                                   ("mediacdn edge, plain HTTP", "edge", False)):
            port = free_port()
            layer = tls if secure else None
            proc = (start_edge(tmp, port, layer) if kind == "edge"
                    else start_nginx(tmp, static, port, layer))
            base = f"{'https' if secure else 'http'}://127.0.0.1:{port}"
            rows[name] = measure(proc, base, paths, ctx if secure else None, kind == "edge",
                                 *wrk)

    print(f"\nHits over TLS: {OBJECTS} objects of ~{SIZE // 1024} KB, all hits, "
          f"{args.connections} keep-alive connections, one worker each on core 0, wrk on "
          f"core 1, {args.seconds} s each (TLS 1.3, the same ECDSA P-256 certificate)")
    for name, row in rows.items():
        print(row.line(name))

    def ratio(a: str, b: str) -> str:
        x, y = rows[a], rows[b]
        return (f"{x.wrk.rps / y.wrk.rps:.2f}x hits/s, {x.cpu_us_per_hit / y.cpu_us_per_hit:.2f}x "
                f"CPU per hit, p99 {x.wrk.p99_ms:.2f} vs {y.wrk.p99_ms:.2f} ms")

    print(f"edge/nginx over TLS:        {ratio('mediacdn edge, TLS', 'nginx, TLS')}")
    print(f"edge/nginx over plain HTTP: "
          f"{ratio('mediacdn edge, plain HTTP', 'nginx, plain HTTP (sendfile)')}")
    print(f"TLS/plain, edge:            {ratio('mediacdn edge, TLS', 'mediacdn edge, plain HTTP')}")
    print(f"TLS/plain, nginx:           "
          f"{ratio('nginx, TLS', 'nginx, plain HTTP (sendfile)')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
