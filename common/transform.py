"""The `spec` of a signed transform: `w=..,h=..,fit=..,g=..,q=..`, in that order, each
optional. Parsed strictly (400 otherwise); stored under a name derived from its canonical
form, so `w=0800` and `w=800` are one object at the origin."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Literal

from common.errors import BadRequest
from config.schema import TranscodeConfig

Fit = Literal["cover", "contain", "inside"]
ORDER = ("w", "h", "fit", "g", "q")
INT_RE = re.compile(r"[0-9]{1,5}")
FP_RE = re.compile(r"fp:(0(?:\.[0-9]{1,4})?|1(?:\.0{1,4})?):(0(?:\.[0-9]{1,4})?|1(?:\.0{1,4})?)")
MAX_SPEC = 120
TRANSFORM_PREFIX = "t-"  # a ladder variant's name never starts so (edge.paths refuses it)


@dataclass(frozen=True)
class Transform:
    width: int | None
    height: int | None
    fit: Fit
    gravity: str  # "attention", "centre" or "fp:X:Y"
    quality: int | None

    @property
    def canonical(self) -> str:
        parts = [f"w={self.width}" if self.width else "",
                 f"h={self.height}" if self.height else "", f"fit={self.fit}",
                 f"g={self.gravity}", f"q={self.quality}" if self.quality else ""]
        return ",".join(p for p in parts if p)

    @property
    def name(self) -> str:
        """Its variant name at the origin (origin.keys takes [a-z0-9_-]{0,31})."""
        return TRANSFORM_PREFIX + hashlib.sha256(self.canonical.encode()).hexdigest()[:24]


def _int(key: str, value: str, lo: int, hi: int) -> int:
    if not INT_RE.fullmatch(value) or not lo <= int(value) <= hi:
        raise BadRequest(f"spec: {key} must be an integer from {lo} to {hi}")
    return int(value)


def parse(spec: str) -> Transform:
    if not spec or len(spec) > MAX_SPEC:
        raise BadRequest("spec: empty or too long")
    values: dict[str, str] = {}
    last = -1
    for part in spec.split(","):
        key, eq, value = part.partition("=")
        if not eq or key not in ORDER:
            raise BadRequest(f"spec: {part[:20]!r} is not one of w=, h=, fit=, g=, q=")
        if ORDER.index(key) <= last:
            raise BadRequest("spec: keys go in this order, each once: w, h, fit, g, q")
        last = ORDER.index(key)
        values[key] = value
    width = _int("w", values["w"], 1, 16384) if "w" in values else None
    height = _int("h", values["h"], 1, 16384) if "h" in values else None
    fit = values.get("fit", "inside")
    if fit not in ("cover", "contain", "inside"):
        raise BadRequest("spec: fit is cover, contain or inside")
    gravity = values.get("g", "centre")
    if gravity not in ("attention", "centre") and not FP_RE.fullmatch(gravity):
        raise BadRequest("spec: g is attention, centre or fp:X:Y with X, Y in 0-1")
    if gravity.startswith("fp:"):
        _, x, y = gravity.split(":")
        gravity = f"fp:{float(x):g}:{float(y):g}"
    quality = _int("q", values["q"], 1, 100) if "q" in values else None
    if width is None and height is None:
        raise BadRequest("spec: give w, h or both")
    if fit != "inside" and (width is None or height is None):
        raise BadRequest(f"spec: fit={fit} needs both w and h")
    return Transform(width, height, fit, gravity, quality)  # type: ignore[arg-type]


def check_limits(t: Transform, cfg: TranscodeConfig) -> None:
    if (t.width or 0) > cfg.transform_max_width or (t.height or 0) > cfg.transform_max_height:
        raise BadRequest(f"spec: the output may be at most {cfg.transform_max_width} x "
                         f"{cfg.transform_max_height} pixels (transcode.transform_max_*)")
