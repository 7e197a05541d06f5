"""Ingest replicas asking each other which edges applied a purge record.

Each replica holds the streams of the edges that happened to connect to it, so a purge or
delete answered by one replica must also wait for the edges following the others, or "200,
applied" would be said while an edge on another replica still serves the old copy. With
`ingest.peers` set (every replica's admin URL; a name that resolves to several addresses, like
a Kubernetes headless Service, counts as each of them), the replica that recorded it asks every
other replica, at once and under the same deadline, to wait for its own followers
(`GET /_internal/purges/{seq}/applied`). A replica recognises a question from itself by the
random instance id each process draws at start.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

import aiohttp

log = logging.getLogger("mediacdn.ingest.peers")
INSTANCE = secrets.token_hex(8)  # this process; a replica skips questions it asked itself
RESOLVE_SECONDS = 2.0
ANSWER_SLACK_SECONDS = 2.0  # a peer's answer may take its wait plus this, then it is skipped


class Peers:
    def __init__(self, urls: tuple[str, ...], token: Callable[[], str | None],
                 session: aiohttp.ClientSession) -> None:
        """`token`: the admin token to send, read at each question (keys reload on
        SIGHUP)."""
        self.urls = urls
        self.token = token
        self.session = session

    async def _targets(self) -> list[tuple[str, str]]:
        """(base URL by address, the URL's host[:port]) for every address of every peer
        URL."""
        resolved = await asyncio.gather(*(self._resolve(url) for url in self.urls))
        return [target for targets in resolved for target in targets]

    async def _resolve(self, url: str) -> list[tuple[str, str]]:
        # Every name at once, each under its own deadline: one slow DNS answer does not
        # eat the purge's whole wait.
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            infos = await asyncio.wait_for(asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM), RESOLVE_SECONDS)
        except (OSError, TimeoutError) as exc:
            log.warning("ingest peer %s does not resolve: %s", url, exc)
            return []
        out = []
        for addr in dict.fromkeys(str(info[4][0]) for info in infos):
            shown = f"[{addr}]" if ":" in addr else addr
            out.append((f"{parts.scheme}://{shown}:{port}", parts.netloc))
        return out

    async def applied(self, seq: int, region: str | None, limit: float) -> dict[str, bool]:
        """{node: applied} over every other replica's connected followers. A replica that
        does not answer is named in the log: its followers read the log on their own
        (they are told nothing is applied for them here)."""
        targets = await self._targets()
        answers = await asyncio.gather(*(self._ask(base, host, seq, region, limit)
                                         for base, host in targets),
                                       return_exceptions=True)
        merged: dict[str, bool] = {}
        for (base, _), answer in zip(targets, answers, strict=True):
            if isinstance(answer, BaseException):
                log.warning("ingest peer %s did not say which edges applied record %d: %s",
                            base, seq, answer)
                continue
            for name, ok in answer.items():
                merged[name] = merged.get(name, False) or ok
        return merged

    async def _ask(self, base: str, netloc: str, seq: int, region: str | None,
                   limit: float) -> dict[str, bool]:
        params = {"wait": f"{limit:g}", "from": INSTANCE}
        if region:
            params["region"] = region
        host = urlsplit(f"//{netloc}").hostname or netloc
        headers = {"Host": netloc}
        token = self.token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        async with self.session.get(
                f"{base}/_internal/purges/{seq}/applied", params=params, headers=headers,
                server_hostname=host if base.startswith("https") else None,
                timeout=aiohttp.ClientTimeout(total=limit + ANSWER_SLACK_SECONDS)) as r:
            if r.status != 200:
                raise OSError(f"answered {r.status}")
            body = await r.json()
        edges = body.get("edges") if isinstance(body, dict) else None
        if not isinstance(edges, dict) or not all(isinstance(v, bool) for v in edges.values()):
            raise ValueError("no 'edges' of true/false in the answer")  # never taken as "applied"
        return {str(k): v for k, v in edges.items()}
