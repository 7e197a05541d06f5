"""`mediacdn ingest|edge|router`: one service per process, as a real deployment runs them."""

from __future__ import annotations

import argparse
import secrets

import uvloop

from common.errors import ConfigError
from common.logs import setup_logging
from common.serve import serve
from config import Config, load_config
from scripts.cli import UsageError, environ


def load(args: argparse.Namespace, *, need_api_key: bool, need_admin: bool) -> Config:
    cfg = load_config(args.config, environ())
    if need_api_key and cfg.secrets.api_key is None:
        raise ConfigError(cfg.secrets.api_key_env, "is not set (the upload API key)")
    if need_admin and cfg.secrets.admin_token is None:
        raise ConfigError(cfg.secrets.admin_token_env, "is not set (the admin token)")
    return cfg


def run_ingest(args: argparse.Namespace) -> int:
    cfg = load(args, need_api_key=True, need_admin=True)
    from ingest.app import create_app

    setup_logging("ingest", cfg.log_level)
    uvloop.run(serve(create_app(cfg), service="ingest", name="ingest", host=cfg.ingest.host,
                     port=cfg.ingest.port, idle_timeout=cfg.ingest.idle_timeout,
                     listener=cfg.ingest.listener))
    return 0


def run_edge(args: argparse.Namespace) -> int:
    cfg = load(args, need_api_key=False, need_admin=True)
    node = cfg.edge_node(args.node)
    if node is None:
        raise UsageError(f"no edge named {args.node!r} in {cfg.path}; edges: "
                         + ", ".join(e.name for e in cfg.edges))
    # One token per run of the node: its workers serve once its follower caught up *in
    # this run* (a marker left by an earlier run must not count).
    run = args.run or secrets.randbits(62) + 1
    if node.workers > 1 and args.worker is None:
        from scripts.supervisor import MEDIACDN, run_workers

        conf = ["--config", str(cfg.path), "--run", str(run)]
        argvs = [[*MEDIACDN, "edge", "--node", node.name, "--worker", str(i), *conf]
                 for i in range(node.workers)]
        return run_workers("edge", node.name, node.url, argvs, environ())
    from edge.app import create_app
    from edge.keys import FRONT_DOOR

    worker = args.worker or 0
    if worker >= node.workers:
        raise UsageError(f"--worker {worker}: node {node.name} has {node.workers} worker(s)")
    setup_logging(f"edge/{node.name}" + (f"#{worker}" if node.workers > 1 else ""),
                  cfg.log_level)
    app = create_app(cfg, node, worker, run)
    uvloop.run(serve(app, service="edge", name=node.name,
                     host=node.host, port=node.port, reuse_port=node.workers > 1,
                     idle_timeout=cfg.edge.idle_timeout, send_timeout=cfg.edge.send_timeout,
                     listener=node.listener, front=app.get(FRONT_DOOR)))
    return 0


def run_router(args: argparse.Namespace) -> int:
    cfg = load(args, need_api_key=False, need_admin=False)
    from edge.router.app import create_app

    setup_logging("router", cfg.log_level)
    uvloop.run(serve(create_app(cfg), service="router", name="router", host=cfg.router.host,
                     port=cfg.router.port, listener=cfg.router.listener))
    return 0


def run_up(args: argparse.Namespace) -> int:
    from scripts.supervisor import run_topology

    return run_topology(args.config)


COMMANDS = {"ingest": run_ingest, "edge": run_edge, "router": run_router, "up": run_up}
