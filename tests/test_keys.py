"""Named keys rotated and revoked without a restart (issue #11, item 3): real processes on
loopback, real SIGHUPs, the config edited between them."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from common.errors import ConfigError
from common.hashing import content_id
from common.signing import sign_path
from config.loader import check_secrets, parse_config
from config.schema import Secrets
from tests import images
from tests.topology import MEDIACDN, Ports, env, write_config

pytestmark = pytest.mark.timeout(180)
ROOT = Path(__file__).resolve().parents[1]
KEY_A = "key-a-value-0123456789abcdef"
KEY_B = "key-b-value-0123456789abcdef"
TOKEN_1 = "token-1-value-0123456789abcdef"
TOKEN_2 = "token-2-value-0123456789abcdef"
SIGN_1 = "sign-1-value-0123456789abcdef"
SIGN_2 = "sign-2-value-0123456789abcdef"
VALUES = (KEY_A, KEY_B, TOKEN_1, TOKEN_2, SIGN_1, SIGN_2)
UNKNOWN = content_id(b"never uploaded")


def keys_toml(tmp: Path, *, a: bool = True, t1: bool = True, s1: bool = True) -> str:
    """A from the environment, B from a file (as a Kubernetes Secret volume brings it); the
    same for tokens and signing keys. The flags say whether the first of each is enabled."""
    for name, value in (("key-b", KEY_B), ("token-2", TOKEN_2), ("sign-2", SIGN_2)):
        (tmp / name).write_text(value + "\n")  # a trailing newline is not part of the key
    flag = {True: "true", False: "false"}
    return f"""[secrets]
[[secrets.api_keys]]
name = "app-a"
env = "KEY_A"
enabled = {flag[a]}
[[secrets.api_keys]]
name = "app-b"
file = "{tmp / 'key-b'}"
[[secrets.admin_tokens]]
name = "ops-1"
env = "TOKEN_1"
enabled = {flag[t1]}
[[secrets.admin_tokens]]
name = "ops-2"
file = "{tmp / 'token-2'}"
[[secrets.signing_keys]]
name = "sign-1"
env = "SIGN_1"
enabled = {flag[s1]}
[[secrets.signing_keys]]
name = "sign-2"
file = "{tmp / 'sign-2'}"
"""


def rewrite(path: Path, tmp: Path, **flags: bool) -> None:
    text = path.read_text()
    path.write_text(text[:text.index("[secrets]")] + keys_toml(tmp, **flags))


def key_env() -> dict[str, str]:
    return env({"KEY_A": KEY_A, "TOKEN_1": TOKEN_1, "SIGN_1": SIGN_1})


def make(tmp: Path, *, named: bool = True, workers: int = 1) -> tuple[Path, Ports]:
    path, ports = write_config(tmp, f'kind = "fs"\npath = "{tmp / "origin"}"')
    text = path.read_text().replace("[ingest]\n", "[ingest]\npurge_ack_seconds = 3\n", 1)
    text = text.replace('log_level = "warning"', 'log_level = "info"', 1)
    if workers > 1:
        line = f"port = {ports.edges['eu-west-a']}\n"
        text = text.replace(line, line + f"workers = {workers}\n", 1)
    path.write_text(text + (keys_toml(tmp) if named else ""))  # at the end: TOML tables
    return path, ports


@dataclass
class Proc:
    proc: asyncio.subprocess.Process
    url: str
    log: Path

    def hup(self) -> None:
        self.proc.send_signal(signal.SIGHUP)


@contextlib.asynccontextmanager
async def services(path: Path, *names: str, environ: dict[str, str] | None = None
                   ) -> AsyncIterator[dict[str, Proc]]:
    """`mediacdn <service>` processes, each logging to its own file (read by the tests)."""
    argv = {"ingest": ["ingest"], "router": ["router"]}
    started: dict[str, Proc] = {}
    try:
        for name in names:
            log = path.parent / f"{name}.log"
            proc = await asyncio.create_subprocess_exec(
                *MEDIACDN, *argv.get(name, ["edge", "--node", name]), "--config", str(path),
                env=environ or key_env(), cwd=str(ROOT), stdout=asyncio.subprocess.PIPE,
                stderr=log.open("wb"))
            assert proc.stdout is not None
            async with asyncio.timeout(30):
                line = (await proc.stdout.readline()).decode().split()
            assert len(line) == 3, f"{name} announced {line}: {log.read_text()[-2000:]}"
            started[name] = Proc(proc, line[2], log)
        yield started
    finally:
        for p in started.values():
            if p.proc.returncode is None:
                p.proc.send_signal(signal.SIGTERM)
        for p in started.values():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(20):
                    await p.proc.wait()
            if p.proc.returncode is None:
                p.proc.kill()
                await p.proc.wait()


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


async def until(check: Callable[[], Awaitable[bool]], seconds: float = 10) -> None:
    """The reload reads files in a thread: wait (bounded) until `check` holds."""
    async with asyncio.timeout(seconds):
        for _ in range(int(seconds / 0.1)):
            if await check():
                return
            await asyncio.sleep(0.1)
    raise AssertionError(f"not within {seconds} s")


async def status_of(http: aiohttp.ClientSession, method: str, url: str,
                    headers: dict[str, str]) -> int:
    # A new connection each time: with several workers, each may answer.
    async with http.request(method, url, headers={**headers, "Connection": "close"}) as r:
        await r.read()
        return r.status


def assert_no_secret_in(*logs: Path) -> None:
    for log in logs:
        text = log.read_text()
        for value in VALUES:
            assert value not in text, f"{log.name} holds a key's value"


async def test_sighup_on_a_plain_http_service_keeps_it_and_its_connections_up(
        tmp_path: Path) -> None:
    path, _ = make(tmp_path, named=False)
    async with services(path, "ingest", environ=env()) as running, aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1)) as http:
        ingest = running["ingest"]
        async with http.get(ingest.url + "/healthz") as r:
            assert r.status == 200  # the connection this session keeps alive
        ingest.hup()
        await asyncio.sleep(1)
        assert ingest.proc.returncode is None, "SIGHUP killed a plain-HTTP service"
        async with http.get(ingest.url + "/healthz") as r:
            assert r.status == 200
        assert "keys reloaded" in ingest.log.read_text()


async def test_api_key_revoked_by_sighup_gets_401_others_and_uploads_in_flight_go_on(
        tmp_path: Path) -> None:
    path, _ = make(tmp_path)
    photo, other = (images.jpeg(images.photo(w, 480)) for w in (640, 600))  # two new images
    async with services(path, "ingest") as running, aiohttp.ClientSession() as http:
        ingest = running["ingest"]
        head = ingest.url + f"/v1/images/{UNKNOWN}"
        for value in (KEY_A, KEY_B):  # both valid: 404 is "no such image", past the key
            assert await status_of(http, "HEAD", head, bearer(value)) == 404
        async with http.post(ingest.url + "/v1/images", data=photo, headers=bearer(KEY_B)) as r:
            assert r.status == 201

        # An upload with A whose key check is done (ingest answers 100 Continue once its
        # handler runs, the key checked first) and whose body is still to come.
        host, port = ingest.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write((f"POST /v1/images HTTP/1.1\r\nHost: {host}\r\n"
                      f"Authorization: Bearer {KEY_A}\r\nContent-Type: image/jpeg\r\n"
                      f"Content-Length: {len(other)}\r\nExpect: 100-continue\r\n\r\n"
                      ).encode() + other[:1000])
        async with asyncio.timeout(10):
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 100")
        rewrite(path, tmp_path, a=False)
        ingest.hup()

        async def a_refused() -> bool:
            return await status_of(http, "HEAD", head, bearer(KEY_A)) == 401
        await until(a_refused)
        assert await status_of(http, "HEAD", head, bearer(KEY_B)) == 404
        writer.write(other[1000:])  # the rest of the body, after the reload
        async with asyncio.timeout(30):
            status = await reader.readuntil(b"\r\n")
        writer.close()
        assert status.startswith(b"HTTP/1.1 201"), "an upload started with A before the reload"
        async with http.post(ingest.url + "/v1/images", data=photo, headers=bearer(KEY_A)) as r:
            assert r.status == 401
    log = ingest.log.read_text()
    assert "key=app-a" in log and "key=app-b" in log  # the access log names the key
    assert_no_secret_in(ingest.log)


async def test_admin_token_rotation_every_worker_reloads_and_the_edge_follows_with_the_new(
        tmp_path: Path) -> None:
    path, _ = make(tmp_path, workers=2)
    async with services(path, "ingest", "eu-west-a") as running, \
            aiohttp.ClientSession() as http:
        ingest, edge = running["ingest"], running["eu-west-a"]
        purge = ingest.url + "/v1/purges"
        body = {"ids": [UNKNOWN]}
        for value in (TOKEN_1, TOKEN_2):
            async with http.post(purge, json=body, headers=bearer(value)) as r:
                # 202: the config's other edges are not running; this one applied it.
                assert (await r.json())["edges"]["eu-west-a"] == "applied"
        # Revoke token 1 at ingest first: the edge, still sending it, is refused...
        rewrite(path, tmp_path, t1=False)
        ingest.hup()

        async def refused_at_ingest() -> bool:
            return await status_of(http, "POST", purge, bearer(TOKEN_1)) == 401
        await until(refused_at_ingest)
        # The edge's long-poll in flight was let in before: a record ends it, and the next
        # poll, still with token 1, is refused (logged by the token's name).
        async with http.post(purge, json=body, headers=bearer(TOKEN_2)) as r:
            assert r.status in (200, 202)

        async def refusal_logged() -> bool:
            return "revoked?" in edge.log.read_text()
        await until(refusal_logged)
        # Its own reload (SIGHUP to the node, passed on to both workers) brings token 2.
        edge.hup()
        stats = edge.url + "/_admin/stats"

        async def refused_by_every_worker() -> bool:
            answers = [await status_of(http, "GET", stats, bearer(TOKEN_1)) for _ in range(16)]
            return set(answers) == {401}
        await until(refused_by_every_worker)
        assert {await status_of(http, "GET", stats, bearer(TOKEN_2)) for _ in range(16)} == {200}

        async def applied_by_the_edge() -> bool:
            async with http.post(purge, json=body, headers=bearer(TOKEN_2)) as r:
                return r.status < 300 and (await r.json())["edges"]["eu-west-a"] == "applied"
        await until(applied_by_the_edge, 20)  # it follows ingest again, with token 2
    text = edge.log.read_text()
    assert any("ops-1" in ln for ln in text.splitlines() if "revoked?" in ln)
    assert "key=ops-2" in text  # the admin requests name the token that passed
    assert_no_secret_in(ingest.log, edge.log)


async def test_a_revoked_signing_key_gets_403_at_the_edge_and_the_router(
        tmp_path: Path) -> None:
    path, _ = make(tmp_path)
    urls = {n: sign_path(k, UNKNOWN, "w=300,h=200,fit=cover", "webp")
            for n, k in (("s1", SIGN_1), ("s2", SIGN_2))}
    async with services(path, "eu-west-a", "router") as running, \
            aiohttp.ClientSession() as http:
        edge, router = running["eu-west-a"], running["router"]

        async def code(base: str, which: str) -> int:
            async with http.get(base + urls[which], allow_redirects=False) as r:
                return r.status

        for base in (edge.url, router.url):
            for which in ("s1", "s2"):
                assert await code(base, which) != 403, (base, which)
        rewrite(path, tmp_path, s1=False)
        edge.hup()
        router.hup()
        for base in (edge.url, router.url):
            async def s1_refused(base: str = base) -> bool:
                return await code(base, "s1") == 403
            await until(s1_refused)
            assert await code(base, "s2") != 403
    assert_no_secret_in(edge.log, router.log)


async def test_up_passes_sighup_on_to_every_service(tmp_path: Path) -> None:
    path, _ = make(tmp_path)
    log = tmp_path / "up.log"
    proc = await asyncio.create_subprocess_exec(
        *MEDIACDN, "up", "--config", str(path), env=key_env(), cwd=str(ROOT),
        stdout=asyncio.subprocess.PIPE, stderr=log.open("wb"))
    assert proc.stdout is not None
    urls: dict[str, str] = {}
    try:
        async with asyncio.timeout(60):
            while len(urls) < 6:  # ingest, 4 edges, the router
                _, name, url = (await proc.stdout.readline()).decode().split()
                urls[name] = url
        rewrite(path, tmp_path, a=False)
        proc.send_signal(signal.SIGHUP)
        head = urls["ingest"] + f"/v1/images/{UNKNOWN}"
        async with aiohttp.ClientSession() as http:
            async def a_refused() -> bool:
                return await status_of(http, "HEAD", head, bearer(KEY_A)) == 401
            await until(a_refused)

        def reloaded() -> set[str]:
            return {ln.split('"service": "')[1].split('"')[0]
                    for ln in log.read_text().splitlines() if "keys reloaded" in ln}

        async def all_reloaded() -> bool:
            return len(reloaded()) == 6
        await until(all_reloaded)
        assert reloaded() == {"ingest", "router", "edge/eu-west-a", "edge/eu-west-b",
                              "edge/us-east-a", "edge/ap-south-a"}
        assert proc.returncode is None
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            await proc.wait()
    assert_no_secret_in(log)


async def test_a_bad_reload_is_logged_once_and_keeps_the_previous_keys(tmp_path: Path) -> None:
    path, _ = make(tmp_path)
    async with services(path, "ingest") as running, aiohttp.ClientSession() as http:
        ingest = running["ingest"]
        head = ingest.url + f"/v1/images/{UNKNOWN}"
        good = path.read_text()
        for broken in (good.replace("enabled = true", "enabled = maybe", 1),  # not TOML
                       good.replace(str(tmp_path / "key-b"), str(tmp_path / "gone")),
                       good.replace('name = "app-b"', 'name = "app-a"')):
            before = ingest.log.read_text().count("key reload refused")
            path.write_text(broken)
            ingest.hup()

            async def refused_logged(before: int = before) -> bool:
                return ingest.log.read_text().count("key reload refused") == before + 1
            await until(refused_logged)
            for value in (KEY_A, KEY_B):
                assert await status_of(http, "HEAD", head, bearer(value)) == 404
        # Revoking every API key would leave ingest with none: refused the same way.
        path.write_text(good.replace("enabled = true", "enabled = false").replace(
            f'file = "{tmp_path / "key-b"}"', f'file = "{tmp_path / "key-b"}"\nenabled = false'))
        ingest.hup()

        async def refused_again() -> bool:
            return ingest.log.read_text().count("key reload refused") == 4
        await until(refused_again)
        assert await status_of(http, "HEAD", head, bearer(KEY_B)) == 404
        assert ingest.proc.returncode is None
    refusals = [ln for ln in ingest.log.read_text().splitlines() if "key reload refused" in ln]
    assert "secrets.api_keys" in refusals[2] and "app-a" in refusals[2]  # named, duplicate
    assert "gone" in refusals[1]


async def test_a_named_key_without_a_value_stops_the_start_naming_it(tmp_path: Path) -> None:
    path, _ = make(tmp_path)
    environ = key_env()
    del environ["KEY_A"]
    proc = await asyncio.create_subprocess_exec(
        *MEDIACDN, "ingest", "--config", str(path), env=environ, cwd=str(ROOT),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(30):
        _, err = await proc.communicate()
    assert proc.returncode == 2
    assert err.decode().strip().splitlines() == [
        "mediacdn: config error: secrets.api_keys[0]: 'app-a': KEY_A is not set"]


def _loaded(tmp: Path, secrets: dict[str, object], environ: dict[str, str]) -> Secrets:
    raw = tomllib.loads((ROOT / "config/local.toml").read_text())
    raw["secrets"] = secrets
    return parse_config(raw, environ, tmp / "t.toml").secrets


@pytest.mark.parametrize(("secrets", "key"), [
    ({"api_keys": [{"name": "a", "env": "X"}, {"name": "a", "env": "Y"}]},
     "secrets.api_keys[1].name"),  # duplicate names
    ({"admin_tokens": [{"name": "a", "env": "X", "file": "/f"}]}, "secrets.admin_tokens[0].env"),
    ({"signing_keys": [{"name": "a"}]}, "secrets.signing_keys[0].env"),  # neither
    ({"api_keys": [{"name": "Bad Name", "env": "X"}]}, "secrets.api_keys[0].name"),
    ({"api_key_env": "K", "api_keys": [{"name": "a", "env": "X"}]}, "secrets.api_keys"),
    ({"api_keys": [{"name": "a", "env": "X", "enabled": "yes"}]}, "secrets.api_keys[0].enabled"),
    ({"admin_tokens": [{"name": "a", "env": "X", "scope": "all"}]},
     "secrets.admin_tokens[0].scope"),
])
def test_bad_named_keys_are_refused_naming_the_key(
        tmp_path: Path, secrets: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        _loaded(tmp_path, secrets, {})
    assert info.value.key == key


def test_named_keys_from_env_and_files_revoked_ones_need_no_value(tmp_path: Path) -> None:
    (tmp_path / "k").write_text(KEY_B + "\n")
    s = _loaded(tmp_path, {
        "api_keys": [{"name": "old", "env": "GONE", "enabled": False},
                     {"name": "new", "file": str(tmp_path / "k")}],
        "admin_tokens": [{"name": "t", "env": "T"}]}, {"T": TOKEN_1})
    assert [k.name for k in s.usable("api_keys")] == ["new"]
    assert s.api_key == KEY_B and s.admin_token == TOKEN_1  # the file's newline is not kept
    assert s.signing_values == ()  # signing_key_envs' default, unset: transforms refused
    check_secrets(s, ("api_keys", "admin_tokens"), ("signing_keys",))
    assert KEY_B not in repr(s)  # a key's value never shows in a repr (logs, tracebacks)
    with pytest.raises(ConfigError) as info:  # short, or shared between API and admin
        check_secrets(_loaded(tmp_path, {"admin_tokens": [{"name": "t", "env": "T"}]},
                              {"T": "short"}), ("admin_tokens",))
    assert info.value.key == "secrets.admin_tokens[0]"
    with pytest.raises(ConfigError) as info:
        _loaded(tmp_path, {"admin_tokens": [{"name": "t", "file": str(tmp_path / "k")}]},
                {"MEDIACDN_API_KEY": KEY_B})
    assert info.value.key == "secrets.admin_tokens[0]"
