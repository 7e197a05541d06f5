"""Raw HTTP/1.1 against real edge processes: one edge node over an fs origin, and a
keep-alive client that sees exactly what went over the wire."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

from common.hashing import content_id
from origin import keys as K
from origin.fs import FsOrigin
from tests.topology import Service, env, write_config


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def edge_config(tmp_path: Path, edge_settings: str = "") -> Path:
    config, _ = write_config(tmp_path, f'kind = "fs"\npath = "{tmp_path / "origin"}"')
    if edge_settings:
        config.write_text(config.read_text().replace("[edge]\n", f"[edge]\n{edge_settings}\n"))
    return config


async def seed(tmp_path: Path, *sizes: int) -> list[tuple[str, bytes]]:
    """(path, body) of one w640 WebP variant per size, each of its own image."""
    origin = FsOrigin(tmp_path / "origin")
    out = []
    for size in sizes:
        image_id = content_id(os.urandom(32))
        body = os.urandom(size)
        await origin.put(K.variant(image_id, "w640", "webp"), body, "image/webp",
                         {"blake3": content_id(body)})
        out.append((f"/i/{image_id}/w640.webp", body))
    return out


async def start_edge(config: Path) -> Service:
    return await Service(["edge", "--node", "eu-west-a", "--config", str(config)],
                         env()).start()


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


async def read_response(reader: asyncio.StreamReader, head: bool = False
                        ) -> tuple[str, dict[str, str], bytes]:
    status = (await reader.readline()).decode().strip()
    headers: dict[str, str] = {}
    while line := (await reader.readline()).decode().strip():
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if head:
        return status, headers, b""
    return status, headers, await reader.readexactly(int(headers.get("content-length", "0")))


async def read_until_quiet(reader: asyncio.StreamReader, silence: float) -> bytes:
    """What a connection sends until it closes ("<closed>" appended) or says nothing for
    `silence` seconds ("<silence>"): a silence is an answer, not an error. 30 s at most."""
    out = bytearray()
    async with asyncio.timeout(30):
        while True:
            try:
                chunk = await asyncio.wait_for(reader.read(1 << 16), silence)
            except TimeoutError:
                return bytes(out + b"<silence>")
            if not chunk:
                return bytes(out + b"<closed>")
            out += chunk


class Polite:
    """One keep-alive connection that reads every answer."""

    def __init__(self, url: str, rcvbuf: int = 0) -> None:
        self.addr = address(url)
        self.rcvbuf = rcvbuf  # a small one keeps the kernel from taking in a whole body

    async def __aenter__(self) -> Polite:
        sock = socket.socket()
        if self.rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, self.addr)
        self.reader, self.writer = await asyncio.open_connection(sock=sock)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.writer.close()

    async def get(self, path: str) -> tuple[str, dict[str, str], bytes]:
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: edge\r\n\r\n".encode())
        async with asyncio.timeout(10):
            return await read_response(self.reader)
