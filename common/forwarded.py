"""The client's address behind trusted load balancers.

Hand-written, and small, because nothing maintained fits: aiohttp parses `Forwarded`
(`request.forwarded`, used here) but has no trust list, and aiohttp-remotes' middlewares
rewrite every request (a cost on the edge's hit path) and demand an exact hop-by-hop chain
rather than "the right-most address not itself trusted".
"""

from __future__ import annotations

import ipaddress

from aiohttp import web

from config.schema import Network


def _trusted(addr: str, trusted: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return any(ip.version == net.version and ip in net for net in trusted)


def _node(value: str) -> str:
    """`for=` node to an address: `[2001:db8::1]:443` and `192.0.2.1:80` lose the port."""
    value = value.strip().strip('"')
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value


def _chain(request: web.BaseRequest) -> list[str]:
    """Addresses the proxies recorded, client first (RFC 7239 §5.2, else X-Forwarded-For)."""
    if "Forwarded" in request.headers:
        return [_node(f["for"]) for f in request.forwarded if f.get("for")]
    return [a.strip() for v in request.headers.getall("X-Forwarded-For", ())
            for a in v.split(",") if a.strip()]


def client_address(request: web.BaseRequest, trusted: tuple[Network, ...]) -> str | None:
    """The peer, unless the peer is a trusted proxy: then the right-most forwarded address
    that is not itself trusted (a client can prepend anything; only the hops our proxies
    appended are believed)."""
    peer = request.remote
    if not trusted or peer is None or not _trusted(peer, trusted):
        return peer
    chain = _chain(request)
    for addr in reversed(chain):
        if not _trusted(addr, trusted):
            return addr
    return chain[0] if chain else peer
