"""One-off: decode + ladder time of a 12 MP photo as HEIC (pillow-heif) vs as JPEG (libvips).

The same pixels (the 18 MP camera photo from mate-backgrounds, resized to 4000x3000) are
encoded as a baseline JPEG q90 and as a HEIC q80 (pillow-heif's x265), then each goes through
`transcode.job.transcode` (probe + decode + default ladder), alternating, single process.

    .venv/bin/python -m scripts.bench.inputs [--repeat 5]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from pathlib import Path

import pillow_heif
import pyvips
from PIL import Image

from config import load_config
from transcode.job import transcode

ROOT = Path(__file__).resolve().parents[2]
MATE = Path("/usr/share/backgrounds/mate/abstract/Elephants_5640x3172.jpg")


def sources() -> dict[str, bytes]:
    img = pyvips.Image.thumbnail(str(MATE), 4000, height=3000, crop="centre")
    pil = Image.frombytes("RGB", (img.width, img.height), img.write_to_memory())
    jpeg = io.BytesIO()
    pil.save(jpeg, "JPEG", quality=90)
    out = {"jpeg": jpeg.getvalue()}
    # q80 in one piece, and as an iPhone writes it: a grid of 512 px tiles at a lower rate.
    for name, save in (("heic-q80", {"quality": 80}),
                       ("heic-q50-tiled", {"quality": 50, "tile_size": 512})):
        heic = io.BytesIO()
        pillow_heif.from_pillow(pil).save(heic, **save)
        out[name] = heic.getvalue()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    cfg = load_config(ROOT / "config/local.toml", {})
    data = sources()
    times: dict[str, list[float]] = {k: [] for k in data}
    for _ in range(args.repeat):
        for name, body in data.items():
            t0 = time.perf_counter()
            transcode(body, cfg.ingest, cfg.transcode)
            times[name].append(time.perf_counter() - t0)
    for name, ts in times.items():
        print(f"{name}: {len(data[name]) / 1e6:.2f} MB, "
              f"median {statistics.median(ts) * 1000:.0f} ms (min {min(ts) * 1000:.0f}, "
              f"max {max(ts) * 1000:.0f}) over {len(ts)} runs")


if __name__ == "__main__":
    main()
