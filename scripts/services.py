"""`mediacdn ingest|edge|router`: one service per process, as a real deployment runs them."""

from __future__ import annotations

import argparse
import os
import secrets
import signal
from collections.abc import Callable

import uvloop

from common.logs import setup_logging
from common.serve import serve
from config import Config, load_config
from config.loader import check_secrets
from config.schema import KeyKind, Secrets
from scripts.cli import UsageError, environ

# The keys each service checks: `need`, at least one usable; `check`, any it has are valid.
KEYS: dict[str, tuple[tuple[KeyKind, ...], tuple[KeyKind, ...]]] = {
    "ingest": (("api_keys", "admin_tokens"), ()),
    "edge": (("admin_tokens",), ("signing_keys",)),
    "router": ((), ("signing_keys",)),
}


def follow_supervisor() -> None:
    """Started by `mediacdn up` or a multi-worker edge: SIGTERM (drain, exit) when that
    supervisor dies, even by `kill -9`, instead of holding the ports as an orphan."""
    from scripts.supervisor import SUPERVISOR_ENV
    from transcode.orphan import exit_with_parent

    parent = os.environ.get(SUPERVISOR_ENV, "")
    if parent.isdigit():
        exit_with_parent(int(parent), signal.SIGTERM)


def load(args: argparse.Namespace, service: str) -> Config:
    """The config, refused (exit 2) when a key the service uses has no value. The same
    check runs again on every SIGHUP (`reloader`)."""
    cfg = load_config(args.config, environ())
    check_secrets(cfg.secrets, *KEYS[service])
    return cfg


def reloader(args: argparse.Namespace, service: str) -> Callable[[], Secrets]:
    # The environment cannot change in a running process, but the config and key files can.
    return lambda: load(args, service).secrets


def run_ingest(args: argparse.Namespace) -> int:
    follow_supervisor()
    cfg = load(args, "ingest")
    from ingest.app import create_app

    setup_logging("ingest", cfg.log_level)
    uvloop.run(serve(create_app(cfg), service="ingest", name="ingest", host=cfg.ingest.host,
                     port=cfg.ingest.port, idle_timeout=cfg.ingest.idle_timeout,
                     listener=cfg.ingest.listener, reload_secrets=reloader(args, "ingest")))
    return 0


def run_edge(args: argparse.Namespace) -> int:
    follow_supervisor()
    cfg = load(args, "edge")
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
                     listener=node.listener, reload_secrets=reloader(args, "edge"),
                     front=app.get(FRONT_DOOR)))
    return 0


def run_router(args: argparse.Namespace) -> int:
    follow_supervisor()
    cfg = load(args, "router")
    from edge.router.app import create_app

    setup_logging("router", cfg.log_level)
    uvloop.run(serve(create_app(cfg), service="router", name="router", host=cfg.router.host,
                     port=cfg.router.port, listener=cfg.router.listener,
                     reload_secrets=reloader(args, "router")))
    return 0


def run_up(args: argparse.Namespace) -> int:
    from scripts.supervisor import run_topology

    return run_topology(args.config)


COMMANDS = {"ingest": run_ingest, "edge": run_edge, "router": run_router, "up": run_up}
