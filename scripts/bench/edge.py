"""Edge hit-path benchmark: mediacdn edge vs nginx serving the same bytes, same run.

Server pinned to core 0, wrk on core 1, 64 keep-alive connections, 1,000 objects of ~60 KB
picked at random, all hits. Rows: nginx (sendfile; the anchor), Varnish (malloc storage, in
front of the same nginx), a bare asyncio Protocol on uvloop answering from a dict (the
bare-Python limit), a bare aiohttp handler from a dict, the edge with its front door off
and on (edge.front_door); then 2 workers each on both cores. Each row: hits/s, server CPU
per hit (utime + stime of its processes over the run), p50/p99, ratios to nginx. Also: edge
RSS with 1,000 open connections, and 500 concurrent misses on one object. `--profile DIR`
records the edge with py-spy during a hit run of its own (front door off, then on).

    .venv/bin/python -m scripts.bench.edge [--seconds 10] [--profile DIR] [--no-two-workers]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
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
    py_spy,
    run_wrk,
    tree_rss_mib,
    wait_http,
    write_bench_config,
    wrk_paths_script,
)
from scripts.bench.common import (
    start_nginx as common_nginx,
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
    return common_nginx(tmp, static, port, cpus, workers, " reuseport")


async def warm(base: str, paths: list[str]) -> None:
    async with aiohttp.ClientSession() as s:
        sem = asyncio.Semaphore(32)

        async def one(p: str) -> None:
            async with sem, s.get(base + p) as r:
                await r.read()
                assert r.status == 200, (p, r.status)

        await asyncio.gather(*(one(p) for p in paths))


async def door_share(base: str) -> str:
    """What the edge's front door answered (its counters, every worker), for the row."""
    await asyncio.sleep(1.2)  # workers publish their counters once a second
    async with aiohttp.ClientSession() as s, s.get(
            base + "/_admin/stats", headers={"Authorization": f"Bearer {ADMIN}"}) as r:
        t = await r.json()
    return (f"front door: {t['front_door_hits']:,} of {t['hits']:,} hits; "
            f"{t['front_door_handoffs']:,} connections handed to aiohttp")


async def warm_workers(base: str, paths: list[str], workers: int) -> None:
    """Until every worker holds every object in its memory tier: a connection lands on
    either worker, and one that asks for an object its worker does not hold hot is handed
    to aiohttp by the front door for good (a disk hit, then hot from then on)."""
    auth = {"Authorization": f"Bearer {ADMIN}"}
    for _ in range(40):
        await warm(base, paths)
        await asyncio.sleep(1.2)  # workers publish their counters once a second
        async with aiohttp.ClientSession() as s, s.get(base + "/_admin/stats",
                                                       headers=auth) as r:
            if (await r.json())["memory_entries"] >= workers * len(paths):
                return
    print(f"warning: not every object is hot in every worker at {base}", file=sys.stderr)


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


async def rss_with_connections(base: str, pid: int, n: int) -> float:
    conns = await open_connections(base, n)
    rss = tree_rss_mib(pid)
    for _, w in conns:
        w.close()
    return rss


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


@dataclass
class Row:
    wrk: WrkResult | None
    cpu_us: float  # server CPU (utime + stime of its processes) per answer, microseconds
    note: str = ""  # why there is no measurement, or what the front door did


def tree_pids(pid: int) -> list[int]:
    out = [pid]
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                for child in (task / "children").read_text().split():
                    out += tree_pids(int(child))
    return out


def cpu_seconds(pids: list[int]) -> float:
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def measure(root: int, base: str, script: Path, seconds: int, connections: int, cpus: str,
            threads: int = 1) -> Row:
    pids = tree_pids(root)
    before = cpu_seconds(pids)
    result = run_wrk(base, script, seconds, connections, cpus, threads)
    used = cpu_seconds(pids) - before
    answers = result.rps * seconds
    return Row(result, used / answers * 1e6 if answers else float("nan"))


def start_bare(kind: str, static: Path, cpus: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(["taskset", "-c", cpus, sys.executable, "-m", "scripts.bench.bare",
                             kind, str(port), str(static)],
                            env=dict(os.environ, PYTHONPATH=str(ROOT)),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    proc.stdout.readline()
    return proc, f"http://127.0.0.1:{port}"


def start_varnish(tmp: Path, backend_port: int, cpus: str, probe: str
                  ) -> tuple[subprocess.Popen[bytes] | None, str, str]:
    """Varnish (malloc storage) in front of nginx; (process, URL, why not) ."""
    if shutil.which("varnishd") is None:
        return None, "", "varnishd not installed (apt-get install varnish)"
    port = free_port()
    vcl = tmp / "bench.vcl"
    vcl.write_text(f"""vcl 4.1;
backend default {{ .host = "127.0.0.1"; .port = "{backend_port}"; }}
sub vcl_backend_response {{ set beresp.ttl = 1h; }}
""")
    work = tmp / "varnish"
    work.mkdir(exist_ok=True)
    proc = subprocess.Popen(["taskset", "-c", cpus, "varnishd", "-F", "-j", "none",
                             "-a", f"127.0.0.1:{port}", "-f", str(vcl), "-n", str(work),
                             "-s", "malloc,512m", "-p", "thread_pools=1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_http(f"http://127.0.0.1:{port}{probe}", 20)
    except RuntimeError:
        proc.kill()
        _, err = proc.communicate(timeout=5)
        return None, "", "varnishd did not start: " + err.decode(errors="replace")[-200:]
    return proc, f"http://127.0.0.1:{port}", ""


def edge_config(tmp: Path, port: int, workers: int, front_door: bool) -> Path:
    return write_bench_config(tmp / f"bench-{workers}-{front_door}.toml", tmp,
                              edges=[("bench", "bench", port)],
                              edge_settings="memory_bytes = 268435456\n"
                                            f"front_door = {str(front_door).lower()}",
                              node_settings=f"workers = {workers}",
                              cache_root=tmp / f"cache-{workers}-{front_door}")


def profile(pid: int, seconds: int, dest: Path, run: Callable[[], object]) -> Path:
    """py-spy samples `pid` while `run()` drives it; collapsed stacks to `dest`."""
    spy = subprocess.Popen([py_spy(), "record", "-p", str(pid), "-d", str(seconds + 1),
                            "-r", "200", "-f", "raw", "-o", str(dest)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    run()
    spy.wait(seconds + 30)
    return dest


def top_frames(raw: Path, cpu_us: float, n: int = 15) -> list[str]:
    """Self time per function of the event loop's thread, from py-spy's collapsed stacks,
    as shares of its samples and of a hit's CPU (the thread pool's waits are not work)."""
    own: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit() or "(asyncio/runners.py" not in stack:
            continue
        own[stack.rsplit(";", 1)[-1]] += int(count)
        total += int(count)
    return [f"  {c / total * 100:5.1f}%  {c / total * cpu_us:6.1f} us  {frame}"
            for frame, c in own.most_common(n)] if total else ["  (no samples)"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--profile", type=Path, default=None, metavar="DIR",
                    help="also record the edge (front door off, then on) with py-spy during "
                         "a hit run of its own; collapsed stacks and a summary go to DIR")
    ap.add_argument("--no-two-workers", action="store_true", help="skip the 2-worker rows")
    args = ap.parse_args()
    ensure_debian_packages("wrk", "nginx", "taskset")
    rows: dict[str, Row] = {}
    profiles: list[str] = []
    with tempfile.TemporaryDirectory(prefix="mediacdn-bench-") as d:
        tmp = Path(d)
        tmp.chmod(0o755)  # nginx workers run as an unprivileged user
        static = tmp / "static"
        paths = asyncio.run(seed(tmp / "origin", static))
        script = wrk_paths_script(paths, tmp / "paths.lua")
        wrk = (script, args.seconds, args.connections)

        nginx_port = free_port()
        nginx = start_nginx(tmp, static, nginx_port, 1, "0")
        try:
            nginx_base = f"http://127.0.0.1:{nginx_port}"
            wait_http(nginx_base + paths[0])
            rows["nginx (1 worker, sendfile)"] = measure(nginx.pid, nginx_base, *wrk, "1")
            varnish, vbase, why = start_varnish(tmp, nginx_port, "0", paths[0])
            if varnish is None:
                rows["varnish 7 (malloc, before nginx)"] = Row(None, float("nan"), why)
            else:
                try:
                    asyncio.run(warm(vbase, paths))
                    rows["varnish 7 (malloc, before nginx)"] = measure(varnish.pid, vbase,
                                                                       *wrk, "1")
                finally:
                    varnish.terminate()
                    varnish.wait(20)
        finally:
            nginx.send_signal(signal.SIGQUIT)
            nginx.wait(10)
        for kind, name in (("protocol", "bare asyncio Protocol, uvloop, dict"),
                           ("aiohttp", "bare aiohttp handler, uvloop, dict")):
            bare, bbase = start_bare(kind, static, "0")
            try:
                rows[name] = measure(bare.pid, bbase, *wrk, "1")
            finally:
                bare.terminate()
                bare.wait(10)

        rss_idle = rss_1000 = 0.0
        one = total = 0.0
        origin_gets = 0
        for front_door in (False, True):
            port = free_port()
            edge = start_edge(edge_config(tmp, port, 1, front_door), "0")
            base = f"http://127.0.0.1:{port}"
            name = f"mediacdn edge, front door {'on' if front_door else 'off'}"
            try:
                asyncio.run(warm(base, paths))
                rows[name] = measure(edge.pid, base, *wrk, "1")
                rows[name].note = asyncio.run(door_share(base))
                if args.profile is not None:
                    args.profile.mkdir(parents=True, exist_ok=True)
                    dest = args.profile / f"edge-front-door-{'on' if front_door else 'off'}.txt"
                    profile(edge.pid, args.seconds, dest, functools.partial(
                        run_wrk, base, *wrk, "1"))
                    profiles.append(f"{name} (py-spy, {dest}), self time per frame:")
                    profiles += top_frames(dest, rows[name].cpu_us)
                if front_door:
                    rss_idle = tree_rss_mib(edge.pid)
                    rss_1000 = asyncio.run(rss_with_connections(base, edge.pid, 1000))
                    one, total, origin_gets = asyncio.run(concurrent_misses(base, 500))
            finally:
                edge.send_signal(signal.SIGTERM)
                edge.wait(20)

        if not args.no_two_workers:
            # Two workers each, both cores shared with wrk (-t2): the whole machine.
            port = free_port()
            nginx = start_nginx(tmp, static, port, 2, "0,1")
            try:
                wait_http(f"http://127.0.0.1:{port}{paths[0]}")
                rows["nginx (2 workers)"] = measure(nginx.pid, f"http://127.0.0.1:{port}",
                                                    *wrk, "0,1", 2)
            finally:
                nginx.send_signal(signal.SIGQUIT)
                nginx.wait(10)
            for front_door in (False, True):
                port2 = free_port()
                edge2 = start_edge(edge_config(tmp, port2, 2, front_door), "0,1")
                base2 = f"http://127.0.0.1:{port2}"
                try:
                    asyncio.run(warm_workers(base2, paths, 2))
                    row = measure(edge2.pid, base2, *wrk, "0,1", 2)
                    row.note = asyncio.run(door_share(base2))
                    rows[f"mediacdn edge, 2 workers, front door "
                         f"{'on' if front_door else 'off'}"] = row
                finally:
                    edge2.send_signal(signal.SIGTERM)
                    edge2.wait(20)

    print(f"\nEdge hit path: {OBJECTS} objects of ~{SIZE // 1024} KB, all hits, "
          f"{args.connections} connections, server on core 0, wrk on core 1, "
          f"{args.seconds} s each; CPU = utime+stime of the server's processes per answer; "
          "ratios against nginx with as many workers")
    nginx1 = rows["nginx (1 worker, sendfile)"]
    nginx2 = rows.get("nginx (2 workers)")
    for name, row in rows.items():
        if row.wrk is None:
            print(f"{name:<44} not measured: {row.note}")
            continue
        anchor = nginx2 if "2 workers" in name and nginx2 is not None else nginx1
        assert anchor.wrk is not None
        print(f"{name:<44} {row.wrk.rps:>9,.0f} req/s  CPU {row.cpu_us:6.1f} us/hit  "
              f"p50 {row.wrk.p50_ms:6.2f} ms  p99 {row.wrk.p99_ms:7.2f} ms  "
              f"errors {row.wrk.errors}  | x nginx: rate {row.wrk.rps / anchor.wrk.rps:.2f}  "
              f"CPU {row.cpu_us / anchor.cpu_us:.2f}  p99 {row.wrk.p99_ms / anchor.wrk.p99_ms:.2f}")
        if row.note:
            print(f"{'':<44}   {row.note}")
    print("goal (issue 13): edge front door on >= 0.8x nginx rate, CPU <= 1.3x, p99 <= 2x; "
          "2 workers >= 0.8x")
    print(f"edge RSS (front door on): {rss_idle:.0f} MiB after the run, {rss_1000:.0f} MiB "
          "with 1,000 open connections (goal <= 150 MB)")
    print(f"500 concurrent misses on one object: {origin_gets} origin GET(s) (goal 1), "
          f"{total * 1000:.1f} ms for all vs {one * 1000:.1f} ms for one origin round trip")
    for line in profiles:
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
