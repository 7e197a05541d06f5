"""Invalidation fan-out at 10 / 100 / 1,000 followers: what it costs the origin and ingest.

A real `mediacdn ingest` on a real S3 server (Ceph RGW when root with apt, else moto), with a
counting proxy (scripts/bench/s3proxy.py, its own process) between them. Lightweight
followers, spread over a few processes, speak the real protocol edges speak
(edge/follower.py): learn the newest record with `after=-1`, then hold the WebSocket
`/_internal/purges/stream?after=N&node=&region=`, taking each record pushed and sending
back the applied cursor (the acknowledgement). For each N:

- origin requests/s while idle, and while 10 purges/s are posted (`POST /v1/purges`);
- purge-applied latency to ALL followers, p50/p99: from the POST until the last follower
  holds the record (and the POST's own answer time, which waits for every ack);
- ingest CPU (utime+stime from /proc, % of one core) and RSS in each window.

Anchor: the previous design had every edge LIST the log at the origin every
purge_poll_seconds (2 s) and GET each new record: N/2 LIST/s idle, + N GET per purge.

    .venv/bin/python -m scripts.bench.fanout [--followers 10,100,1000] [--s3 auto|ceph|moto]

Runs alone (it loads both cores). Every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp
import uvloop

from scripts.bench.common import free_port, py_spy, rss_mib, wait_http
from scripts.bench.s3proxy import fetch_counts

ROOT = Path(__file__).resolve().parents[2]
ADMIN = "bench-admin-token-0123456789"
REGIONS = ("r0", "r1", "r2")
FOLLOW_WAIT = 20.0  # edge.purge_follow_seconds' default
OLD_POLL_SECONDS = 2.0  # the previous design's edge.purge_poll_seconds


# -- a follower process --------------------------------------------------------------------
@dataclass
class Applied:
    at: dict[int, float] = field(default_factory=dict)  # seq -> latest apply time seen
    count: dict[int, int] = field(default_factory=dict)  # seq -> followers that applied it
    errors: int = 0
    polls: int = 0


class Http1:
    """A minimal keep-alive HTTP/1.1 client for the follower's one kind of request. It costs
    a fraction of aiohttp's client per request, so 1,000 followers on this box measure
    ingest rather than the followers (edges run on their own hosts)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def get(self, target: str, seconds: float) -> tuple[int, bytes]:
        try:
            async with asyncio.timeout(seconds):
                if self.reader is None or self.writer is None:
                    self.reader, self.writer = await asyncio.open_connection(self.host,
                                                                             self.port)
                self.writer.write(f"GET {target} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                                  f"Authorization: Bearer {ADMIN}\r\n\r\n".encode())
                lines = (await self.reader.readuntil(b"\r\n\r\n")).split(b"\r\n")
                status, length, close = int(lines[0].split()[1]), 0, False
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"connection":
                        close = value.strip().lower() == b"close"
                    elif name == b"transfer-encoding":
                        raise OSError("a chunked answer: not what ingest sends here")
                body = await self.reader.readexactly(length)
        except BaseException:
            self.close()
            raise
        if close:
            self.close()
        return status, body


async def follow_one(hub: str, name: str, region: str, applied: Applied,
                     started: asyncio.Event, ready: list[int],
                     session: aiohttp.ClientSession) -> None:
    url = urlsplit(hub)
    conn = Http1(url.hostname or "127.0.0.1", url.port or 80)
    base = {"node": name, "region": region}
    cursor = -1
    while cursor < 0:  # as Follower._last_known
        try:
            _, body = await conn.get("/_internal/purges?" + urlencode({**base, "after": "-1"}),
                                     10)
            cursor = int(json.loads(body)["last"])
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError, KeyError):
            applied.errors += 1
            await asyncio.sleep(0.5)
    conn.close()
    first = True
    while True:  # as Follower._stream: records pushed, the applied cursor sent back
        try:
            async with session.ws_connect(
                    f"{hub}/_internal/purges/stream",
                    params={**base, "after": str(cursor)}, heartbeat=FOLLOW_WAIT,
                    headers={"Authorization": f"Bearer {ADMIN}"}, max_msg_size=0) as ws:
                async for msg in ws:
                    if msg.type is not aiohttp.WSMsgType.BINARY:
                        break
                    if first:
                        first = False
                        ready[0] += 1
                        if ready[0] == ready[1]:
                            started.set()
                    answer: dict[str, Any] = json.loads(msg.data)
                    applied.polls += 1
                    now = time.monotonic()  # CLOCK_MONOTONIC: one clock for the host
                    for rec in answer.get("records", []):
                        seq = int(rec["seq"])
                        if seq != cursor + 1:
                            applied.errors += 1  # a gap: the real follower reads the origin
                            break
                        applied.at[seq] = now  # applied (for this bench: held) now
                        applied.count[seq] = applied.count.get(seq, 0) + 1
                        cursor = seq
                    await ws.send_str(str(cursor))
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
            pass
        applied.errors += 1  # the stream ended: ingest never closes it while running
        await asyncio.sleep(0.5)


async def follower_proc(hub: str, first: int, count: int) -> None:
    applied = Applied()
    started = asyncio.Event()
    ready = [0, count]
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    tasks = [asyncio.create_task(follow_one(hub, f"f{i}", REGIONS[i % 3], applied, started,
                                            ready, session))
             for i in range(first, first + count)]
    async with asyncio.timeout(120):
        await started.wait()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)  # the parent says stop
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await session.close()
    out = {"at": applied.at, "count": applied.count, "errors": applied.errors,
           "polls": applied.polls}
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()


# -- the driver ----------------------------------------------------------------------------
@dataclass
class S3:
    endpoint: str
    access_key: str
    secret_key: str
    kind: str


def start_s3(want: str, tmp: Path, stack: ExitStack) -> S3:
    if want in ("auto", "ceph") and os.geteuid() == 0:
        d = tmp / "ceph"
        env = dict(os.environ, DIR=str(d), RGW_PORT=str(free_port()),
                   MON_V2_PORT=str(free_port()), MON_V1_PORT=str(free_port()))
        script = ROOT / "scripts" / "s3" / "ceph-rgw.sh"
        res = subprocess.run([str(script), "start"], env=env, capture_output=True, text=True,
                             timeout=300)
        if res.returncode == 0:
            stack.callback(subprocess.run, [str(script), "stop"], env=env,
                           capture_output=True, timeout=60)
            vals = dict(line.split("=", 1) for line in (d / "s3.env").read_text().splitlines()
                        if "=" in line)
            return S3(vals["S3_ENDPOINT_URL"], vals["AWS_ACCESS_KEY_ID"],
                      vals["AWS_SECRET_ACCESS_KEY"], "ceph")
        if want == "ceph":
            sys.exit(f"Ceph RGW did not start:\n{res.stderr[-2000:]}")
        print("Ceph RGW did not start; using moto", file=sys.stderr)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stack.callback(_stop, proc)
    wait_http(f"http://127.0.0.1:{port}/moto-api/")
    return S3(f"http://127.0.0.1:{port}", "testing", "testing", "moto")


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def start_proxy(s3: S3, stack: ExitStack) -> str:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "scripts.bench.s3proxy", s3.endpoint,
                             str(port)], stdout=subprocess.PIPE, env=_env(s3))
    stack.callback(_stop, proc)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/__counts")
    return url


def _env(s3: S3) -> dict[str, str]:
    return dict(os.environ, MEDIACDN_ADMIN_TOKEN=ADMIN, MEDIACDN_API_KEY="bench-api-0123456789",
                AWS_ACCESS_KEY_ID=s3.access_key, AWS_SECRET_ACCESS_KEY=s3.secret_key,
                PYTHONPATH=str(ROOT))


def write_config(tmp: Path, proxy: str, bucket: str, n: int) -> tuple[Path, int]:
    port = free_port()
    regions = "".join(f'[[regions]]\nname = "{r}"\nlat = 0\nlon = {i * 10}\n'
                      for i, r in enumerate(REGIONS))
    # The followers are the configured edges (ingest waits for those it expects just
    # after a start); their ports are never listened on.
    edges = "".join(f'[[edges]]\nname = "f{i}"\nregion = "{REGIONS[i % 3]}"\n'
                    f'port = {20000 + i}\n' for i in range(max(n, 3)))
    path = tmp / f"{bucket}.toml"
    path.write_text(f"""
log_level = "warning"
[origin]
kind = "s3"
bucket = "{bucket}"
endpoint_url = "{proxy}"
[ingest]
port = {port}
purge_ack_seconds = 5
log_poll_seconds = 1
[transcode]
workers = 1
[edge]
cache_root = "{tmp / 'cache'}"
[router]
port = {free_port()}
default_region = "r0"
{regions}{edges}""")
    return path, port


PINNED = False  # --pin: ingest alone on CPU 0, the followers on CPU 1


def pin(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if PINNED else []


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def total(counts: dict[str, int]) -> int:
    return sum(v for k, v in counts.items() if not k.startswith("ms "))


@dataclass
class Window:
    seconds: float
    requests: dict[str, int]
    cpu: float  # ingest CPU seconds
    rss: float  # ingest RSS at the end, MiB

    @property
    def rps(self) -> float:
        return total(self.requests) / self.seconds

    def breakdown(self) -> str:
        r = self.requests
        return " ".join(f"{k} {v / self.seconds:.1f}/s ~{r.get('ms ' + k, 0) / v:.0f} ms"
                        for k, v in sorted(r.items()) if not k.startswith("ms "))


class Measure:
    def __init__(self, proxy: str, pid: int) -> None:
        self.proxy, self.pid = proxy, pid

    def __enter__(self) -> Measure:
        self.c0, self.cpu0, self.t0 = fetch_counts(self.proxy), cpu_seconds(self.pid), \
            time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        t1, c1 = time.monotonic(), fetch_counts(self.proxy)
        self.window = Window(t1 - self.t0, {k: v - self.c0.get(k, 0) for k, v in c1.items()
                                            if v - self.c0.get(k, 0)},
                             cpu_seconds(self.pid) - self.cpu0, rss_mib(self.pid))


async def drive(ingest: str, rate: float, seconds: float) -> list[tuple[int, float, float]]:
    """POST purges at `rate`/s for `seconds`: [(seq, sent at, answer took)]. Purges that
    arrive while a record is being written share the next one (so a seq may repeat)."""
    sent: list[tuple[int, float, float]] = []
    headers = {"Authorization": f"Bearer {ADMIN}"}
    rng = random.Random(12)

    async def one(session: aiohttp.ClientSession) -> None:
        body = {"ids": [rng.randbytes(32).hex()]}
        t0 = time.monotonic()
        async with session.post(f"{ingest}/v1/purges", json=body, headers=headers,
                                timeout=aiohttp.ClientTimeout(total=30)) as r:
            answer = await r.json()
            if r.status not in (200, 202):  # 202: some follower had not acked in time
                raise RuntimeError(f"purge answered {r.status}: {str(answer)[:300]}")
        sent.append((int(answer["seq"]), t0, time.monotonic() - t0))

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        tasks = []
        start = time.monotonic()
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            tasks.append(asyncio.create_task(one(session)))
        await asyncio.gather(*tasks)
    return sent


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


@dataclass
class Result:
    n: int
    idle: Window
    busy: Window
    applied_ms: list[float]
    answer_ms: list[float]
    missing: int
    errors: int
    records: int  # purges share a record when they arrive during a write
    follower_cpu: float  # cores used by the follower processes while purging
    polls: int  # stream messages followers got from ingest, over the whole run


def run_n(n: int, procs: int, s3: S3, proxy: str, tmp: Path, idle_s: float,
          purge_s: float, rate: float, profile: str | None = None) -> Result:
    cfg, port = write_config(tmp, proxy, f"fanout-{n}", n)
    ingest = f"http://127.0.0.1:{port}"
    env = _env(s3)
    with ExitStack() as stack:
        ing = subprocess.Popen([*pin(0), sys.executable, "-m", "scripts", "ingest",
                                "--config", str(cfg)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stack.callback(_stop, ing)
        wait_http(ingest + "/healthz")
        end = time.monotonic() + 30
        while asyncio.run(_last(ingest)) is None:  # the log loaded
            if time.monotonic() > end:
                raise RuntimeError("ingest did not load the purge log in 30 s")
            time.sleep(0.2)
        per = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
        followers = []
        first = 0
        for count in per:
            if not count:
                continue
            p = subprocess.Popen([*pin(1), sys.executable, "-m", "scripts.bench.fanout",
                                  "--follower",
                                  ingest, str(first), str(count)], env=env,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            stack.callback(_stop, p)
            followers.append(p)
            first += count
        for p in followers:
            assert p.stdout is not None
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError("a follower process did not start")
        time.sleep(2)  # every stream is settled
        spy = None
        if profile:  # py-spy (pip install py-spy) samples ingest while it is purging
            spy = subprocess.Popen([py_spy(), "record", "-p", str(ing.pid), "-o",
                                    f"{profile}-{n}.txt", "-f", "raw", "-d",
                                    str(int(purge_s) + 2)], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        fcpu0 = sum(cpu_seconds(p.pid) for p in followers)
        with Measure(proxy, ing.pid) as busy:
            sent = asyncio.run(drive(ingest, rate, purge_s))
        follower_cpu = sum(cpu_seconds(p.pid) for p in followers) - fcpu0
        if spy is not None:
            spy.wait(60)
        time.sleep(2)
        with Measure(proxy, ing.pid) as idle:  # after the purges: the log is not empty
            time.sleep(idle_s)
        got: list[dict[str, Any]] = []
        for p in followers:
            assert p.stdin is not None and p.stdout is not None
            p.stdin.write("stop\n")
            p.stdin.flush()
            got.append(json.loads(p.stdout.readline()))
    last_at: dict[int, float] = {}
    counts: dict[int, int] = {}
    for g in got:
        for seq, at in g["at"].items():
            last_at[int(seq)] = max(last_at.get(int(seq), 0.0), at)
        for seq, c in g["count"].items():
            counts[int(seq)] = counts.get(int(seq), 0) + c
    applied = [(last_at[s] - t0) * 1000 for s, t0, _ in sent if counts.get(s) == n]
    missing = sum(1 for s, _, _ in sent if counts.get(s, 0) != n)
    return Result(n, idle.window, busy.window, applied,
                  [took * 1000 for _, _, took in sent], missing,
                  sum(int(g["errors"]) for g in got), len({s for s, _, _ in sent}),
                  follower_cpu / busy.window.seconds, sum(int(g["polls"]) for g in got))


async def _last(ingest: str) -> int | None:
    try:
        async with aiohttp.ClientSession() as s, s.get(
                f"{ingest}/_internal/purges", params={"after": "-1"},
                headers={"Authorization": f"Bearer {ADMIN}"},
                timeout=aiohttp.ClientTimeout(total=5)) as r:
            return int((await r.json())["last"]) if r.status == 200 else None
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None


def report(r: Result, rate: float) -> None:
    old_idle = r.n / OLD_POLL_SECONDS
    print(f"\n== {r.n} followers")
    print(f"  origin idle     {r.idle.rps:7.1f} req/s  ({r.idle.breakdown()})   "
          f"old design: {old_idle:,.0f} LIST/s")
    print(f"  origin {rate:g} purge/s {r.busy.rps:6.1f} req/s  ({r.busy.breakdown()})   "
          f"old design: {old_idle + r.n * rate:,.0f} req/s (LIST + 1 GET per edge per purge)")
    print(f"  applied to all  p50 {pct(r.applied_ms, 50):6.1f} ms  p99 "
          f"{pct(r.applied_ms, 99):6.1f} ms  max {max(r.applied_ms, default=0):6.1f} ms  "
          f"({len(r.applied_ms)} purges in {r.records} records; {r.missing} not applied "
          "by all)")
    print(f"  POST answer     p50 {pct(r.answer_ms, 50):6.1f} ms  p99 "
          f"{pct(r.answer_ms, 99):6.1f} ms  (waits for every follower's ack)")
    print(f"  ingest CPU      idle {100 * r.idle.cpu / r.idle.seconds:5.1f} %  "
          f"purging {100 * r.busy.cpu / r.busy.seconds:5.1f} % of a core;  RSS "
          f"{r.busy.rss:.0f} MiB;  followers {100 * r.follower_cpu:.0f} % of a core, "
          f"errors {r.errors}")
    print(f"  stream messages {r.polls:,} in the run: <= "
          f"{1e6 * r.busy.cpu / max(1, r.polls):.0f} us of ingest CPU each (with its ack)")


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--follower":
        uvloop.run(follower_proc(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--followers", default="10,100,1000")
    ap.add_argument("--procs", type=int, default=3, help="follower processes")
    ap.add_argument("--idle-seconds", type=float, default=10)
    ap.add_argument("--purge-seconds", type=float, default=10)
    ap.add_argument("--rate", type=float, default=10, help="purges per second")
    ap.add_argument("--s3", choices=("auto", "ceph", "moto"), default="auto")
    ap.add_argument("--profile", help="py-spy ingest while purging into PROFILE-N.txt")
    ap.add_argument("--pin", action="store_true",
                    help="ingest alone on CPU 0, followers on CPU 1 (as if on other hosts)")
    args = ap.parse_args()
    global PINNED
    PINNED = args.pin
    with tempfile.TemporaryDirectory(prefix="mediacdn-fanout-") as d, ExitStack() as stack:
        tmp = Path(d)
        s3 = start_s3(args.s3, tmp, stack)
        proxy = start_proxy(s3, stack)
        print(f"S3: {s3.kind} at {s3.endpoint}, counted through {proxy}; "
              f"{args.rate:g} purges/s for {args.purge_seconds:g} s, idle {args.idle_seconds:g} s;"
              f" followers hold a stream each, in {args.procs} processes")
        for n in (int(x) for x in args.followers.split(",")):
            report(run_n(n, args.procs, s3, proxy, tmp, args.idle_seconds,
                         args.purge_seconds, args.rate, args.profile), args.rate)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
