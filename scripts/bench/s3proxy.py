"""A counting HTTP reverse proxy in front of an S3 server, as its own process, for benchmarks.

    python -m scripts.bench.s3proxy UPSTREAM PORT

Every request is forwarded as is (the client's Host header too, so SigV4 signatures made for
the proxy's address still verify upstream) and counted by kind: LIST (a GET on the bucket),
GET, PUT, HEAD, DELETE, POST. `GET /__counts` (not a valid bucket name, never forwarded)
answers the counts so far as JSON. It prints `s3proxy http://127.0.0.1:PORT` once listening.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import aiohttp
import uvloop
from aiohttp import web

HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "te", "trailer",
       "upgrade", "proxy-connection"}


class Counts:
    def __init__(self) -> None:
        self.by_kind: dict[str, int] = {}


COUNTS = web.AppKey("counts", Counts)
SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)


def kind_of(method: str, path: str) -> str:
    # Path-style addressing: /bucket is the bucket (a GET on it lists), /bucket/key an object.
    if method == "GET" and path.strip("/").count("/") == 0:
        return "LIST"
    return method


async def counts(request: web.Request) -> web.Response:
    return web.json_response(request.app[COUNTS].by_kind)


async def forward(request: web.Request) -> web.StreamResponse:
    counts = request.app[COUNTS].by_kind
    kind = kind_of(request.method, request.path)
    counts[kind] = counts.get(kind, 0) + 1
    t0 = time.monotonic()
    try:
        return await _forward(request)
    finally:  # upstream time per kind, in ms (the bench reports it beside the counts)
        counts[f"ms {kind}"] = counts.get(f"ms {kind}", 0) + round(
            (time.monotonic() - t0) * 1000)


async def _forward(request: web.Request) -> web.StreamResponse:
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
    body = await request.read()
    async with request.app[SESSION].request(
        request.method, request.app[UPSTREAM] + request.path_qs, headers=headers, data=body,
        allow_redirects=False, auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=30),
    ) as r:
        data = await r.read()
        out = {k: v for k, v in r.headers.items() if k.lower() not in HOP}
        if request.method == "HEAD" and "Content-Length" in r.headers:
            out["Content-Length"] = r.headers["Content-Length"]  # RFC 9110 §8.6
            return web.Response(status=r.status, headers=out)
        return web.Response(status=r.status, body=data, headers=out)


async def serve(upstream: str, port: int) -> None:
    app = web.Application(client_max_size=1 << 30)
    app[COUNTS] = Counts()
    app[UPSTREAM] = upstream.rstrip("/")
    app.router.add_get("/__counts", counts)
    app.router.add_route("*", "/{tail:.*}", forward)
    async with aiohttp.ClientSession(auto_decompress=False,
                                     skip_auto_headers=["User-Agent"]) as session:
        app[SESSION] = session
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        sys.stdout.write(f"s3proxy http://127.0.0.1:{port}\n")
        sys.stdout.flush()
        try:
            await asyncio.Event().wait()  # until the bench terminates us
        finally:
            await runner.cleanup()


def fetch_counts(proxy_url: str) -> dict[str, int]:
    import urllib.request

    with urllib.request.urlopen(proxy_url + "/__counts", timeout=5) as r:
        raw = json.loads(r.read())
    return {str(k): int(v) for k, v in raw.items()}


def main() -> int:
    if len(sys.argv) != 3:
        sys.stderr.write("usage: python -m scripts.bench.s3proxy UPSTREAM PORT\n")
        return 2
    uvloop.run(serve(sys.argv[1], int(sys.argv[2])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
