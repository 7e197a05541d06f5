"""`mediacdn up`: the whole topology of a config on this machine, one process per service.

Each child is the same entry point a real deployment runs (`mediacdn ingest`, `mediacdn
edge --node N`, `mediacdn router`). A child prints `SERVICE NAME URL` once it listens;
we relay that line. A child that dies is restarted with backoff. SIGINT/SIGTERM: every
child gets SIGTERM, drains, and we exit 0.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from config import Config, load_config
from scripts.cli import UsageError, environ

DRAIN_SECONDS = 25.0  # above a service's own bound: aiohttp waits 2 x its 10 s shutdown
SUPERVISOR_ENV = "MEDIACDN_SUPERVISOR_PID"  # a child started by us ends when we do
MAX_BACKOFF = 10.0


def log(level: str, msg: str, **extra: object) -> None:
    entry = {"ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "level": level,
             "service": "supervisor", "msg": msg, **extra}
    sys.stderr.write(json.dumps(entry) + "\n")
    sys.stderr.flush()


@dataclass
class Child:
    service: str
    name: str
    argv: list[str]
    relay: bool = True  # print the child's `SERVICE NAME URL` line as ours
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    announced: bool = False


def secrets_env(cfg: Config, env: dict[str, str]) -> dict[str, str]:
    """Generate and print the secrets the environment does not provide (never a default)."""
    out = dict(env)
    s = cfg.secrets
    # Every enabled key from an unset variable; of the signing keys (optional), only the
    # first, when none is set. Keys from files are the operator's to provide.
    unset = [(k.env, what) for keys, what in ((s.api_keys, "API key"),
                                              (s.admin_tokens, "admin token"))
             for k in keys if k.enabled and k.value is None and k.env]
    signing = [k.env for k in s.of("signing_keys") if k.enabled and k.value is None and k.env]
    if not s.usable("signing_keys") and signing:
        unset.append((signing[0], "signing key"))
    for var, what in unset:
        if var is not None and not out.get(var):
            out[var] = secrets.token_urlsafe(32)
            print(f"secret {var} {out[var]}", flush=True)
            log("warning", f"{var} was not set: generated a random {what} for this run")
    return out


MEDIACDN = [sys.executable, "-m", "scripts"]


def topology(cfg: Config) -> list[list[Child]]:
    """Ingest and edges first, the router last: it probes the edges when it starts."""
    conf = ["--config", str(cfg.path)]
    backends = [Child("ingest", "ingest", [*MEDIACDN, "ingest", *conf])]
    backends += [Child("edge", e.name, [*MEDIACDN, "edge", "--node", e.name, *conf])
                 for e in cfg.edges]
    return [backends, [Child("router", "router", [*MEDIACDN, "router", *conf])]]


class Supervisor:
    """Runs `stages` of children in order (a stage starts once the previous one is ready),
    restarts any that die, and on SIGINT/SIGTERM drains them all."""

    def __init__(self, stages: list[list[Child]], env: dict[str, str],
                 on_ready: Callable[[], None] | None = None) -> None:
        self.stages = stages
        self.kids = [k for stage in stages for k in stage]
        self.env = env
        self.on_ready = on_ready
        self.stopping = False
        self.fatal = False
        self.halt = asyncio.Event()
        # Columns, so the URLs line up (still `SERVICE NAME URL`, split on spaces).
        self.widths = (max(len(k.service) for k in self.kids),
                       max(len(k.name) for k in self.kids))

    def service_line(self, service: str, name: str, url: str) -> str:
        return f"{service:<{self.widths[0]}} {name:<{self.widths[1]}} {url}"

    async def _pump(self, child: Child, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            parts = line.split()
            if len(parts) == 3 and parts[0] == child.service and parts[1] == child.name:
                if not child.announced and child.relay:
                    print(self.service_line(*parts), flush=True)
                    child.announced = True
                child.ready.set()
            elif line:
                print(line, flush=True)

    async def _run_child(self, child: Child) -> None:
        backoff = 0.5
        while not self.stopping:
            started = time.monotonic()
            # Own session (a terminal's Ctrl-C reaches us only, and we drain them in
            # order); SUPERVISOR_ENV: they drain and exit if we are killed outright.
            proc = await asyncio.create_subprocess_exec(
                *child.argv, env={**self.env, SUPERVISOR_ENV: str(os.getpid())},
                stdout=asyncio.subprocess.PIPE, stdin=None, start_new_session=True)
            child.proc = proc
            pump = asyncio.create_task(self._pump(child, proc))
            code = await proc.wait()
            await pump
            if self.stopping:
                return
            if time.monotonic() - started > 30:
                backoff = 0.5
            child.restarts += 1
            log("error", f"{child.service} {child.name} exited with {code}; restarting in "
                f"{backoff:g} s", child=child.name, code=code, restarts=child.restarts)
            if code == 2 and not child.announced:
                log("error", f"{child.service} {child.name} refused its config; stopping")
                self.fatal = True
                self.halt.set()
                return
            await asyncio.sleep(backoff)
            backoff = min(MAX_BACKOFF, backoff * 2)

    async def _until(self, task: asyncio.Future[Any]) -> bool:
        """Wait for `task` unless halted first; True if it finished."""
        halt: asyncio.Future[Any] = asyncio.ensure_future(self.halt.wait())
        await asyncio.wait([task, halt], return_when=asyncio.FIRST_COMPLETED)
        halt.cancel()
        return task.done()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.halt.set)
        # Reload (TLS, keys) is each child's: pass it on to every one, all workers included.
        loop.add_signal_handler(signal.SIGHUP, self.hangup)
        tasks: list[asyncio.Task[None]] = []
        all_ready = True
        for stage in self.stages:
            tasks += [asyncio.create_task(self._run_child(k)) for k in stage]
            ready: asyncio.Future[Any] = asyncio.ensure_future(
                asyncio.gather(*(k.ready.wait() for k in stage)))
            if not await self._until(ready):
                ready.cancel()
                all_ready = False
                break
        if all_ready:
            log("info", "all services ready", services=len(self.kids))
            if self.on_ready is not None:
                self.on_ready()
        await self.halt.wait()
        return await self.shutdown(tasks)

    def hangup(self) -> None:
        log("info", "SIGHUP: passed on to every service")
        for k in self.kids:
            if k.proc is not None and k.proc.returncode is None:
                k.proc.send_signal(signal.SIGHUP)

    async def shutdown(self, tasks: list[asyncio.Task[None]]) -> int:
        self.stopping = True
        for k in self.kids:
            if k.proc is not None and k.proc.returncode is None:
                k.proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(DRAIN_SECONDS):
                await asyncio.gather(*tasks, return_exceptions=True)
        except TimeoutError:
            for k in self.kids:
                if k.proc is not None and k.proc.returncode is None:
                    log("warning", f"{k.service} {k.name} did not drain; killing it")
                    k.proc.kill()
            await asyncio.gather(*tasks, return_exceptions=True)
        log("info", "stopped")
        return 2 if self.fatal else 0


def child_env(env: dict[str, str]) -> dict[str, str]:
    env = dict(env)
    env.setdefault("MALLOC_ARENA_MAX", "2")  # libvips + glibc arenas: see measured facts
    env["PYTHONUNBUFFERED"] = "1"
    # Children must import the same code, wherever `mediacdn` was started from.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def busy_port(cfg: Config) -> str | None:
    """The first configured port something else already listens on, as a sentence: then
    `up` stops at once (exit 2) instead of starting children that cannot bind."""
    listeners = [("ingest.port", cfg.ingest.host, cfg.ingest.port, cfg.ingest.listener),
                 ("router.port", cfg.router.host, cfg.router.port, cfg.router.listener)]
    listeners += [(f"edges.{e.name}.port", e.host, e.port, e.listener) for e in cfg.edges]
    checks = [(key, host, port) for key, host, port, _ in listeners]
    checks += [(key.replace(".port", ".admin_port"), ls.admin_host, ls.admin_port)
               for key, _, _, ls in listeners if ls.admin_port is not None]
    for key, host, port in checks:
        if port == 0:
            continue
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
            with socket.create_server((host, port), family=family):
                pass
        except OSError as exc:
            return (f"{key} {host}:{port} is in use ({exc.strerror or exc}): is another "
                    "`mediacdn up` running?")
    return None


def run_topology(config_arg: str | None) -> int:
    env = environ()
    cfg = load_config(config_arg, env)  # refuse a bad config here, once, exit 2
    busy = busy_port(cfg)
    if busy is not None:
        raise UsageError(busy)
    env = child_env(secrets_env(cfg, env))
    return asyncio.run(Supervisor(topology(cfg), env).run())


def run_workers(service: str, name: str, url: str, argvs: list[list[str]],
                env: dict[str, str]) -> int:
    """One service as several worker processes sharing its port (SO_REUSEPORT)."""
    kids = [Child(service, name, argv, relay=False) for argv in argvs]
    return asyncio.run(Supervisor([kids], child_env(env),
                                  on_ready=lambda: print(f"{service} {name} {url}",
                                                         flush=True)).run())
