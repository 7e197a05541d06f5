"""Which variant a name in a URL means, for the edge (before any work) and for ingest
(before deriving it): the configured ladder, then widths on demand (`w{N}[@{D}x]`) within
the configured allow-list. Nothing else is ever derived, so the set an attacker can make
the origin store is bounded by the config."""

from __future__ import annotations

import re

from config.schema import TranscodeConfig, Variant

WIDTH_RE = re.compile(r"w([1-9][0-9]{0,4})(?:@([1-9])x)?")
# What a name with a DPR suffix must look like at all (else 400, not 404).
DPR_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}@[0-9]{1,2}x")


def on_demand(name: str, cfg: TranscodeConfig) -> Variant | None:
    """`w{N}` or `w{N}@{D}x` inside the allow-list, as a variant (N x D wide), or None."""
    m = WIDTH_RE.fullmatch(name)
    if m is None or cfg.ondemand_width_max == 0:
        return None
    n, d = int(m[1]), int(m[2] or 1)
    lo, hi, step = cfg.ondemand_width_min, cfg.ondemand_width_max, cfg.ondemand_width_step
    if not (lo <= n <= hi and (n - lo) % step == 0 and 1 <= d <= cfg.ondemand_max_dpr):
        return None
    return Variant(origin_name(name), n * d, None, "none")


def derivable(name: str, ext: str, cfg: TranscodeConfig) -> Variant | None:
    """The variant `name.ext` stands for under the current config, or None."""
    if ext not in cfg.formats:
        return None
    return cfg.variant(name) or on_demand(name, cfg)


def configured(name: str, cfg: TranscodeConfig) -> bool:
    return cfg.variant(name) is not None


def origin_name(name: str) -> str:
    """The variant's name in origin keys (origin.keys.variant accepts no '@'):
    `w640@2x` -> `w640-2x`, `w640@1x` -> `w640`."""
    base, at, dpr = name.partition("@")
    if not at or dpr == "1x":
        return base
    return f"{base}-{dpr.removesuffix('x')}x"
