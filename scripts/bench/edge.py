"""Edge hit-path benchmark: mediacdn edge vs nginx serving the same bytes, same run.

Server pinned to core 0, wrk on core 1, 64 keep-alive connections, 1,000 objects of ~60 KB
picked at random, all hits. Also: edge RSS with 1,000 open connections, and 500
concurrent misses on one object (origin GETs and added latency).

    .venv/bin/python -m scripts.bench.edge [--seconds 10] [--workers 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
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
    tree_rss_mib,
    wait_http,
    write_bench_config,
    wrk_paths_script,
)

ROOT = Path(__file__).resolve().parents[2]
ADMIN = "bench-admin-token-0123456789"
OBJECTS, SIZE = 1000, 60 * 1024


async def seed(origin_dir: Path, static_dir: Path) -> list[str]:
    origin = FsOrigin(origin_dir)
    paths = []
    for i in range(OBJECTS):
        data = os.urandom(SIZE + (i % 7) * 512)
        image_id = content_id(i.to_bytes(4, "big") + b"bench")
        await origin.put(K.variant(image_id, "w640", "webp"), data, "image/webp",
                         {"blake3": content_id(data)})
        path = f"/i/{image_id}/w640.webp"
        (static_dir / path[1:]).parent.mkdir(parents=True, exist_ok=True)
        (static_dir / path[1:]).write_bytes(data)
        paths.append(path)
    # one more object, never requested by wrk: the concurrent-miss test
    data = os.urandom(SIZE)
    await origin.put(K.variant(content_id(b"cold"), "w640", "webp"), data, "image/webp",
                     {"blake3": content_id(data)})
    return paths


def write_config(tmp: Path, port: int, workers: int) -> Path:
    return write_bench_config(tmp / f"bench-{workers}.toml", tmp,
                              edges=[("bench", "bench", port)],
                              edge_settings="memory_bytes = 268435456",
                              node_settings=f"workers = {workers}",
                              cache_root=tmp / f"cache-{workers}")


def start_edge(cfg: Path, cpus: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, MEDIACDN_ADMIN_TOKEN=ADMIN, MEDIACDN_API_KEY="bench-api-key-0123456789",
               PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(["taskset", "-c", cpus, sys.executable, "-m", "scripts", "edge",
                             "--node", "bench", "--config", str(cfg)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    proc.stdout.readline()  # "edge bench URL": listening
    return proc


def start_nginx(tmp: Path, static: Path, port: int, workers: int, cpus: str
                ) -> subprocess.Popen[bytes]:
    conf = tmp / "nginx.conf"
    conf.write_text(f"""
worker_processes {workers};
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
  types {{ image/webp webp; }}
  sendfile on;
  tcp_nopush on;
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path {tmp}/nginx-body;
  proxy_temp_path {tmp}/nginx-proxy;
  fastcgi_temp_path {tmp}/nginx-fcgi;
  uwsgi_temp_path {tmp}/nginx-uwsgi;
  scgi_temp_path {tmp}/nginx-scgi;
  server {{
    listen 127.0.0.1:{port} reuseport;
    root {static};
    etag on;
    add_header Cache-Control "public, max-age=31536000, immutable";
  }}
}}
""")
    proc = subprocess.Popen(["taskset", "-c", cpus, "nginx", "-c", str(conf), "-p", str(tmp)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc


def measure_nginx(tmp: Path, static: Path, paths: list[str], workers: int, server_cpus: str,
                  wrk_cpus: str, wrk_threads: int, script: Path, seconds: int,
                  connections: int) -> WrkResult:
    port = free_port()
    nginx = start_nginx(tmp, static, port, workers, server_cpus)
    try:
        wait_http(f"http://127.0.0.1:{port}{paths[0]}")
        return run_wrk(f"http://127.0.0.1:{port}", script, seconds, connections, wrk_cpus,
                       wrk_threads)
    finally:
        nginx.send_signal(signal.SIGQUIT)
        nginx.wait(10)


async def warm(base: str, paths: list[str]) -> None:
    async with aiohttp.ClientSession() as s:
        sem = asyncio.Semaphore(32)

        async def one(p: str) -> None:
            async with sem, s.get(base + p) as r:
                await r.read()
                assert r.status == 200, (p, r.status)

        await asyncio.gather(*(one(p) for p in paths))


async def open_connections(base: str, n: int) -> list[tuple[asyncio.StreamReader,
                                                            asyncio.StreamWriter]]:
    host, port = base.split("//")[1].split(":")
    conns = []
    for _ in range(n):
        r, w = await asyncio.open_connection(host, int(port))
        w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        conns.append((r, w))
    for r, _ in conns:
        await r.readuntil(b"\r\n\r\n")
        await r.read(15)
    return conns


async def concurrent_misses(base: str, n: int) -> tuple[float, float, int]:
    cold = f"/i/{content_id(b'cold')}/w640.webp"
    auth = {"Authorization": f"Bearer {ADMIN}"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        async with s.get(base + "/_admin/stats", headers=auth) as r:
            before = (await r.json())["origin_fetches"]
        t0 = time.perf_counter()
        async with s.get(base + f"/i/{content_id(b'single')}/w640.webp") as r:
            await r.read()  # a 404 fill: one origin round trip, as a floor
        one = time.perf_counter() - t0

        async def get() -> int:
            async with s.get(base + cold) as r:
                await r.read()
                return r.status

        t0 = time.perf_counter()
        statuses = await asyncio.gather(*(get() for _ in range(n)))
        total = time.perf_counter() - t0
        assert set(statuses) == {200}, set(statuses)
        async with s.get(base + "/_admin/stats", headers=auth) as r:
            after = (await r.json())["origin_fetches"]
    return one, total, after - before - 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    args = ap.parse_args()
    ensure_debian_packages("wrk", "nginx", "taskset")
    with tempfile.TemporaryDirectory(prefix="mediacdn-bench-") as d:
        tmp = Path(d)
        tmp.chmod(0o755)  # nginx workers run as an unprivileged user
        static = tmp / "static"
        paths = asyncio.run(seed(tmp / "origin", static))
        script = wrk_paths_script(paths, tmp / "paths.lua")
        results: dict[str, WrkResult] = {}

        wrk = (script, args.seconds, args.connections)
        results["nginx (1 worker, sendfile)"] = measure_nginx(tmp, static, paths, 1, "0", "1", 1,
                                                              *wrk)
        port = free_port()
        edge = start_edge(write_config(tmp, port, 1), "0")
        base = f"http://127.0.0.1:{port}"
        asyncio.run(warm(base, paths))
        results["mediacdn edge (1 worker)"] = run_wrk(base, *wrk, "1")
        rss_idle = tree_rss_mib(edge.pid)

        async def rss_with_connections() -> float:
            conns = await open_connections(base, 1000)
            rss = tree_rss_mib(edge.pid)
            for _, w in conns:
                w.close()
            return rss

        rss_1000 = asyncio.run(rss_with_connections())
        one, total, origin_gets = asyncio.run(concurrent_misses(base, 500))
        edge.send_signal(signal.SIGTERM)
        edge.wait(20)

        # Two workers each, both cores shared with wrk (-t2): the whole machine.
        results["nginx (2 workers)"] = measure_nginx(tmp, static, paths, 2, "0,1", "0,1", 2,
                                                     *wrk)
        port2 = free_port()
        edge2 = start_edge(write_config(tmp, port2, 2), "0,1")
        base2 = f"http://127.0.0.1:{port2}"
        asyncio.run(warm(base2, paths))
        asyncio.run(warm(base2, paths))  # connections land on either worker: warm both
        results["mediacdn edge (2 workers)"] = run_wrk(base2, *wrk, "0,1", 2)
        edge2.send_signal(signal.SIGTERM)
        edge2.wait(20)

    print(f"\nEdge hit path: {OBJECTS} objects of ~{SIZE // 1024} KB, all hits, "
          f"{args.connections} connections, server on core 0, wrk on core 1, "
          f"{args.seconds} s each")
    for name, r in results.items():
        print(r.row(name))
    ratio = results["mediacdn edge (1 worker)"].rps / results["nginx (1 worker, sendfile)"].rps
    print(f"ratio edge/nginx, 1 worker each: {ratio:.2f}x  (goal >= 0.6x)")
    ratio2 = results["mediacdn edge (2 workers)"].rps / results["nginx (2 workers)"].rps
    print(f"ratio edge/nginx, 2 workers each (wrk on the same cores): {ratio2:.2f}x")
    print(f"edge RSS: {rss_idle:.0f} MiB after the run, {rss_1000:.0f} MiB with 1,000 open "
          "connections (goal <= 150 MB)")
    print(f"500 concurrent misses on one object: {origin_gets} origin GET(s) (goal 1), "
          f"{total * 1000:.1f} ms for all vs {one * 1000:.1f} ms for one origin round trip")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
