"""The manifest: what an upload produced. Stored last at the origin; the API's answer."""

from __future__ import annotations

import json
import time
from typing import Any

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


def with_urls(manifest: dict[str, Any], public_base: str) -> dict[str, Any]:
    """URLs follow the current config, so they are added when answering, not stored."""
    out = dict(manifest)
    out["variants"] = [dict(v, url=public_base + v["path"]) for v in manifest["variants"]]
    return out


def encode(manifest: dict[str, Any]) -> bytes:
    return json.dumps(manifest, separators=(",", ":"), sort_keys=True).encode()


def decode(data: bytes) -> dict[str, Any]:
    value = json.loads(data)
    if not isinstance(value, dict):
        raise ValueError("manifest is not an object")
    return value
