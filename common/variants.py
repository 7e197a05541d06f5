"""Which variant a name in a URL means, for the edge (before any work) and for ingest
(before deriving it): the configured ladder, nothing else."""

from __future__ import annotations

from config.schema import TranscodeConfig, Variant


def derivable(name: str, ext: str, cfg: TranscodeConfig) -> Variant | None:
    """The variant `name.ext` stands for under the current config, or None."""
    if ext not in cfg.formats:
        return None
    return cfg.variant(name)


def origin_name(name: str) -> str:
    """The variant's name in origin keys (origin.keys.variant accepts no '@')."""
    return name
