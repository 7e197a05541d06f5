"""Configs for tests: the real default config with test origins, dirs and secrets."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from config import Config, load_config
from config.schema import OriginConfig, Secrets
from tests.s3server import free_port

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "test-api-key-0123456789abcdef"
ADMIN_TOKEN = "test-admin-token-0123456789abcdef"
ENV = {"MEDIACDN_API_KEY": API_KEY, "MEDIACDN_ADMIN_TOKEN": ADMIN_TOKEN}
AUTH = {"Authorization": f"Bearer {API_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def secrets_for(env: dict[str, str]) -> Secrets:
    """The default config's keys, read from `env` (as a service's environment)."""
    return load_config(ROOT / "config/local.toml", env).secrets


def make_config(tmp_path: Path, origin: OriginConfig | None = None) -> Config:
    cfg = load_config(ROOT / "config/local.toml", ENV)
    origin = origin or replace(cfg.origin, path=tmp_path / "origin")
    # Free ports everywhere: a `make run` on this machine must never answer for a test.
    edges = tuple(replace(e, cache_dir=tmp_path / "cache" / e.name, port=(p := free_port()),
                          url=f"http://127.0.0.1:{p}") for e in cfg.edges)
    regions = tuple(replace(r, edges=tuple(e for e in edges if e.region == r.name))
                    for r in cfg.regions)
    ingest_port, router_port = free_port(), free_port()
    return replace(cfg, origin=origin, regions=regions,
                   edge=replace(cfg.edge, cache_root=tmp_path / "cache"),
                   ingest=replace(cfg.ingest, max_bytes=8 * 1024 * 1024, port=ingest_port,
                                  url=f"http://127.0.0.1:{ingest_port}"),
                   router=replace(cfg.router, port=router_port,
                                  url=f"http://127.0.0.1:{router_port}"))
