"""Helpers the benchmarks share: installing anchors, pinning, wrk, RSS."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path


def ensure_debian_packages(*pkgs: str) -> None:
    missing = [p for p in pkgs if shutil.which(p) is None]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        sys.exit(f"benchmark needs {', '.join(missing)}: install them (apt-get install ...)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
                   check=True, env=env, stdout=subprocess.DEVNULL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, seconds: float = 30) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer in {seconds} s")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def tree_rss_mib(pid: int) -> float:
    total = rss_mib(pid)
    for child in Path(f"/proc/{pid}/task").iterdir():
        kids = child / "children"
        if kids.exists():
            for c in kids.read_text().split():
                total += tree_rss_mib(int(c))
    return total


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int

    def row(self, name: str) -> str:
        return (f"{name:<34} {self.rps:>10,.0f} req/s  p50 {self.p50_ms:>6.2f} ms  "
                f"p99 {self.p99_ms:>7.2f} ms  errors {self.errors}")


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(url: str, script: Path, seconds: int, connections: int, cpu: str,
            threads: int = 1) -> WrkResult:
    cmd = ["taskset", "-c", cpu, "wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s",
           "--latency", "-s", str(script), url]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", out, re.M))
    def parse(v: str) -> float:
        m = re.fullmatch(r"([\d.]+)(us|ms|s)", v)
        return _ms(m.group(1), m.group(2)) if m else float("nan")
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    errors += sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    return WrkResult(rps, parse(lat.get("50", "nan")), parse(lat.get("99", "nan")), errors)


def wrk_paths_script(paths: list[str], dest: Path) -> Path:
    """A wrk Lua script requesting the given paths at random."""
    body = ",\n".join(f'"{p}"' for p in paths)
    dest.write_text(
        "local paths = {\n" + body + "\n}\n"
        "math.randomseed(42)\n"
        "request = function()\n"
        "  return wrk.format('GET', paths[math.random(#paths)])\n"
        "end\n")
    return dest


def write_bench_config(path: Path, tmp: Path, *, edges: list[tuple[str, str, int]],
                       regions: dict[str, tuple[float, float]] | None = None,
                       ingest_port: int | None = None, edge_settings: str = "",
                       ingest_settings: str = "", node_settings: str = "",
                       cache_root: Path | None = None) -> Path:
    """A mediacdn config for a benchmark: fs origin under `tmp`, free ports, quiet logs.
    `edges`: (name, region, port); `regions`: name -> (lat, lon)."""
    regions = regions or {r: (0.0, 0.0) for _, r, _ in edges}
    region_tables = "".join(f'[[regions]]\nname = "{n}"\nlat = {lat}\nlon = {lon}\n'
                            for n, (lat, lon) in regions.items())
    edge_tables = "".join(f'[[edges]]\nname = "{n}"\nregion = "{r}"\nport = {p}\n{node_settings}\n'
                          for n, r, p in edges)
    path.write_text(f"""
log_level = "warning"
[origin]
kind = "fs"
path = "{tmp / 'origin'}"
[ingest]
port = {ingest_port or free_port()}
{ingest_settings}
[edge]
cache_root = "{cache_root or tmp / 'cache'}"
{edge_settings}
[router]
port = {free_port()}
default_region = "{next(iter(regions))}"
{region_tables}{edge_tables}""")
    return path


def py_spy() -> str:
    """py-spy from the venv (a dev dependency) when it is not on PATH."""
    return shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))


def start_nginx(tmp: Path, static: Path, port: int, cpus: str, workers: int = 1,
                listen_extra: str = "", server_extra: str = "") -> subprocess.Popen[bytes]:
    """nginx serving `static` as the benches' anchor: sendfile, keep-alive, the edge's
    Cache-Control. `listen_extra` (" ssl", " reuseport") and `server_extra` (TLS lines)."""
    conf = tmp / f"nginx-{port}.conf"
    conf.write_text(f"""
worker_processes {workers};
daemon off;
pid {tmp}/nginx-{port}.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
  types {{ image/webp webp; }}
  sendfile on;
  tcp_nopush on;
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path {tmp}/nginx-body;
  proxy_temp_path {tmp}/nginx-proxy;
  fastcgi_temp_path {tmp}/nginx-fcgi;
  uwsgi_temp_path {tmp}/nginx-uwsgi;
  scgi_temp_path {tmp}/nginx-scgi;
  server {{
    listen 127.0.0.1:{port}{listen_extra};
    {server_extra}
    root {static};
    etag on;
    add_header Cache-Control "public, max-age=31536000, immutable";
  }}
}}
""")
    return subprocess.Popen(["taskset", "-c", cpus, "nginx", "-c", str(conf), "-p", str(tmp)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
