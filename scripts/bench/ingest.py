"""Ingest benchmark: upload -> 201 through the real API vs the bare pipeline, and the
ingest service's peak RSS (itself plus its transcode workers) under 8 concurrent 50 MP
uploads.

    .venv/bin/python -m scripts.bench.ingest [--uploads 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from scripts.bench.common import free_port, tree_rss_mib, write_bench_config
from scripts.bench.transcode import ROOT, ensure_sources

API_KEY = "bench-api-key-0123456789"


def start_ingest(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cfg = write_bench_config(tmp / "ingest.toml", tmp, edges=[("bench", "bench", free_port())],
                             ingest_port=port, ingest_settings="max_bytes = 209715200")
    env = dict(os.environ, MEDIACDN_API_KEY=API_KEY, MEDIACDN_ADMIN_TOKEN="bench-admin-0123456789",
               PYTHONPATH=str(ROOT), MALLOC_ARENA_MAX="2")
    proc = subprocess.Popen([sys.executable, "-m", "scripts", "ingest", "--config", str(cfg)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    url = proc.stdout.readline().decode().split()[2]
    return proc, url


async def upload(session: aiohttp.ClientSession, url: str, data: bytes) -> float:
    t0 = time.perf_counter()
    async with session.post(url + "/v1/images", data=data,
                            headers={"Authorization": f"Bearer {API_KEY}"}) as r:
        await r.read()
        assert r.status == 201, r.status
    return time.perf_counter() - t0


async def latency(url: str, data: bytes, n: int) -> list[float]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as s:
        # Trailing bytes after the JPEG's end: the same picture, a new id (no dedupe).
        return [await upload(s, url, data + i.to_bytes(4, "big")) for i in range(n)]


async def peak_rss(url: str, pid: int, bodies: list[bytes]) -> tuple[float, float, float]:
    base = tree_rss_mib(pid)
    peak = base
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss_mib(pid))
            await asyncio.sleep(0.02)

    sampler = asyncio.create_task(sample())
    t0 = time.perf_counter()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=900)) as s:
        await asyncio.gather(*(upload(s, url, b) for b in bodies))
    elapsed = time.perf_counter() - t0
    done.set()
    await sampler
    return base, peak, elapsed


def bare_pipeline(data: bytes, n: int) -> float:
    from config import load_config
    from transcode.job import transcode
    from transcode.pool import configure_libvips

    configure_libvips()
    cfg = load_config(ROOT / "config/local.toml", {})
    transcode(data, cfg.ingest, cfg.transcode)
    return statistics.median(transcode(data, cfg.ingest, cfg.transcode)[2] for _ in range(n))


def big_images(tmp: Path) -> dict[str, bytes]:
    import pyvips

    src = pyvips.Image.new_from_file(str(ensure_sources(tmp)["18 MP progressive"]))
    big = src.resize(8660 / src.width)  # 8660 x 4871 = 42 MP ... make it 50 MP:
    big = big.embed(0, 0, 8660, 5773, extend="mirror")  # 49.99 MP, under the 50 MP limit
    return {"50 MP JPEG": bytes(big.jpegsave_buffer(Q=85)),
            "50 MP PNG": bytes(big.pngsave_buffer(compression=1))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--uploads", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mediacdn-bench-") as d:
        tmp = Path(d)
        data = ensure_sources(tmp)["12 MP baseline"].read_bytes()
        bare = bare_pipeline(data, 5)
        proc, url = start_ingest(tmp)
        try:
            times = asyncio.run(latency(url, data, args.uploads))
            p50 = statistics.median(times)
            p99 = sorted(times)[max(0, int(len(times) * 0.99) - 1)]
            print(f"upload -> 201, 12 MP JPEG ({len(data) / 1e6:.1f} MB), {args.uploads} "
                  f"sequential uploads: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms")
            print(f"bare pipeline (probe + decode + ladder, one core): {bare * 1000:.0f} ms; "
                  f"overhead at p50 {100 * (p50 - bare) / bare:.0f}% (goal <= 25%)")
            for name, body in big_images(tmp).items():
                bodies = [body + i.to_bytes(4, "big") for i in range(8)]
                base, peak, elapsed = asyncio.run(peak_rss(url, proc.pid, bodies))
                print(f"8 concurrent {name} uploads ({len(body) / 1e6:.1f} MB each): ingest "
                      f"RSS {base:.0f} MiB idle -> {peak:.0f} MiB peak (service + 2 "
                      f"workers), {elapsed:.1f} s for all")
        finally:
            proc.terminate()
            proc.wait(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
