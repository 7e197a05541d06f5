"""Network namespaces for tests (root only): named namespaces joined by veth pairs, links cut
and restored with `ip link set`, and sockets opened inside a namespace from this process
(setns(2) around socket(2): a socket stays in the namespace it was created in), so one test
process can be a client in any region and relay between namespaces."""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import subprocess
import uuid
from collections.abc import Iterator

import aiohttp

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def unavailable() -> str | None:
    """Why namespaces cannot be used here, or None."""
    if os.geteuid() != 0:
        return "needs root (ip netns add, veth pairs)"
    probe = f"mcprobe{uuid.uuid4().hex[:6]}"
    try:
        run("ip", "netns", "add", probe)
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"`ip netns add` does not work here: {exc}"
    run("ip", "netns", "del", probe)
    return None


def run(*argv: str) -> str:
    done = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=20)
    return done.stdout


@contextlib.contextmanager
def entered(ns: str | None) -> Iterator[None]:
    """This thread in namespace `ns` (None: where it was) for the duration: keep it short
    and synchronous, nothing else of this thread runs in between."""
    if ns is None:
        yield
        return
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {ns}: {os.strerror(err)}")
        try:
            yield
        finally:
            if _libc.setns(home, CLONE_NEWNET) != 0:  # never leave the test elsewhere
                raise SystemExit("could not return to the test's network namespace")
    finally:
        os.close(target)
        os.close(home)


def socket_in(ns: str | None, family: int = socket.AF_INET) -> socket.socket:
    with entered(ns):
        sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    return sock


def session_in(ns: str | None) -> aiohttp.ClientSession:
    """An HTTP client whose connections start in `ns`: its source address is that
    namespace's own."""

    def factory(addr_info: object) -> socket.socket:
        family = addr_info[0]  # type: ignore[index]
        return socket_in(ns, family)

    connector = aiohttp.TCPConnector(socket_factory=factory)
    return aiohttp.ClientSession(connector=connector, auto_decompress=False)


class Net:
    """Namespaces and links created for one run (unique names: a crashed earlier run cannot
    collide), all removed by `close()`, which a fixture's finalizer calls whatever happened."""

    def __init__(self) -> None:
        self.run_id = uuid.uuid4().hex[:5]
        self.namespaces: list[str] = []
        self.routes: list[tuple[str, str, str]] = []  # (namespace, destination, via)

    def ns(self, short: str, forwarding: bool = False) -> str:
        name = f"mc{self.run_id}-{short}"
        run("ip", "netns", "add", name)
        self.namespaces.append(name)
        run("ip", "-n", name, "link", "set", "lo", "up")
        if forwarding:  # per namespace: the host's own setting is untouched
            run("ip", "netns", "exec", name, "sh", "-c",
                "echo 1 > /proc/sys/net/ipv4/ip_forward")
        return name

    def link(self, a: str, a_dev: str, a_addr: str, b: str, b_dev: str, b_addr: str) -> None:
        """A veth pair between namespaces a and b, each end with its address (CIDR)."""
        run("ip", "link", "add", a_dev, "netns", a, "type", "veth", "peer", "name", b_dev,
            "netns", b)
        for ns, dev, addr in ((a, a_dev, a_addr), (b, b_dev, b_addr)):
            run("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            run("ip", "-n", ns, "link", "set", dev, "up")

    def route(self, ns: str, dest: str, via: str) -> None:
        run("ip", "-n", ns, "route", "replace", dest, "via", via)
        self.routes.append((ns, dest, via))

    def address(self, ns: str, addr: str, dev: str = "lo") -> None:
        run("ip", "-n", ns, "addr", "add", addr, "dev", dev)

    def set_link(self, ns: str, dev: str, up: bool) -> None:
        """Cut or restore one end of a link. Down drops the routes through it, as on any
        host; up puts this namespace's routes back (only those through a link that is up
        can be added: the others wait for theirs)."""
        run("ip", "-n", ns, "link", "set", dev, "up" if up else "down")
        if up:
            for where, dest, via in self.routes:
                if where == ns:
                    with contextlib.suppress(subprocess.CalledProcessError):
                        run("ip", "-n", ns, "route", "replace", dest, "via", via)

    def close(self) -> None:
        for name in reversed(self.namespaces):  # veths die with either end's namespace
            with contextlib.suppress(subprocess.CalledProcessError, OSError):
                run("ip", "netns", "del", name)
        self.namespaces.clear()
