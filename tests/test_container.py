"""The container image, built from the Containerfile and run as a deployment runs it: ingest
under podman (runc), an edge under buildah's chroot isolation (scripts/container/run.sh),
both on the host network against the suite's S3 server; upload, fetch verified, purge."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest

from tests.helpers import ADMIN_TOKEN, API_KEY, ROOT
from tests.images import jpeg, photo
from tests.s3server import S3Server, free_port

# One worker builds and runs the image (its module fixture), under pytest-xdist too.
pytestmark = [pytest.mark.timeout(900), pytest.mark.xdist_group("container")]

TOOLS = ("buildah", "podman", "debootstrap", "runc")
IMAGE = "localhost/mediacdn:test"
UID = 10001  # the image's user


def _missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None]


def _install_tools() -> str | None:
    """apt-get install the container tools, as scripts/s3/ceph-rgw.sh installs Ceph;
    returns why it could not."""
    if os.geteuid() != 0:
        return "needs root (buildah's chroot isolation, debootstrap)"
    if not _missing_tools():
        return None
    if shutil.which("apt-get") is None:
        return f"{', '.join(_missing_tools())} missing and no apt-get to install them"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"],
                 ["apt-get", "install", "-y", "-qq", "-o", "DPkg::Lock::Timeout=300",
                  "--no-install-recommends", *TOOLS]):
        r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            return f"{' '.join(argv[:2])} failed: {r.stderr.strip()[-300:]}"
    return None


@pytest.fixture(scope="module")
def image() -> str:
    reason = _install_tools()
    if reason:
        pytest.skip(f"container image not built: {reason}")
    # Cached by build.sh: a rebuild only when the base, the Containerfile or the sources change.
    r = subprocess.run(["scripts/container/build.sh"], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "IMAGE": IMAGE}, timeout=800)
    assert r.returncode == 0, f"build.sh failed:\n{r.stderr[-3000:]}"
    assert r.stdout.strip() == IMAGE
    return IMAGE


def _config(data: Path, s3: S3Server) -> tuple[dict[str, int], str]:
    ports = {"ingest": free_port(), "edge": free_port(), "router": free_port()}
    bucket = f"ctr-{uuid.uuid4().hex[:16]}"
    (data / "mediacdn.toml").write_text(f"""
log_level = "warning"
[origin]
kind = "s3"
bucket = "{bucket}"
endpoint_url = "{s3.endpoint}"
[ingest]
port = {ports['ingest']}
[edge]
cache_root = "/data/cache"
cache_bytes = 67108864
purge_poll_seconds = 0.5
[router]
port = {ports['router']}
[[regions]]
name = "eu-west"
lat = 48.86
lon = 2.35
[[edges]]
name = "eu-west-a"
region = "eu-west"
port = {ports['edge']}
""")
    return ports, bucket


def _env(s3: S3Server) -> dict[str, str]:
    return {"MEDIACDN_API_KEY": API_KEY, "MEDIACDN_ADMIN_TOKEN": ADMIN_TOKEN,
            "AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key}


def _wait_healthy(url: str, started: float, alive: Iterator[bool], limit: float = 60) -> float:
    """Seconds from `started` to the first 200 on `url`."""
    while time.monotonic() - started < limit:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return time.monotonic() - started
        except OSError:
            pass
        assert next(alive), f"the container serving {url} exited"
        time.sleep(0.05)
    raise AssertionError(f"{url} not healthy in {limit} s")


def _podman(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", "--runtime", "runc", *argv], capture_output=True,
                          text=True, timeout=timeout)


def _podman_run(name: str, image: str, data: Path, env: dict[str, str],
                *argv: str, detach: bool = True) -> subprocess.CompletedProcess[str]:
    opts = ["--network", "host", "--ulimit", "nofile=16384:16384",
            "--ulimit", "nproc=32768:32768", "-v", f"{data}:/data"]
    opts += [a for k, v in env.items() for a in ("-e", f"{k}={v}")]
    mode = ["-d"] if detach else ["--rm"]
    return _podman("run", *mode, "--name", name, *opts, image, *argv)


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _podman_alive(name: str) -> Iterator[bool]:
    while True:
        r = _podman("inspect", "--format", "{{.State.Running}}", name)
        yield r.stdout.strip() == "true"


def _pid_alive(pid: int) -> Iterator[bool]:
    while True:
        try:
            os.kill(pid, 0)
            yield True
        except ProcessLookupError:
            yield False


def test_image_runs_ingest_and_edge_upload_fetch_purge(image: str, s3_server: S3Server,
                                                       tmp_path: Path) -> None:
    inspect = json.loads(_podman("image", "inspect", image).stdout)[0]
    assert inspect["Config"]["User"] not in ("", "0", "root", "0:0")
    assert inspect["Config"]["Entrypoint"] == ["mediacdn"]

    data = tmp_path / "data"
    data.mkdir()
    ports, _ = _config(data, s3_server)
    os.chown(data, UID, UID)
    os.chown(data / "mediacdn.toml", UID, UID)
    env = _env(s3_server)
    suffix = uuid.uuid4().hex[:8]
    ingest_name, edge_name = f"mediacdn-test-ingest-{suffix}", f"mediacdn-test-edge-{suffix}"
    state = tmp_path / "state"
    run_env = {**os.environ, "STATE": str(state)}
    edge_pid = 0
    try:
        t0 = time.monotonic()
        r = _podman_run(ingest_name, image, data, env, "ingest", "--config", "mediacdn.toml")
        assert r.returncode == 0, r.stderr
        ingest_s = _wait_healthy(f"http://127.0.0.1:{ports['ingest']}/healthz", t0,
                                 _podman_alive(ingest_name))

        t0 = time.monotonic()
        opts = [a for k, v in env.items() for a in ("-e", f"{k}={v}")]
        r = subprocess.run(
            ["scripts/container/run.sh", "start", edge_name, image, *opts,
             "-v", f"{data}:/data", "--workingdir", "/data", "--",
             "mediacdn", "edge", "--node", "eu-west-a", "--config", "mediacdn.toml"],
            cwd=ROOT, env=run_env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        edge_pid = int(r.stdout.strip())
        edge_s = _wait_healthy(f"http://127.0.0.1:{ports['edge']}/healthz", t0,
                               _pid_alive(edge_pid))
        print(f"\nimage {image}: {inspect['Size'] / 1e6:.0f} MB; first /healthz: "
              f"ingest (podman runc) {ingest_s:.2f} s, edge (buildah chroot) {edge_s:.2f} s")

        body = jpeg(photo(900, 600))
        req = urllib.request.Request(f"http://127.0.0.1:{ports['ingest']}/v1/images",
                                     data=body, method="POST",
                                     headers={"Authorization": f"Bearer {API_KEY}"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            assert resp.status == 201
            manifest = json.loads(resp.read())
        assert manifest["id"] == blake3.blake3(body).hexdigest()
        variant = next(v for v in manifest["variants"]
                       if v["name"] == "w640" and v["format"] == "webp")

        url = f"http://127.0.0.1:{ports['edge']}{variant['path']}"
        for expected in ("MISS", "HIT"):
            status, headers, got = _get(url)
            assert status == 200
            assert headers["X-Cache"] == expected
            assert blake3.blake3(got).hexdigest() == variant["blake3"]
            assert headers["ETag"] == f'"{variant["blake3"]}"'

        # The operator's purge, with the image's own CLI.
        r = _podman_run(f"mediacdn-test-purge-{suffix}", image, data, env, "purge",
                        manifest["id"], "--json", "--config", "mediacdn.toml", detach=False)
        assert r.returncode == 0, r.stderr
        report = json.loads(r.stdout)
        assert report["failed"] == 0
        assert [x["ok"] for x in report["results"]] == [True]

        status, headers, got = _get(url)
        assert (status, headers["X-Cache"]) == (200, "MISS")  # gone from the cache, filled again
        assert blake3.blake3(got).hexdigest() == variant["blake3"]
    finally:
        subprocess.run(["scripts/container/run.sh", "stop", edge_name], cwd=ROOT, env=run_env,
                       capture_output=True, timeout=120)
        stopped = _podman("stop", "-t", "20", ingest_name)
        code = _podman("inspect", "--format", "{{.State.ExitCode}}", ingest_name).stdout.strip()
        _podman("rm", "-f", ingest_name)
    assert stopped.returncode == 0
    assert code == "0", "SIGTERM must drain the ingest and exit 0"
    if edge_pid:
        assert not next(_pid_alive(edge_pid)), "run.sh stop left the edge running"
