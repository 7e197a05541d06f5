"""Purge latency and catch-up.

- 9 edges on loopback (3 regions x 3) following one ingest, 100 purges through the code
  `mediacdn purge` runs (ingest records it at the origin and answers once every edge
  applied it): from the call until every edge confirmed, p50/p99. Anchors: Fastly ~150 ms
  global average, Cloudflare < 150 ms P50.
- A restarted edge with 10,000 purge records to apply: time from process start until it
  listens (it catches up before serving), vs the same start with no records.

    .venv/bin/python -m scripts.bench.purge
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common.hashing import content_id
from config import load_config
from scripts.bench.common import free_port, write_bench_config
from scripts.ops import purge_everywhere

ROOT = Path(__file__).resolve().parents[2]
ADMIN = "bench-admin-token-0123456789"


def write_config(tmp: Path) -> Path:
    coords = {"r0": (48.8, 2.3), "r1": (39.0, -77.5), "r2": (1.3, 103.8)}
    edges = [(f"r{r}e{e}", f"r{r}", free_port()) for r in range(3) for e in range(3)]
    return write_bench_config(tmp / "purge.toml", tmp, edges=edges, regions=coords,
                              edge_settings="purge_poll_seconds = 60\norigin_timeout = 60")


def env() -> dict[str, str]:
    return dict(os.environ, MEDIACDN_ADMIN_TOKEN=ADMIN, MEDIACDN_API_KEY="bench-api-0123456789",
                PYTHONPATH=str(ROOT))


def start_ingest(cfg: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "scripts", "ingest", "--config", str(cfg)],
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    proc.stdout.readline()
    return proc


def start_edge(cfg: Path, name: str) -> tuple[subprocess.Popen[bytes], float]:
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "scripts", "edge", "--node", name,
                             "--config", str(cfg)], env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    proc.stdout.readline()
    return proc, time.perf_counter() - t0


async def purges(cfg_path: Path, n: int) -> list[float]:
    os.environ["MEDIACDN_ADMIN_TOKEN"] = ADMIN
    cfg = load_config(cfg_path, dict(os.environ))
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        results = await purge_everywhere(cfg, list(cfg.edges), [content_id(bytes([i]))],
                                         False, None)
        times.append(time.perf_counter() - t0)
        assert len(results) == 9 and all(r["ok"] for r in results), results
    return times


async def write_records(cfg_path: Path, n: int) -> None:
    from origin import open_origin, purgelog

    cfg = load_config(cfg_path, {})
    async with open_origin(cfg.origin) as origin:
        sem = asyncio.Semaphore(64)

        async def one(i: int) -> None:
            async with sem:
                rec = purgelog.new_record(i, "purge", [content_id(i.to_bytes(4, "big"))])
                await purgelog.try_write(origin, rec)

        await asyncio.gather(*(one(i) for i in range(1, n + 1)))


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="mediacdn-bench-") as d:
        tmp = Path(d)
        cfg = write_config(tmp)
        names = [f"r{r}e{e}" for r in range(3) for e in range(3)]
        procs = [start_ingest(cfg)] + [start_edge(cfg, n)[0] for n in names]
        try:
            times = asyncio.run(purges(cfg, 100))
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(20)
        times.sort()
        print("100 purges to 9 edges (recorded by ingest, answered once all applied): "
              f"p50 {times[49] * 1000:.1f} ms, "
              f"p99 {times[98] * 1000:.1f} ms, max {times[-1] * 1000:.1f} ms "
              "(goal p99 <= 50 ms; Fastly ~150 ms avg, Cloudflare < 150 ms P50)")
        t0 = time.perf_counter()
        cli = subprocess.run([sys.executable, "-m", "scripts", "purge", content_id(b"cli"),
                              "--config", str(cfg)], env=env(), capture_output=True)
        print(f"(one `mediacdn purge` process, ingest and all 9 edges down: exit "
              f"{cli.returncode} in "
              f"{(time.perf_counter() - t0) * 1000:.0f} ms, most of it Python start-up)")

        import shutil

        shutil.rmtree(tmp / "origin")
        shutil.rmtree(tmp / "cache")
        _, baseline = start_edge(cfg, "r0e0")
        subprocess.run(["pkill", "-f", "--", f"--node r0e0 --config {cfg}"])
        shutil.rmtree(tmp / "cache")
        t0 = time.perf_counter()
        asyncio.run(write_records(cfg, 10_000))
        wrote = time.perf_counter() - t0
        (tmp / "cache" / "r0e0").mkdir(parents=True, exist_ok=True)
        (tmp / "cache" / "r0e0" / "purge.cursor").write_text("0")  # it has all to apply
        proc, caught_up = start_edge(cfg, "r0e0")  # no ingest: straight from the origin
        proc.terminate()
        proc.wait(20)
        print(f"restart with 10,000 purge records to apply (fs origin; written in "
              f"{wrote:.1f} s): listening after {caught_up:.2f} s vs {baseline:.2f} s with "
              f"none: catch-up {caught_up - baseline:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
