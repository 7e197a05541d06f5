"""A real HTTP reverse proxy on loopback in front of the S3 server, for the tests.

It counts what reaches the origin, and can be stopped (connection refused), slowed, or
restarted on the same port. It forwards the client's Host header, so SigV4 signatures
made for the proxy's address still verify at the real server.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import aiohttp
from aiohttp import web

HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "te", "trailer",
       "upgrade", "proxy-connection"}


class CountingProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.counts: Counter[tuple[str, str]] = Counter()
        self.delay = 0.0
        self.fail_after_puts: int | None = None  # then answer 503 SlowDown to everything
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def gets(self, contains: str = "") -> int:
        return sum(n for (m, p), n in self.counts.items() if m == "GET" and contains in p)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.counts[(request.method, request.path)] += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        puts = sum(n for (m, _), n in self.counts.items() if m in ("PUT", "POST"))
        if self.fail_after_puts is not None and puts > self.fail_after_puts:
            return web.Response(status=503, content_type="application/xml", body=(
                b"<?xml version='1.0'?><Error><Code>SlowDown</Code>"
                b"<Message>injected by the test</Message></Error>"))
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        body = await request.read()
        async with self._session.request(
            request.method, self.upstream + request.path_qs, headers=headers, data=body,
            allow_redirects=False, auto_decompress=False,
        ) as r:
            data = await r.read()
            out = {k: v for k, v in r.headers.items() if k.lower() not in HOP}
            if request.method == "HEAD" and "Content-Length" in r.headers:
                # A HEAD's length is the object's (RFC 9110 §8.6), not that of no body.
                out["Content-Length"] = r.headers["Content-Length"]
                return web.Response(status=r.status, headers=out)
            return web.Response(status=r.status, body=data, headers=out)

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(auto_decompress=False,
                                                  skip_auto_headers=["User-Agent"])
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def close(self) -> None:
        await self.stop()
        if self._session is not None:
            await self._session.close()
