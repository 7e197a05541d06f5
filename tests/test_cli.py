"""The `mediacdn` command as a user runs it: `up`, usage errors, config errors."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
from pathlib import Path

import aiohttp
import pytest

from tests.helpers import ROOT
from tests.topology import MEDIACDN, env, run_cli, write_config

pytestmark = pytest.mark.timeout(120)


def cli(*argv: str, environ: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MEDIACDN, *argv], env=environ or env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("argv", [
    [], ["bogus"], ["edge"], ["purge"], ["purge", "--all", "a" * 64],
    ["purge", "NOTANID"], ["delete"], ["warm", "abc"], ["stats", "--region", "Bad Region"],
])
def test_bad_usage_is_one_line_and_exit_2(argv: list[str]) -> None:
    r = cli(*argv)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(("toml", "key"), [
    ("[origin]\nkind = \"ftp\"\n", "origin.kind"),
    ("[ingest]\nmax_bytes = \"lots\"\n", "ingest.max_bytes"),
    ("bogus = 1\n", "bogus"),
    ("[[regions]]\nname = \"x\"\nlat = 1\nlon = 1\ncidrs = [\"300.0.0.0/8\"]\n"
     "[[edges]]\nname = \"e\"\nregion = \"x\"\nport = 9\n", "regions[0].cidrs[0]"),
    ("[[regions]]\nname = \"x\"\nlat = 1\nlon = 1\n[[edges]]\nname = \"e\"\nport = 9\n",
     "edges[0].region"),
    ("this is not toml", "config"),
])
@pytest.mark.parametrize("command", [["up"], ["ingest"], ["edge", "--node", "e"], ["router"],
                                     ["stats"]])
def test_bad_config_is_refused_naming_the_key(tmp_path: Path, toml: str, key: str,
                                              command: list[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    r = cli(*command, "--config", str(path))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0], r.stderr


def test_missing_config_file_and_missing_secret(tmp_path: Path) -> None:
    r = cli("up", "--config", str(tmp_path / "nope.toml"))
    assert r.returncode == 2 and "not found" in r.stderr
    environ = {k: v for k, v in env().items() if not k.startswith("MEDIACDN_")}
    r = cli("ingest", "--config", str(ROOT / "config/local.toml"), environ=environ)
    assert r.returncode == 2 and "MEDIACDN_API_KEY" in r.stderr


def test_unknown_edge_node_is_a_usage_error() -> None:
    r = cli("edge", "--node", "nowhere", "--config", str(ROOT / "config/local.toml"))
    assert r.returncode == 2 and "nowhere" in r.stderr


async def test_up_runs_the_topology_restarts_a_child_and_drains(tmp_path: Path) -> None:
    config, ports = write_config(tmp_path, f'kind = "fs"\npath = "{tmp_path / "origin"}"')
    environ = {k: v for k, v in env().items() if not k.startswith("MEDIACDN_")}
    proc = await asyncio.create_subprocess_exec(
        *MEDIACDN, "up", "--config", str(config), env=environ, cwd=str(tmp_path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    assert proc.stdout is not None
    services: dict[str, str] = {}
    secrets: dict[str, str] = {}
    async with asyncio.timeout(60):
        while len(services) < 6:
            parts = (await proc.stdout.readline()).decode().split()
            assert len(parts) == 3, parts
            if parts[0] == "secret":
                secrets[parts[1]] = parts[2]
            else:
                services[parts[1]] = parts[2]
    # No secret was set: random ones were generated and printed, never a default.
    assert set(secrets) == {"MEDIACDN_API_KEY", "MEDIACDN_ADMIN_TOKEN", "MEDIACDN_SIGNING_KEY"}
    assert len(set(secrets.values())) == 3 and all(len(v) >= 32 for v in secrets.values())
    assert services["eu-west-b"] == f"http://127.0.0.1:{ports.edges['eu-west-b']}"
    async with aiohttp.ClientSession() as http:
        for url in services.values():
            async with http.get(url + "/healthz") as r:
                assert r.status == 200
        async with http.get(services["ingest"] + "/_admin/stats") as r:
            assert r.status == 404
        async with http.post(services["ingest"] + "/v1/images", data=b"x",
                             headers={"Authorization": "Bearer " + secrets["MEDIACDN_API_KEY"]}
                             ) as r:
            assert r.status == 415  # the generated key works
        # Kill one edge: the supervisor starts it again.
        pid = _child_pid(str(config), "eu-west-b")
        os.kill(pid, signal.SIGKILL)
        async with asyncio.timeout(30):
            while True:
                await asyncio.sleep(0.3)
                try:
                    async with http.get(services["eu-west-b"] + "/healthz") as r:
                        if r.status == 200 and _child_pid(str(config), "eu-west-b") != pid:
                            break
                except aiohttp.ClientError:
                    pass
    proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(30):
        assert await proc.wait() == 0
    assert _children(str(config)) == []  # every child drained and exited


async def test_up_killed_outright_leaves_no_service_holding_its_ports(tmp_path: Path) -> None:
    # `kill -9` of `mediacdn up` (an OOM kill, a closed terminal's SIGKILL): its services
    # must not live on as orphans holding the ports, or the next `make run` finds them busy.
    config, ports = write_config(tmp_path, f'kind = "fs"\npath = "{tmp_path / "origin"}"')
    proc = await asyncio.create_subprocess_exec(
        *MEDIACDN, "up", "--config", str(config), env=env(), cwd=str(tmp_path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    assert proc.stdout is not None
    async with asyncio.timeout(60):
        started = 0
        while started < 6:
            if (await proc.stdout.readline()).split()[0] != b"secret":
                started += 1
    assert len(_children(str(config))) >= 6  # the 2-worker edge is a supervisor + 2
    proc.kill()
    await proc.wait()
    async with asyncio.timeout(20):  # each drains (bounded), then exits
        while _children(str(config)):
            await asyncio.sleep(0.2)
    with socket.create_server(("127.0.0.1", ports.ingest)):  # the port is free again
        pass


def _children(config: str) -> list[tuple[int, str]]:
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if config in cmd and " up " not in cmd:
            out.append((int(pid), cmd))
    return out


def _child_pid(config: str, node: str) -> int:
    pids = [p for p, cmd in _children(config) if f"--node {node} " in cmd + " "]
    assert len(pids) == 1, pids
    return pids[0]


async def test_run_cli_helper_reports_exit_codes() -> None:
    code, _, err = await run_cli("purge", environ=env())
    assert code == 2 and err


async def test_sigterm_finishes_the_request_in_flight_then_exits_0(tmp_path: Path) -> None:
    from tests import images
    from tests.helpers import AUTH
    from tests.topology import Service

    config, _ = write_config(tmp_path, f'kind = "fs"\npath = "{tmp_path / "origin"}"')
    ingest = await Service(["ingest", "--config", str(config)], env()).start()
    assert ingest.proc is not None
    data = images.noisy_jpeg(4000, 3000)  # about a second of transcoding
    async with aiohttp.ClientSession() as http:
        upload = asyncio.create_task(http.post(ingest.url + "/v1/images", data=data,
                                               headers=AUTH))
        await asyncio.sleep(0.3)  # the body is in; the transcode is running
        ingest.proc.send_signal(signal.SIGTERM)
        resp = await upload
        assert resp.status == 201  # finished, not cut off
        resp.release()
        async with asyncio.timeout(20):
            assert await ingest.proc.wait() == 0
        with pytest.raises(aiohttp.ClientConnectionError):
            await http.get(ingest.url + "/healthz")  # and no longer accepting
