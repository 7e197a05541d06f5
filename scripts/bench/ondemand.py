"""Variants on demand: first-request latency of a derived variant vs a cached hit, and
`mediacdn reprocess --all` throughput vs the bare ladder of the same photos for the same
variants (one transcode worker against one core; reprocess keeps 2 images in flight so the
origin I/O of one overlaps the decode of the next).

    .venv/bin/python -m scripts.bench.ondemand [--images 20]
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
from dataclasses import replace
from pathlib import Path

import aiohttp

from scripts.bench.common import free_port, wait_http, write_bench_config
from scripts.bench.transcode import ROOT, ensure_sources

API_KEY, ADMIN = "bench-api-key-0123456789", "bench-admin-0123456789"
OLD = '[[transcode.variants]]\nname = "w640"\nwidth = 640\n'
NEW = OLD + '[[transcode.variants]]\nname = "w1600"\nwidth = 1600\n'


def photos(tmp: Path, n: int) -> list[bytes]:
    import pyvips

    src = pyvips.Image.new_from_file(str(ensure_sources(tmp)["12 MP baseline"]))
    # Distinct bytes (distinct ids), same work: a 1-pixel-wider crop each.
    return [bytes(src.crop(0, 0, src.width - i, src.height).jpegsave_buffer(Q=90))
            for i in range(n)]


def config(tmp: Path, ladder: str, ports: tuple[int, int]) -> Path:
    path = write_bench_config(tmp / "bench.toml", tmp, edges=[("e1", "bench", ports[1])],
                              ingest_port=ports[0], ingest_settings="max_bytes = 209715200")
    text = path.read_text().replace("[edge]", "[transcode]\nworkers = 1\n" + ladder + "[edge]", 1)
    path.write_text(text)
    return path


def start(argv: list[str], cfg: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, MEDIACDN_API_KEY=API_KEY, MEDIACDN_ADMIN_TOKEN=ADMIN,
               MEDIACDN_SIGNING_KEY="bench-signing-0123456789", PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "scripts", *argv, "--config", str(cfg)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def upload_all(url: str, bodies: list[bytes]) -> list[str]:
    ids = []
    async with aiohttp.ClientSession() as s:
        for body in bodies:
            async with s.post(url + "/v1/images", data=body,
                              headers={"Authorization": f"Bearer {API_KEY}"}) as r:
                ids.append((await r.json())["id"])
    return ids


async def first_vs_hit(edge: str, ids: list[str]) -> tuple[list[float], list[float]]:
    first: list[float] = []
    hit: list[float] = []
    async with aiohttp.ClientSession() as s:
        for image_id in ids:
            for bucket in (first, hit):
                t0 = time.perf_counter()
                async with s.get(f"{edge}/i/{image_id}/w1600.webp") as r:
                    await r.read()
                    assert r.status == 200, r.status
                bucket.append(time.perf_counter() - t0)
            async with s.get(f"{edge}/i/{image_id}/w1600.jpg") as r:  # done: reprocess skips
                await r.read()
    return first, hit


def bare(bodies: list[bytes]) -> float:
    from config import load_config
    from config.schema import Variant
    from transcode.job import transcode
    from transcode.pool import configure_libvips

    configure_libvips()
    cfg = load_config(ROOT / "config/local.toml", {})
    one = replace(cfg.transcode, variants=(Variant("w1600", 1600, None, "none"),))
    t0 = time.perf_counter()
    for body in bodies:
        transcode(body, cfg.ingest, one)
    return len(bodies) / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mediacdn-bench-") as d:
        tmp = Path(d)
        bodies = photos(tmp, args.images)
        ports = (free_port(), free_port())
        ingest_url, edge_url = (f"http://127.0.0.1:{p}" for p in ports)
        procs = [start(["ingest"], config(tmp, OLD, ports))]
        try:
            wait_http(ingest_url + "/healthz")
            half = args.images // 2
            ids = asyncio.run(upload_all(ingest_url, bodies))
            procs[0].terminate()
            procs[0].wait(30)
            cfg = config(tmp, NEW, ports)
            procs = [start(["ingest"], cfg), start(["edge", "--node", "e1"], cfg)]
            wait_http(ingest_url + "/healthz")
            wait_http(edge_url + "/healthz")
            first, hit = asyncio.run(first_vs_hit(edge_url, ids[:half]))
            print(f"w1600.webp of a 12 MP JPEG, {half} images: first request (derived) p50 "
                  f"{statistics.median(first) * 1000:.0f} ms; next request (hit) p50 "
                  f"{statistics.median(hit) * 1000:.1f} ms")
            env = dict(os.environ, MEDIACDN_ADMIN_TOKEN=ADMIN, PYTHONPATH=str(ROOT))
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "scripts", "reprocess", "--all",
                            "--concurrency", "2", "--config", str(cfg)], env=env, check=True,
                           stdout=subprocess.DEVNULL)
            rate = (args.images - half) / (time.perf_counter() - t0)
            bare_rate = bare(bodies[half:])
            print(f"reprocess --all (w1600 webp+jpg missing on {args.images - half} images, "
                  f"{half} done already), 1 worker, 2 images in flight: {rate:.2f} "
                  f"images/s; bare ladder of the same variants, one core: "
                  f"{bare_rate:.2f} images/s; ratio {bare_rate / rate:.2f} (goal <= 1.2)")
        finally:
            for p in procs:
                p.terminate()
                p.wait(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
