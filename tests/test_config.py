"""The config loader: the default loads; every bad config names its key."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import pytest

from common.errors import ConfigError
from config import load_config
from config.loader import parse_config

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = tomllib.loads((ROOT / "config/local.toml").read_text())


def test_default_config_has_the_contracts_topology() -> None:
    cfg = load_config(ROOT / "config/local.toml", {})
    assert cfg.origin.kind == "fs" and cfg.origin.path == Path("var/origin")
    assert len(cfg.regions) >= 3
    assert all(r.edges for r in cfg.regions)
    assert max(len(r.edges) for r in cfg.regions) >= 2
    assert [v.name for v in cfg.transcode.variants] == ["w1080", "w640", "w320", "s150"]
    assert cfg.transcode.formats == ("webp", "jpg")
    assert cfg.secrets.api_key is None and cfg.secrets.admin_token is None  # no built-in secret
    assert cfg.ingest.public_base_url == cfg.router.url
    hosts = {(e.host, e.port) for e in cfg.edges} | {(cfg.ingest.host, cfg.ingest.port)}
    assert all(h == "127.0.0.1" for h, _ in hosts)


def test_secrets_come_from_the_named_environment_variables() -> None:
    env = {"MEDIACDN_API_KEY": "k" * 32, "MEDIACDN_ADMIN_TOKEN": "a" * 32}
    cfg = load_config(ROOT / "config/local.toml", env)
    assert (cfg.secrets.api_key, cfg.secrets.admin_token) == ("k" * 32, "a" * 32)


def test_mediacdn_config_env_names_another_file(tmp_path: Path) -> None:
    raw = copy.deepcopy(DEFAULT)
    raw["router"]["port"] = 9000
    other = tmp_path / "other.toml"
    other.write_text(_dump(raw))
    assert load_config(None, {"MEDIACDN_CONFIG": str(other)}).router.port == 9000


def _dump(raw: dict[str, Any]) -> str:
    import json

    # TOML is a superset of what we need here: write it with inline JSON-ish values.
    lines: list[str] = []

    def scalar(v: Any) -> str:
        return json.dumps(v) if not isinstance(v, bool) else str(v).lower()

    def table(prefix: str, t: dict[str, Any], array: bool = False) -> None:
        lines.append(f"[[{prefix}]]" if array else f"[{prefix}]")
        subs = []
        for k, v in t.items():
            if isinstance(v, dict):
                subs.append((k, v, False))
            elif isinstance(v, list) and v and isinstance(v[0], dict):
                subs.append((k, v, True))
            else:
                lines.append(f"{k} = {scalar(v)}")
        for k, v, arr in subs:
            for item in v if arr else [v]:
                table(f"{prefix}.{k}", item, arr)

    for k, v in raw.items():
        if not isinstance(v, dict | list) or (isinstance(v, list) and not v):
            lines.insert(0, f"{k} = {scalar(v)}")
    for k, v in raw.items():
        if isinstance(v, dict):
            table(k, v)
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            for item in v:
                table(k, item, True)
    return "\n".join(lines) + "\n"


def _mutate(path: list[str | int], value: Any = None, delete: bool = False) -> dict[str, Any]:
    raw = copy.deepcopy(DEFAULT)
    node: Any = raw
    for p in path[:-1]:
        node = node[p]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return raw


BAD = [
    (["origin", "bogus"], 1, "origin.bogus"),  # unknown key
    (["ingest", "max_bytes"], "big", "ingest.max_bytes"),  # wrong type
    (["ingest", "port"], 70000, "ingest.port"),
    (["origin", "kind"], "ftp", "origin.kind"),
    (["edges", 1, "port"], 8101, "edges.eu-west-b.port"),  # duplicate port
    (["router", "port"], 8001, "router.port"),  # duplicate with ingest
    (["edges", 0, "region"], None, "edges[0].region"),  # edge without region (deleted below)
    (["edges", 0, "region"], "mars", "edges[0].region"),  # unknown region
    (["regions", 0, "cidrs"], ["10.1.0.0/33"], "regions[0].cidrs[0]"),  # bad CIDR
    (["regions", 0, "cidrs"], ["10.1.0.1/16"], "regions[0].cidrs[0]"),  # host bits set
    (["regions", 0, "countries"], ["France"], "regions[0].countries[0]"),
    (["router", "default_region"], "nowhere", "router.default_region"),
    (["transcode", "formats"], ["gif"], "transcode.formats"),
    (["transcode", "variants", 0, "name"], "../x", "transcode.variants[0].name"),
    (["transcode", "variants", 3, "height"], None, "transcode.variants[3].height"),
    (["transcode", "variants", 3, "max_height"], 300, "transcode.variants[3].max_height"),
    (["transcode", "variants", 0, "max_height"], 0, "transcode.variants[0].max_height"),
    (["secrets", "api_key_env"], "not a name", "secrets.api_key_env"),
    (["edge", "cache_bytes"], True, "edge.cache_bytes"),
    (["log_level"], "loud", "log_level"),
    (["ingest", "tls_cert"], "c.pem", "ingest.tls_key"),  # a cert without its key
    (["router", "tls_key"], "k.pem", "router.tls_cert"),
    (["ingest", "trusted_proxies"], ["10.0.0.0/40"], "ingest.trusted_proxies[0]"),
    (["edge", "trusted_proxies"], ["nope"], "edge.trusted_proxies[0]"),
    (["router", "admin_port"], 8000, "router.admin_port"),  # its own public port
    (["edges", 1, "admin_port"], 8001, "edges.eu-west-b.admin_port"),  # ingest's port
]


def test_tls_makes_urls_https_and_admin_urls_follow() -> None:
    raw = _mutate(["ingest", "tls_cert"], "certs/ingest.pem")
    raw["ingest"].update(tls_key="certs/ingest.key", admin_port=9001)
    raw["edge"].update(tls_cert="certs/edge.pem", tls_key="certs/edge.key",
                       trusted_proxies=["10.0.0.0/8"])
    cfg = parse_config(raw, {}, Path("t.toml"))
    assert cfg.ingest.url == "https://127.0.0.1:8001"
    assert cfg.ingest.listener.admin_url == "https://127.0.0.1:9001"
    assert all(e.url.startswith("https://") and e.listener.admin_url == e.url
               for e in cfg.edges)
    assert all(len(e.listener.trusted_proxies) == 1 for e in cfg.edges)
    assert cfg.router.url.startswith("http://")
    raw["ingest"]["url"] = "http://ingest.example.com"  # TLS on, but an http:// url
    with pytest.raises(ConfigError) as info:
        parse_config(raw, {}, Path("t.toml"))
    assert info.value.key == "ingest.url"


@pytest.mark.parametrize(("path", "value", "key"), BAD, ids=[b[2] for b in BAD])
def test_bad_config_names_the_key(path: list[str | int], value: Any, key: str) -> None:
    raw = _mutate(path, value, delete=value is None)
    with pytest.raises(ConfigError) as info:
        parse_config(raw, {}, Path("t.toml"))
    assert info.value.key == key
    assert "\n" not in str(info.value)


def test_region_without_edges_is_refused() -> None:
    raw = copy.deepcopy(DEFAULT)
    raw["edges"] = [e for e in raw["edges"] if e["region"] != "ap-south"]
    with pytest.raises(ConfigError) as info:
        parse_config(raw, {}, Path("t.toml"))
    assert "ap-south" in str(info.value)


def test_short_or_shared_secrets_are_refused() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(copy.deepcopy(DEFAULT), {"MEDIACDN_API_KEY": "short"}, Path("t.toml"))
    assert info.value.key == "MEDIACDN_API_KEY"
    same = {"MEDIACDN_API_KEY": "s" * 20, "MEDIACDN_ADMIN_TOKEN": "s" * 20}
    with pytest.raises(ConfigError) as info:
        parse_config(copy.deepcopy(DEFAULT), same, Path("t.toml"))
    assert info.value.key == "MEDIACDN_ADMIN_TOKEN"


def test_max_height_is_read_for_fit_variants() -> None:
    raw = _mutate(["transcode", "variants", 0, "max_height"], 2000)
    cfg = parse_config(raw, {}, Path("t.toml"))
    assert cfg.transcode.variants[0].max_height == 2000
    assert cfg.transcode.variants[1].max_height is None


def _shields(**by_region: str) -> dict[str, Any]:
    raw = copy.deepcopy(DEFAULT)
    for region in raw["regions"]:
        if region["name"] in by_region:
            region["shield"] = by_region[region["name"]]
    return raw


def test_a_region_may_name_another_as_its_shield() -> None:
    cfg = parse_config(_shields(**{"us-east": "eu-west", "ap-south": "eu-west"}), {},
                       Path("t.toml"))
    assert [(r.name, r.shield) for r in cfg.regions] == [
        ("eu-west", None), ("us-east", "eu-west"), ("ap-south", "eu-west")]


@pytest.mark.parametrize(("shields", "index", "says"), [
    ({"us-east": "mars"}, 1, "unknown region"),
    ({"us-east": "us-east"}, 1, "its own shield"),
    ({"us-east": "eu-west", "eu-west": "ap-south"}, 1, "do not chain"),
])
def test_a_bad_shield_names_the_key(shields: dict[str, str], index: int, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_shields(**shields), {}, Path("t.toml"))
    assert info.value.key == f"regions[{index}].shield"
    assert says in str(info.value)
