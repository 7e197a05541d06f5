"""Soak: the whole topology (`mediacdn up`) under mixed load for a bounded time, loopback
only. Uploads (hostile files among them), hits through the router and on edges, misses,
purges. Reports unexpected statuses and the RSS of every service after warm-up vs the end.

    .venv/bin/python -m scripts.bench.soak [--seconds 600] [--warmup 60]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp
from PIL import Image

from scripts.bench.common import free_port, rss_mib

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "soak-api-key-0123456789abcdef"
ADMIN = "soak-admin-token-0123456789abcdef"
EDGES = [("eu-a", "eu"), ("eu-b", "eu"), ("us-a", "us"), ("ap-a", "ap")]


def write_config(tmp: Path) -> tuple[Path, str, dict[str, str]]:
    router, ingest = free_port(), free_port()
    edges = {n: f"http://127.0.0.1:{free_port()}" for n, _ in EDGES}
    text = f"""
log_level = "warning"
[origin]
kind = "fs"
path = "{tmp / 'origin'}"
[ingest]
port = {ingest}
[edge]
cache_root = "{tmp / 'cache'}"
cache_bytes = 33554432
memory_bytes = 16777216
purge_poll_seconds = 1
[router]
port = {router}
default_region = "eu"
[[regions]]
name = "eu"
lat = 48.8
lon = 2.3
countries = ["FR"]
[[regions]]
name = "us"
lat = 39.0
lon = -77.5
countries = ["US"]
[[regions]]
name = "ap"
lat = 1.3
lon = 103.8
countries = ["SG"]
""" + "".join(f'[[edges]]\nname = "{n}"\nregion = "{r}"\nport = {edges[n].rsplit(":", 1)[1]}\n'
              for n, r in EDGES)
    path = tmp / "soak.toml"
    path.write_text(text)
    return path, f"http://127.0.0.1:{ingest}", edges


def random_image(rnd: random.Random) -> bytes:
    w, h = rnd.randint(200, 1600), rnd.randint(200, 1200)
    img = Image.new("RGB", (w, h), tuple(rnd.randint(0, 255) for _ in range(3)))
    img.paste(Image.effect_noise((w // 2, h // 2), rnd.randint(10, 80)).convert("RGB"), (0, 0))
    buf = io.BytesIO()
    img.save(buf, rnd.choice(["JPEG", "PNG", "WEBP"]))
    return buf.getvalue()


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:  # threads come and go while we look
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def service_pids(up_pid: int) -> dict[str, int]:
    """The services started by `mediacdn up`, by name, from /proc."""
    out = {}
    for pid in _children(up_pid):
        try:
            args = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")]
        except OSError:
            continue
        if "--node" in args:
            out[args[args.index("--node") + 1]] = pid
        elif "ingest" in args:
            out["ingest"] = pid
        elif "router" in args:
            out["router"] = pid
    return out


def tree_rss(pid: int) -> float:
    try:
        total = rss_mib(pid)
    except OSError:
        return 0.0
    return total + sum(tree_rss(c) for c in _children(pid))


async def soak(seconds: float, warmup: float, ingest: str, router: str,
               edges: dict[str, str], up_pid: int) -> int:
    from tests.hostile import corpus  # the suite's own generator of hostile inputs

    rnd = random.Random(7)
    hostile = corpus()
    statuses: Counter[str] = Counter()
    unexpected: Counter[str] = Counter()
    known: list[dict[str, str]] = []
    auth = {"Authorization": f"Bearer {API_KEY}"}
    end = time.monotonic() + seconds
    rss_warm: dict[str, float] = {}
    rss_end: dict[str, float] = {}

    def expect(kind: str, got: int, ok: set[int]) -> None:
        statuses[f"{kind} {got}"] += 1
        if got not in ok:
            unexpected[f"{kind} {got}"] += 1

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
        async def uploader() -> None:
            while time.monotonic() < end:
                if rnd.random() < 0.25:
                    _name, data, want = rnd.choice(hostile)
                    ok = {want, 200} if want == 201 else {want}
                else:
                    data, ok = random_image(rnd), {201, 200}
                async with s.post(ingest + "/v1/images", data=data, headers=auth) as r:
                    body = await r.json(content_type=None)
                    expect("upload", r.status, ok)
                    if r.status in (200, 201):
                        known.extend({"path": v["path"], "blake3": v["blake3"]}
                                     for v in body["variants"])
                await asyncio.sleep(0.3)

        async def reader() -> None:
            while time.monotonic() < end:
                if not known:
                    await asyncio.sleep(0.1)
                    continue
                v = rnd.choice(known)
                if rnd.random() < 0.5:
                    url, country = router + v["path"], rnd.choice(["FR", "US", "SG", "ZZ"])
                    headers = {"X-Client-Country": country}
                else:
                    url, headers = rnd.choice(list(edges.values())) + v["path"], {}
                async with s.get(url, headers=headers) as r:
                    body = await r.read()
                    expect("get", r.status, {200})
                    if r.status == 200 and r.headers.get("ETag", "").strip('"') != v["blake3"]:
                        unexpected["get wrong etag"] += 1
                    from common.hashing import content_id

                    if r.status == 200 and content_id(body) != v["blake3"]:
                        unexpected["get corrupt body"] += 1

        async def purger() -> None:
            from config import load_config
            from scripts.ops import purge_everywhere

            cfg = load_config(os.environ["SOAK_CONFIG"], dict(os.environ))
            while time.monotonic() < end:
                await asyncio.sleep(5)
                if known:
                    image_id = rnd.choice(known)["path"].split("/")[2]
                    results = await purge_everywhere(cfg, list(cfg.edges), [image_id],
                                                     False, None)
                    for res in results:
                        expect("purge", 200 if res["ok"] else 0, {200})

        async def sampler() -> None:
            started = time.monotonic()
            while time.monotonic() < end:
                await asyncio.sleep(2)
                pids = service_pids(up_pid)
                now = {n: tree_rss(p) for n, p in pids.items()}
                if "ingest" in pids:  # the service itself, and its transcode workers
                    own = rss_mib(pids["ingest"])
                    now["ingest:service"] = own
                    now["ingest:workers"] = now["ingest"] - own
                if not rss_warm and time.monotonic() - started >= warmup:
                    rss_warm.update(now)
                rss_end.update(now)

        await asyncio.gather(uploader(), *(reader() for _ in range(8)), purger(), sampler())

    print(f"\nsoak: {seconds:.0f} s, {sum(statuses.values())} requests")
    for k, n in sorted(statuses.items()):
        print(f"  {k:<16} {n}")
    print(f"unexpected: {dict(unexpected) or 0}")
    print("RSS after warm-up -> end (MiB), growth:")
    worst = 0.0
    for name in sorted(rss_end):
        a, b = rss_warm.get(name, rss_end[name]), rss_end[name]
        growth = (b - a) / a * 100 if a else 0.0
        worst = max(worst, growth)
        print(f"  {name:<8} {a:7.1f} -> {b:7.1f}  {growth:+5.1f}%")
    print(f"worst growth {worst:+.1f}% (goal < 10%)")
    return 1 if unexpected else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--warmup", type=float, default=60)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mediacdn-soak-") as d:
        config, ingest, edges = write_config(Path(d))
        env = dict(os.environ, MEDIACDN_API_KEY=API_KEY, MEDIACDN_ADMIN_TOKEN=ADMIN,
                   PYTHONPATH=str(ROOT), SOAK_CONFIG=str(config))
        os.environ.update(MEDIACDN_ADMIN_TOKEN=ADMIN, SOAK_CONFIG=str(config))
        up = subprocess.Popen([sys.executable, "-m", "scripts", "up", "--config", str(config)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert up.stdout is not None
        router = ""
        for _ in range(6):
            parts = up.stdout.readline().decode().split()
            if parts and parts[0] == "router":
                router = parts[2]
        try:
            return asyncio.run(soak(args.seconds, args.warmup, ingest, router, edges, up.pid))
        finally:
            up.send_signal(signal.SIGTERM)
            up.wait(60)


if __name__ == "__main__":
    raise SystemExit(main())
