"""Typed, frozen configuration, loaded once by `load_config` and passed explicitly."""

from config.loader import DEFAULT_CONFIG_PATH, load_config
from config.schema import (
    Config,
    EdgeNode,
    EdgeSettings,
    IngestConfig,
    OriginConfig,
    Region,
    RouterConfig,
    Secrets,
    TranscodeConfig,
    Variant,
)

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "Config",
    "EdgeNode",
    "EdgeSettings",
    "IngestConfig",
    "OriginConfig",
    "Region",
    "RouterConfig",
    "Secrets",
    "TranscodeConfig",
    "Variant",
    "load_config",
]
