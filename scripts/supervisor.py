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
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from config import Config, load_config
from scripts.cli import environ

DRAIN_SECONDS = 15.0
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
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    announced: bool = False


def secrets_env(cfg: Config, env: dict[str, str]) -> dict[str, str]:
    """Generate and print the secrets the environment does not provide (never a default)."""
    out = dict(env)
    for var, value, what in ((cfg.secrets.api_key_env, cfg.secrets.api_key, "API key"),
                             (cfg.secrets.admin_token_env, cfg.secrets.admin_token,
                              "admin token")):
        if value is None:
            out[var] = secrets.token_urlsafe(32)
            print(f"secret {var} {out[var]}", flush=True)
            log("warning", f"{var} was not set: generated a random {what} for this run")
    return out


def children(cfg: Config, config_arg: str | None) -> list[Child]:
    base = [sys.executable, "-m", "scripts"]
    conf = ["--config", str(cfg.path)] if config_arg or cfg.path else []
    kids = [Child("ingest", "ingest", [*base, "ingest", *conf])]
    kids += [Child("edge", e.name, [*base, "edge", "--node", e.name, *conf]) for e in cfg.edges]
    kids.append(Child("router", "router", [*base, "router", *conf]))
    return kids


class Supervisor:
    def __init__(self, kids: list[Child], env: dict[str, str]) -> None:
        self.kids = kids
        self.env = env
        self.stopping = False
        self.fatal = False
        self.halt = asyncio.Event()

    async def _pump(self, child: Child, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            parts = line.split()
            if len(parts) == 3 and parts[0] == child.service and parts[1] == child.name:
                if not child.announced:
                    print(line, flush=True)
                    child.announced = True
                child.ready.set()
            elif line:
                print(line, flush=True)

    async def _run_child(self, child: Child) -> None:
        backoff = 0.5
        while not self.stopping:
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                *child.argv, env=self.env, stdout=asyncio.subprocess.PIPE, stdin=None,
                start_new_session=True)
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
        backends, router = self.kids[:-1], self.kids[-1]
        # Ingest and edges first, the router last: it probes the edges when it starts.
        tasks = [asyncio.create_task(self._run_child(k)) for k in backends]
        ready: asyncio.Future[Any] = asyncio.ensure_future(
            asyncio.gather(*(k.ready.wait() for k in backends)))
        if await self._until(ready):
            tasks.append(asyncio.create_task(self._run_child(router)))
            if await self._until(asyncio.ensure_future(router.ready.wait())):
                log("info", "all services ready", services=len(self.kids))
        await self.halt.wait()
        ready.cancel()
        return await self.shutdown(tasks)

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


def run_topology(config_arg: str | None) -> int:
    env = environ()
    cfg = load_config(config_arg, env)  # refuse a bad config here, once, exit 2
    env = secrets_env(cfg, env)
    env.setdefault("MALLOC_ARENA_MAX", "2")  # libvips + glibc arenas: see measured facts
    env["PYTHONUNBUFFERED"] = "1"
    # Children must import the same code, wherever `mediacdn` was started from.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return asyncio.run(Supervisor(children(cfg, config_arg), env).run())
