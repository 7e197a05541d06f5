"""Transcode benchmark: the default ladder per source image, same outputs and qualities.

    mediacdn         transcode.ladder.build (decode once with shrink-on-load, cascade)
    pillow-cascade   the best Pillow pipeline: draft() shrink-on-load, cascade, LANCZOS
    per-variant      thumbor/imgproxy style: pyvips thumbnail per variant (decode each time)
    limit            one shrink-on-load decode + the encodes alone (no resize at all)

Each method runs in its own process (peak RSS is per method), single-threaded. Then: two
concurrent builds vs one (both cores), upload->201 latency through the ingest API vs the
bare pipeline, AVIF effort vs WebP at 1080, and ingest RSS under 8 concurrent 50 MP uploads.

    .venv/bin/python -m scripts.bench.transcode [--repeat 5]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MATE = Path("/usr/share/backgrounds/mate/abstract/Elephants_5640x3172.jpg")
WIDTHS = (1080, 640, 320)


def ensure_sources(tmp: Path) -> dict[str, Path]:
    if not MATE.exists():
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "install", "-y", "-qq", "mate-backgrounds"], check=True,
                       env=env, stdout=subprocess.DEVNULL)
    import pyvips

    twelve = tmp / "elephants-12mp.jpg"  # the 18 MP camera photo, resized, baseline
    img = pyvips.Image.new_from_file(str(MATE)).resize(4240 / 5640)
    img.jpegsave(str(twelve), Q=90, interlace=False)
    return {"12 MP baseline": twelve, "18 MP progressive": MATE}


# -- the methods, each run in a child process -----------------------------------------------


def method_mediacdn(data: bytes) -> int:
    from config import load_config
    from transcode.ladder import build
    from transcode.pool import configure_libvips
    from transcode.probe import probe

    configure_libvips()
    cfg = load_config(ROOT / "config/local.toml", {})
    return len(build(data, probe(data, data[:64], cfg.ingest), cfg.transcode).outputs)


def method_pillow(data: bytes) -> int:
    from PIL import Image, ImageOps

    img: Image.Image = Image.open(io.BytesIO(data))
    img.draft("RGB", (1080, 1080 * img.height // img.width))
    img = ImageOps.exif_transpose(img).convert("RGB")
    outputs = 0
    src = img
    for w in WIDTHS:
        h = round(src.height * w / src.width)
        src = src.resize((w, h), Image.Resampling.LANCZOS) if src.width > w else src
        for fmt, kw in (("WEBP", {"quality": 80, "method": 4}),
                        ("JPEG", {"quality": 82, "optimize": True})):
            src.save(io.BytesIO(), fmt, **kw)
            outputs += 1
    sq = ImageOps.fit(src, (150, 150), Image.Resampling.LANCZOS)
    sq.save(io.BytesIO(), "WEBP", quality=80, method=4)
    sq.save(io.BytesIO(), "JPEG", quality=82, optimize=True)
    return outputs + 2


def method_per_variant(data: bytes) -> int:
    import pyvips

    pyvips.concurrency_set(1)
    pyvips.cache_set_max(0)
    outputs = 0
    for w, h, crop in ((1080, None, "none"), (640, None, "none"), (320, None, "none"),
                       (150, 150, "attention")):
        img = pyvips.Image.thumbnail_buffer(data, w, height=h or 10_000_000, crop=crop,
                                            size="down").copy_memory()
        img.webpsave_buffer(Q=80, keep="none")
        img.jpegsave_buffer(Q=82, keep="none", optimize_coding=True)
        outputs += 2
    return outputs


def method_limit(data: bytes) -> tuple[int, float]:
    """Returns the time of the decode + encodes only (resizes are done outside the clock)."""
    import pyvips

    pyvips.concurrency_set(1)
    pyvips.cache_set_max(0)
    width = pyvips.Image.new_from_buffer(data, "").width
    shrink = 1
    while shrink < 8 and width // (shrink * 2) >= 1080:  # the same rule as the pipeline
        shrink *= 2
    t0 = time.perf_counter()
    base = pyvips.Image.new_from_buffer(data, "", shrink=shrink, fail_on="error").copy_memory()
    spent = time.perf_counter() - t0
    sized = [base.resize(w / base.width).copy_memory() for w in WIDTHS]
    sized.append(sized[-1].smartcrop(150, 150).copy_memory())
    t0 = time.perf_counter()
    for img in sized:
        img.webpsave_buffer(Q=80, keep="none")
        img.jpegsave_buffer(Q=82, keep="none", optimize_coding=True)
    return len(sized) * 2, spent + time.perf_counter() - t0


METHODS = {"mediacdn": method_mediacdn, "pillow-cascade": method_pillow,
           "per-variant": method_per_variant, "limit": method_limit}


def child(method: str, path: str, repeat: int) -> None:
    data = Path(path).read_bytes()
    fn = METHODS[method]
    fn(data)  # warm-up: imports, codec tables
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn(data)
        elapsed = time.perf_counter() - t0
        times.append(out[1] if isinstance(out, tuple) else elapsed)
    # VmHWM, not ru_maxrss: the latter survives exec and would report the parent's peak.
    hwm = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text()
               .splitlines() if line.startswith("VmHWM:"))
    print(json.dumps({"ms": statistics.median(times) * 1000, "rss_mib": hwm / 1024}))


def run_child(method: str, path: Path, repeat: int) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), MALLOC_ARENA_MAX="2")
    out = subprocess.run([sys.executable, "-m", "scripts.bench.transcode", "--child", method,
                          str(path), "--repeat", str(repeat)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _build_once(path: str) -> int:
    from config import load_config
    from transcode.job import transcode

    cfg = load_config(ROOT / "config/local.toml", {})
    return len(transcode(path, cfg.ingest, cfg.transcode)[1].outputs)


def concurrency(path: Path, repeat: int) -> tuple[float, float]:
    """Images/s through ingest's worker pool design: one worker vs two (both cores)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from transcode.pool import configure_libvips

    rates = []
    n = repeat * 4
    for workers in (1, 2):
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=configure_libvips) as pool:
            list(pool.map(_build_once, [str(path)] * workers))  # warm every worker
            t0 = time.perf_counter()
            list(pool.map(_build_once, [str(path)] * n))
            rates.append(n / (time.perf_counter() - t0))
    return rates[0], rates[1]


def avif_efforts(path: Path) -> list[tuple[str, float, int]]:
    import pyvips

    pyvips.concurrency_set(1)
    img = pyvips.Image.new_from_buffer(path.read_bytes(), "", shrink=4).resize(
        1080 / (MATE_WIDTH := pyvips.Image.new_from_file(str(path)).width / 4)).copy_memory()
    _ = MATE_WIDTH
    rows = []
    t0 = time.perf_counter()
    webp = img.webpsave_buffer(Q=80, keep="none")
    rows.append(("webp q80", (time.perf_counter() - t0) * 1000, len(webp)))
    for effort in (0, 1, 2, 3, 4):
        t0 = time.perf_counter()
        out = img.heifsave_buffer(Q=55, compression="av1", effort=effort, keep="none")
        rows.append((f"avif q55 effort {effort}", (time.perf_counter() - t0) * 1000, len(out)))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--child", nargs=2, metavar=("METHOD", "PATH"))
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.repeat)
        return 0
    with tempfile.TemporaryDirectory(prefix="mediacdn-bench-") as d:
        sources = ensure_sources(Path(d))
        print("Default ladder (w1080, w640, w320, s150 x webp q80 + jpg q82), one thread, "
              f"median of {args.repeat}")
        print(f"{'source':<20} {'method':<16} {'ms':>8} {'img/s/core':>11} {'peak RSS':>9} "
              f"{'vs mediacdn':>12}")
        for label, path in sources.items():
            res = {m: run_child(m, path, args.repeat) for m in METHODS}
            ours = res["mediacdn"]["ms"]
            for m, r in res.items():
                print(f"{label:<20} {m:<16} {r['ms']:>8.0f} {1000 / r['ms']:>11.2f} "
                      f"{r['rss_mib']:>7.0f} MiB {r['ms'] / ours:>11.2f}x")
            print(f"{'':<20} mediacdn / pillow-cascade = {ours / res['pillow-cascade']['ms']:.2f}x "
                  f"(goal <= 1.0), mediacdn / limit = {ours / res['limit']['ms']:.2f}x "
                  "(goal <= 1.15)")
        one, two = concurrency(sources["12 MP baseline"], args.repeat)
        print(f"\nTwo builds at a time vs one (12 MP): {one:.2f} -> {two:.2f} images/s = "
              f"{two / one:.2f}x (goal >= 1.8x)")
        print("\nAVIF at 1080 vs WebP (18 MP source), one thread:")
        for name, ms, size in avif_efforts(sources["18 MP progressive"]):
            print(f"  {name:<22} {ms:>7.0f} ms {size:>8} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
