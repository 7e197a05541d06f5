"""Bytes per variant of real photographs, for cache sizing (docs/operations.md).

Builds the ladder of the config (default config/local.toml, with avif enabled as well) for
every JPEG of Debian's mate-backgrounds package, as an upload would, and prints the mean and
largest size of each variant and format, and per image.
    .venv/bin/python -m scripts.variant_sizes [--config PATH] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

from config import load_config

PHOTOS = Path("/usr/share/backgrounds/mate")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--config", default=None)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    photos = sorted(PHOTOS.glob("*/*.jpg"))
    if not photos:
        print("no photos: apt-get install mate-backgrounds", file=sys.stderr)
        return 2
    from transcode.ladder import build
    from transcode.pool import configure_libvips
    from transcode.probe import probe

    configure_libvips()
    cfg = load_config(args.config, {})
    tc = replace(cfg.transcode, formats=("avif", "webp", "jpg"))
    sizes: dict[str, list[int]] = defaultdict(list)
    per_image: dict[str, list[int]] = defaultdict(list)
    for photo in photos:
        data = photo.read_bytes()
        ladder = build(data, probe(data, data[:64], cfg.ingest), tc)
        totals: dict[str, int] = defaultdict(int)
        for out in ladder.outputs:
            sizes[f"{out.variant}.{out.format}"].append(len(out.data))
            totals[out.format] += len(out.data)
        for fmt, n in totals.items():
            per_image[fmt].append(n)
        per_image["original"].append(len(data))
    report = {k: {"mean": round(statistics.mean(v)), "max": max(v)}
              for k, v in [*sizes.items(), *((f"all variants {f}" if f != "original" else f, v)
                                              for f, v in per_image.items())]}
    if args.json:
        print(json.dumps({"photos": len(photos), "sizes": report}))
    else:
        print(f"{len(photos)} photos from {PHOTOS}")
        for k, v in report.items():
            print(f"{k:24} mean {v['mean'] / 1024:8.1f} KiB   max {v['max'] / 1024:8.1f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
