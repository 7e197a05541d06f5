"""Edge hit-path benchmark: mediacdn edge vs nginx serving the same bytes, same run.

Server pinned to core 0, wrk on core 1, 64 keep-alive connections, 1,000 objects of ~60 KB
picked at random, all hits. Rows: nginx (sendfile; the anchor), Varnish (malloc storage, in
front of the same nginx), a bare asyncio Protocol on uvloop answering from a dict (the
bare-Python limit), a bare aiohttp handler from a dict, the edge with its front door off
and on (edge.front_door); then 2 workers each on both cores.

Every server of a group is started once, then measured in turn, once per round (--rounds):
this box's speed drifts by tens of percent over minutes (the bare aiohttp row has moved from
50 to 91 us per hit between runs), so each ratio is taken against the nginx measured in the
same round, and a row reports the median over the rounds with the lowest and highest. Each
measurement: hits/s, server CPU per hit (utime + stime of its processes), p50/p99. Also:
edge RSS with 1,000 open connections, and 500 concurrent misses on one object.
`--profile DIR` records the edge with py-spy during a hit run of its own (front door off,
then on).

    .venv/bin/python -m scripts.bench.edge [--seconds 8] [--rounds 3] [--profile DIR]
                                           [--no-two-workers]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import shutil
import signal
import statistics
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
NGINX1, NGINX2 = "nginx (1 worker, sendfile)", "nginx (2 workers)"
VARNISH = "varnish 7 (malloc, before nginx)"


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


async def door_counts(base: str) -> tuple[int, int, int]:
    """The edge's front-door hits, all hits and hand-overs to aiohttp (every worker)."""
    await asyncio.sleep(1.2)  # workers publish their counters once a second
    async with aiohttp.ClientSession() as s, s.get(
            base + "/_admin/stats", headers={"Authorization": f"Bearer {ADMIN}"}) as r:
        t = await r.json()
    return t["front_door_hits"], t["hits"], t["front_door_handoffs"]


def door_share(before: tuple[int, int, int], after: tuple[int, int, int]) -> str:
    """What the front door answered while wrk ran (warm-up and stats calls left out)."""
    door, hits, handoffs = (a - b for a, b in zip(after, before, strict=True))
    # With the front door on, the stats call that took `after` was handed to aiohttp: one
    # hand-over that is not wrk's.
    return (f"front door: {door:,} of {hits:,} hits while measured; "
            f"{max(handoffs - 1, 0):,} connections handed to aiohttp")


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
    return write_bench_config(tmp / f"bench-{port}.toml", tmp,
                              edges=[("bench", "bench", port)],
                              edge_settings="memory_bytes = 268435456\n"
                                            f"front_door = {str(front_door).lower()}",
                              node_settings=f"workers = {workers}",
                              cache_root=tmp / f"cache-{port}")


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


@dataclass
class Server:
    """A server under test, started once and measured once per round."""
    name: str
    proc: subprocess.Popen[bytes]
    base: str
    group: int  # workers: the rows of a group are measured in turn, against its nginx
    door: bool = False  # an edge: its front door's counters go in the row's note
    stop_signal: int = signal.SIGTERM


def start_edges(tmp: Path, workers: int, cpus: str, paths: list[str]) -> list[Server]:
    """The edge with its front door off, then on, each warmed by one pass over `paths`, as
    a user would warm it: with 2 workers each object lands in the memory of one of them,
    and the other's front door reads it from the shared disk tier the first time."""
    out = []
    for front_door in (False, True):
        port = free_port()
        proc = start_edge(edge_config(tmp, port, workers, front_door), cpus)
        name = (f"mediacdn edge, {'2 workers, ' if workers == 2 else ''}front door "
                f"{'on' if front_door else 'off'}")
        out.append(Server(name, proc, f"http://127.0.0.1:{port}", workers, door=True))
        asyncio.run(warm(out[-1].base, paths))
    return out


def stop(server: Server) -> None:
    server.proc.send_signal(server.stop_signal)
    try:
        server.proc.wait(20)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait(5)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def measure_rounds(servers: list[Server], rounds: int, wrk: tuple[Path, int, int],
                   cpus: str, threads: int) -> dict[str, list[Row]]:
    """Every server once per round, in turn, so each row has an nginx row next to it in
    time: this box's speed drifts by tens of percent over minutes, and a ratio of two rows
    measured apart carries that drift."""
    rows: dict[str, list[Row]] = {s.name: [] for s in servers}
    before = {s.name: asyncio.run(door_counts(s.base)) for s in servers if s.door}
    for r in range(rounds):
        for s in servers:
            row = measure(s.proc.pid, s.base, *wrk, cpus, threads)
            rows[s.name].append(row)
            assert row.wrk is not None
            print(f"  round {r + 1}: {s.name:<44} {row.wrk.rps:>9,.0f} req/s  "
                  f"CPU {row.cpu_us:6.1f} us/hit  p99 {row.wrk.p99_ms:7.2f} ms", file=sys.stderr)
    for s in servers:
        if s.door:
            rows[s.name][0].note = door_share(before[s.name], asyncio.run(door_counts(s.base)))
    return rows


def report(rows: dict[str, list[Row]], anchor: str, notes: dict[str, str]) -> None:
    """Each row: the median over rounds, and its ratios to the anchor of the same round
    (median, then the range over rounds)."""
    base = rows[anchor]
    for name, runs in rows.items():
        if not runs or runs[0].wrk is None:
            print(f"{name:<44} not measured: {notes.get(name, '')}")
            continue
        pairs = [(r.wrk, r.cpu_us, a.wrk, a.cpu_us) for r, a in zip(runs, base, strict=True)
                 if r.wrk is not None and a.wrk is not None]
        rps = [w.rps for w, _, _, _ in pairs]
        cpu = [c for _, c, _, _ in pairs]
        p99 = [w.p99_ms for w, _, _, _ in pairs]
        errors = sum(w.errors for w, _, _, _ in pairs)
        ratios = {"rate": [w.rps / aw.rps for w, _, aw, _ in pairs],
                  "CPU": [c / ac for _, c, _, ac in pairs],
                  "p99": [w.p99_ms / aw.p99_ms for w, _, aw, _ in pairs]}
        print(f"{name:<44} {median(rps):>9,.0f} req/s  CPU {median(cpu):6.1f} us/hit  "
              f"p99 {median(p99):7.2f} ms  errors {errors}  | x nginx: "
              + "  ".join(f"{k} {median(v):.2f} ({min(v):.2f}-{max(v):.2f})"
                          for k, v in ratios.items()))
        note = notes.get(name) or runs[0].note
        if note:
            print(f"{'':<44}   {note}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3,
                    help="measure every server this many times, in turn (default 3)")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--profile", type=Path, default=None, metavar="DIR",
                    help="also record the edge (front door off, then on) with py-spy during "
                         "a hit run of its own; collapsed stacks and a summary go to DIR")
    ap.add_argument("--no-two-workers", action="store_true", help="skip the 2-worker rows")
    args = ap.parse_args()
    ensure_debian_packages("wrk", "nginx", "taskset")
    notes: dict[str, str] = {}
    profiles: list[str] = []
    with tempfile.TemporaryDirectory(prefix="mediacdn-bench-") as d:
        tmp = Path(d)
        tmp.chmod(0o755)  # nginx workers run as an unprivileged user
        static = tmp / "static"
        paths = asyncio.run(seed(tmp / "origin", static))
        script = wrk_paths_script(paths, tmp / "paths.lua")
        wrk = (script, args.seconds, args.connections)

        # One worker each, on core 0; wrk on core 1. All started, then measured in turn.
        servers: list[Server] = []
        try:
            port = free_port()
            nginx = Server(NGINX1, start_nginx(tmp, static, port, 1, "0"),
                           f"http://127.0.0.1:{port}", 1, stop_signal=signal.SIGQUIT)
            servers.append(nginx)
            wait_http(nginx.base + paths[0])
            varnish, vbase, why = start_varnish(tmp, port, "0", paths[0])
            if varnish is None:
                notes[VARNISH] = why
            else:
                servers.append(Server(VARNISH, varnish, vbase, 1))
                asyncio.run(warm(vbase, paths))
            for kind, name in (("protocol", "bare asyncio Protocol, uvloop, dict"),
                               ("aiohttp", "bare aiohttp handler, uvloop, dict")):
                bare, bbase = start_bare(kind, static, "0")
                servers.append(Server(name, bare, bbase, 1))
            servers += start_edges(tmp, 1, "0", paths)
            rows = measure_rounds(servers, args.rounds, wrk, "1", 1)
            if VARNISH not in rows:
                rows = {NGINX1: rows[NGINX1], VARNISH: [], **rows}
            edge_on = servers[-1]
            if args.profile is not None:
                args.profile.mkdir(parents=True, exist_ok=True)
                for s in servers[-2:]:
                    dest = args.profile / (s.name.replace(", ", "-").replace(" ", "-") + ".txt")
                    cpu_us = median([r.cpu_us for r in rows[s.name]])
                    profile(s.proc.pid, args.seconds, dest, functools.partial(
                        run_wrk, s.base, *wrk, "1"))
                    profiles.append(f"{s.name} (py-spy, {dest}), self time per frame:")
                    profiles += top_frames(dest, cpu_us)
            rss_idle = tree_rss_mib(edge_on.proc.pid)
            rss_1000 = asyncio.run(rss_with_connections(edge_on.base, edge_on.proc.pid, 1000))
            one, total, origin_gets = asyncio.run(concurrent_misses(edge_on.base, 500))
        finally:
            for s in servers:
                stop(s)

        rows2: dict[str, list[Row]] = {}
        if not args.no_two_workers:
            # Two workers each, both cores shared with wrk (-t2): the whole machine.
            servers = []
            try:
                port = free_port()
                servers.append(Server(NGINX2, start_nginx(tmp, static, port, 2, "0,1"),
                                      f"http://127.0.0.1:{port}", 2, stop_signal=signal.SIGQUIT))
                wait_http(servers[0].base + paths[0])
                servers += start_edges(tmp, 2, "0,1", paths)
                rows2 = measure_rounds(servers, args.rounds, wrk, "0,1", 2)
            finally:
                for s in servers:
                    stop(s)

    print(f"\nEdge hit path: {OBJECTS} objects of ~{SIZE // 1024} KB, all hits, "
          f"{args.connections} connections, server on core 0, wrk on core 1, "
          f"{args.seconds} s per measurement, {args.rounds} rounds (every server measured "
          "once per round, in turn); CPU = utime+stime of the server's processes per answer; "
          "figures are medians over the rounds, ratios against nginx (as many workers) in "
          "the same round: median (lowest-highest)")
    report(rows, NGINX1, notes)
    if rows2:
        report(rows2, NGINX2, notes)
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
