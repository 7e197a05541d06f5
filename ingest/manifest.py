"""The manifest: what an upload produced. Stored last at the origin; the API's answer."""

from __future__ import annotations

import json
import time
from typing import Any

from config.schema import TranscodeConfig
from transcode.ladder import Ladder
from transcode.probe import Header


def edge_path(image_id: str, variant: str, ext: str) -> str:
    return f"/i/{image_id}/{variant}.{ext}"


def build_manifest(image_id: str, size: int, header: Header, ladder: Ladder) -> dict[str, Any]:
    return {
        "id": image_id,
        "format": header.format.value,
        "width": ladder.width,
        "height": ladder.height,
        "frames": header.frames,
        "bytes": size,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "placeholder": ladder.placeholder,
        "dominant_color": ladder.dominant,
        "variants": [
            {
                "name": e.variant,
                "format": e.format,
                "width": e.width,
                "height": e.height,
                "bytes": len(e.data),
                "blake3": e.blake3,
                "path": edge_path(image_id, e.variant, e.format),
            }
            for e in ladder.outputs
        ],
    }


def with_urls(manifest: dict[str, Any], public_base: str,
              cfg: TranscodeConfig | None = None) -> dict[str, Any]:
    """URLs follow the current config, so they are added when answering, not stored."""
    out = dict(manifest)
    out["variants"] = [dict(v, url=public_base + v["path"]) for v in manifest["variants"]]
    if cfg is not None:
        out["srcset"] = srcset(manifest, public_base, cfg)
    return out


def srcset(manifest: dict[str, Any], public_base: str, cfg: TranscodeConfig) -> dict[str, str]:
    """Per format, an `<img srcset>` value over the configured fit-to-width variants.

    Variants the image lacks yet are included: the edge derives them on first request.
    Each width descriptor is the variant's real width (never wider than the source), and
    names that come out the same width are given once.
    """
    src_w, src_h = int(manifest.get("width") or 0), int(manifest.get("height") or 0)
    widths: dict[int, str] = {}
    for v in sorted(cfg.variants, key=lambda v: v.width):
        if v.height is None or v.crop == "none":
            w = min(v.width, src_w) if src_w else v.width
            if v.max_height is not None and src_w and src_h > v.max_height:
                w = min(w, max(1, round(src_w * v.max_height / src_h)))  # a tall source
            widths.setdefault(w, v.name)
    image_id = str(manifest["id"])
    return {fmt: ", ".join(f"{public_base}{edge_path(image_id, name, fmt)} {w}w"
                           for w, name in sorted(widths.items()))
            for fmt in cfg.formats}


def encode(manifest: dict[str, Any]) -> bytes:
    return json.dumps(manifest, separators=(",", ":"), sort_keys=True).encode()


def decode(data: bytes) -> dict[str, Any]:
    value = json.loads(data)
    if not isinstance(value, dict):
        raise ValueError("manifest is not an object")
    return value
