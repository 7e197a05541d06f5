"""`mediacdn ingest|edge|router|up`: one service per process, or the whole topology."""

from __future__ import annotations

import argparse

import uvloop

from common.errors import ConfigError
from common.logs import setup_logging
from common.serve import serve
from config import Config, load_config
from scripts.cli import environ


def _load(args: argparse.Namespace, *, need_api_key: bool, need_admin: bool) -> Config:
    cfg = load_config(args.config, environ())
    if need_api_key and cfg.secrets.api_key is None:
        raise ConfigError(cfg.secrets.api_key_env, "is not set (the upload API key)")
    if need_admin and cfg.secrets.admin_token is None:
        raise ConfigError(cfg.secrets.admin_token_env, "is not set (the admin token)")
    return cfg


def run_ingest(args: argparse.Namespace) -> int:
    cfg = _load(args, need_api_key=True, need_admin=True)
    from ingest.app import create_app

    setup_logging("ingest", cfg.log_level)
    app = create_app(cfg)
    uvloop.run(serve(app, service="ingest", name="ingest", host=cfg.ingest.host,
                     port=cfg.ingest.port))
    return 0


COMMANDS = {"ingest": run_ingest}
