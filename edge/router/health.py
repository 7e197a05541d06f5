"""Edge health from probing `/readyz`, with hysteresis: `fall` failures in a row mark an
edge down, `rise` successes mark it up again, so one lost probe does not flap routing."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import aiohttp

from config.schema import EdgeNode, RouterConfig

log = logging.getLogger("mediacdn.router.health")


@dataclass
class EdgeHealth:
    up: bool = True
    successes: int = 0
    failures: int = 0
    last_error: str = ""
    changed_at: float = 0.0


class HealthMonitor:
    def __init__(self, edges: tuple[EdgeNode, ...], cfg: RouterConfig,
                 session: aiohttp.ClientSession) -> None:
        self.edges = edges
        self.cfg = cfg
        self.session = session
        self.state = {e.name: EdgeHealth() for e in edges}

    def is_up(self, name: str) -> bool:
        return self.state[name].up

    def record(self, name: str, ok: bool, error: str = "") -> None:
        h = self.state[name]
        if ok:
            h.successes, h.failures = h.successes + 1, 0
            if not h.up and h.successes >= self.cfg.rise:
                h.up, h.changed_at = True, time.time()
                log.info("edge %s is up", name)
        else:
            h.failures, h.successes, h.last_error = h.failures + 1, 0, error
            if h.up and h.failures >= self.cfg.fall:
                h.up, h.changed_at = False, time.time()
                log.warning("edge %s is down: %s", name, error)

    async def probe(self, edge: EdgeNode) -> None:
        try:
            timeout = aiohttp.ClientTimeout(total=self.cfg.probe_timeout)
            async with self.session.get(f"{edge.url}/readyz", timeout=timeout) as r:
                body = await r.json(content_type=None) if r.status in (200, 503) else {}
                # An edge whose origin is away still serves its cache ("media": true); one
                # catching up on purges refuses media: never send clients there.
                serving = r.status == 200 or (isinstance(body, dict) and body.get("media") is True)
                reason = body.get("reason", "") if isinstance(body, dict) else ""
                self.record(edge.name, serving, f"HTTP {r.status} {reason}".strip())
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            self.record(edge.name, False, type(exc).__name__)

    async def probe_all(self) -> None:
        await asyncio.gather(*(self.probe(e) for e in self.edges))

    async def initial(self) -> None:
        """Decide each edge's state before the first request: down means failed at once."""
        await self.probe_all()
        for h in self.state.values():
            if h.failures:
                h.up = False

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.probe_interval)
            await self.probe_all()
