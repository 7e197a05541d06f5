"""Reference servers for the edge bench: how fast Python itself can answer hits here.

    python -m scripts.bench.bare protocol|aiohttp PORT STATIC_DIR

Every file under STATIC_DIR is loaded into a dict keyed by its URL path, with its response
pre-rendered. `protocol`: a bare asyncio Protocol on uvloop (the bare-Python limit: nothing
but a split on the blank line and a dict lookup; benchmark code, not a server to deploy).
`aiohttp`: one aiohttp handler on uvloop returning the bytes (aiohttp's own machinery). Both
print "bare URL" once listening, as the services do.
"""

from __future__ import annotations

import asyncio
import sys
from email.utils import formatdate
from pathlib import Path

import uvloop
from aiohttp import web

HEADERS = {"Content-Type": "image/webp",
           "Cache-Control": "public, max-age=31536000, immutable"}


def load(static: Path) -> dict[str, bytes]:
    return {"/" + str(p.relative_to(static)): p.read_bytes()
            for p in static.rglob("*") if p.is_file()}


class Bare(asyncio.Protocol):
    def __init__(self, responses: dict[bytes, bytes]) -> None:
        self.responses = responses
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        assert self.transport is not None
        while (end := buf.find(b"\r\n\r\n")) >= 0:
            path = buf[:buf.find(b"\r\n")].split(b" ")[1]
            self.transport.write(self.responses.get(path, b"HTTP/1.1 404 Not Found\r\n"
                                                    b"Content-Length: 0\r\n\r\n"))
            buf = buf[end + 4:]
        self.buf = buf


def rendered(objects: dict[str, bytes]) -> dict[bytes, bytes]:
    date = formatdate(usegmt=True)
    out = {}
    for path, body in objects.items():
        head = "".join(f"{k}: {v}\r\n" for k, v in HEADERS.items())
        out[path.encode()] = (f"HTTP/1.1 200 OK\r\n{head}Content-Length: {len(body)}\r\n"
                              f"Date: {date}\r\n\r\n").encode() + body
    return out


async def serve_protocol(port: int, objects: dict[str, bytes]) -> None:
    loop = asyncio.get_running_loop()
    responses = rendered(objects)
    server = await loop.create_server(lambda: Bare(responses), "127.0.0.1", port,
                                      backlog=1024)
    print(f"bare http://127.0.0.1:{port}", flush=True)
    async with server:
        await server.serve_forever()


async def serve_aiohttp(port: int, objects: dict[str, bytes]) -> None:
    async def handle(request: web.Request) -> web.Response:
        body = objects.get(request.path)
        if body is None:
            raise web.HTTPNotFound()
        return web.Response(body=body, headers=HEADERS)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    print(f"bare http://127.0.0.1:{port}", flush=True)
    await asyncio.Event().wait()


def main() -> int:
    kind, port, static = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    objects = load(static)
    uvloop.run(serve_protocol(port, objects) if kind == "protocol"
               else serve_aiohttp(port, objects))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
