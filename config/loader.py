"""`load_config(path, environ)`: parse TOML once, validate everything, fail naming the key."""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from common.errors import ConfigError
from config.schema import (
    FORMATS,
    KEY_KINDS,
    PLAIN,
    Config,
    EdgeNode,
    EdgeSettings,
    IngestConfig,
    KeyKind,
    Listener,
    NamedKey,
    Network,
    OriginConfig,
    Region,
    RouterConfig,
    Secrets,
    TranscodeConfig,
    Variant,
)
from config.table import Table

DEFAULT_CONFIG_PATH = Path("config/local.toml")
NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
ENV_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
COUNTRY_RE = re.compile(r"[A-Z]{2}")
LOG_LEVELS = ("debug", "info", "warning", "error")


def resolve_config_path(path: str | Path | None, environ: Mapping[str, str]) -> Path:
    """--config, else $MEDIACDN_CONFIG, else config/local.toml here, else the packaged one."""
    if path:
        return Path(path)
    if environ.get("MEDIACDN_CONFIG"):
        return Path(environ["MEDIACDN_CONFIG"])
    if DEFAULT_CONFIG_PATH.exists():
        return DEFAULT_CONFIG_PATH
    return Path(__file__).with_name("local.toml")


def load_config(path: str | Path | None, environ: Mapping[str, str]) -> Config:
    cfg_path = resolve_config_path(path, environ)
    try:
        raw = tomllib.loads(cfg_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("config", f"file not found: {cfg_path}") from None
    except OSError as exc:
        raise ConfigError("config", f"cannot read {cfg_path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{cfg_path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError("config", f"{cfg_path} is not UTF-8 text") from None
    return parse_config(raw, environ, cfg_path)


def parse_config(raw: object, environ: Mapping[str, str], path: Path) -> Config:
    root = Table(raw, "")
    root.only("log_level", "tls_ca", "secrets", "origin", "ingest", "transcode", "edge", "edges",
              "regions", "router")
    log_level = root.text("log_level", "info", choices=LOG_LEVELS)
    tls_ca = Path(ca) if (ca := root.text("tls_ca", None)) else None
    secrets = _secrets(root.table("secrets"), environ)
    origin = _origin(root.table("origin"), environ)
    ingest = _ingest(root.table("ingest"))
    transcode = _transcode(root.table("transcode"))
    edge, edge_listener = _edge_settings(root.table("edge"))
    edges = [_edge_node(t, edge, edge_listener) for t in root.tables("edges")]
    regions = _regions(root.tables("regions"), edges)
    router = _router(root.table("router"), regions)
    root.done()
    cfg = Config(
        path=path,
        secrets=secrets,
        origin=origin,
        ingest=_with_public_base(ingest, router),
        transcode=transcode,
        edge=edge,
        regions=regions,
        router=router,
        log_level=log_level,
        tls_ca=tls_ca,
    )
    _check_ports(cfg)
    return cfg


def _env_name(t: Table, name: str, default: str) -> str:
    value: str = t.text(name, default)
    if not ENV_RE.fullmatch(value):
        raise ConfigError(t.key(name), f"is not an environment variable name: {value!r}")
    return value


SECRET_MIN_CHARS = 16
# Today's single-key settings, each standing for one key of its kind when that kind's
# array of tables is absent.
LEGACY_KEYS: dict[KeyKind, str] = {"api_keys": "api_key_env", "admin_tokens": "admin_token_env",
                                   "signing_keys": "signing_key_envs"}
WHAT: dict[KeyKind, str] = {"api_keys": "upload API key", "admin_tokens": "admin token",
                            "signing_keys": "transform signing key"}


def _secrets(t: Table, environ: Mapping[str, str]) -> Secrets:
    api_env = _env_name(t, "api_key_env", "MEDIACDN_API_KEY")
    admin_env = _env_name(t, "admin_token_env", "MEDIACDN_ADMIN_TOKEN")
    signing_envs = tuple(t.texts("signing_key_envs", ["MEDIACDN_SIGNING_KEY"]))
    for env in signing_envs:
        if not ENV_RE.fullmatch(env):
            raise ConfigError(t.key("signing_key_envs"),
                              f"is not an environment variable name: {env!r}")
    named = {kind: _named_keys(t, kind, environ) for kind in KEY_KINDS}
    t.done()
    legacy = {"api_keys": (api_env,), "admin_tokens": (admin_env,), "signing_keys": signing_envs}
    chosen: dict[KeyKind, tuple[NamedKey, ...]] = {}
    for kind in KEY_KINDS:
        keys = named[kind]
        if keys is not None and t.has(LEGACY_KEYS[kind]):
            raise ConfigError(t.key(kind), f"replaces {t.key(LEGACY_KEYS[kind])}: set one "
                              "or the other (name the old variable in an entry: env = ...)")
        # Unset signing keys are allowed as before: transforms are then refused.
        chosen[kind] = keys if keys is not None else tuple(
            _from_env(env, env, env, environ, required=kind != "signing_keys")
            for env in legacy[kind])
    secrets = Secrets(**chosen)
    _check_values(secrets)
    return secrets


def _named_keys(t: Table, kind: KeyKind,
                environ: Mapping[str, str]) -> tuple[NamedKey, ...] | None:
    """`[[secrets.<kind>]]`: name, env or file, enabled. None when the array is absent."""
    present = t.has(kind)
    keys: list[NamedKey] = []
    for s in t.tables(kind, []):
        name = s.text("name")
        if not NAME_RE.fullmatch(name):
            raise ConfigError(s.key("name"), f"must match {NAME_RE.pattern}: {name!r}")
        if any(k.name == name for k in keys):
            raise ConfigError(s.key("name"), f"duplicate name {name!r} in {t.key(kind)}")
        env, file = s.text("env", None), s.text("file", None)
        enabled = s.flag("enabled", True)
        s.done()
        if (env is None) == (file is None):
            raise ConfigError(s.key("env"), "set exactly one of env (a variable) or file")
        if env is not None:
            if not ENV_RE.fullmatch(env):
                raise ConfigError(s.key("env"), f"is not an environment variable name: {env!r}")
            keys.append(_from_env(name, env, s.path, environ, enabled=enabled))
        else:
            keys.append(_from_file(name, Path(file), s.path, enabled))
    return tuple(keys) if present else None


def _from_env(name: str, env: str, where: str, environ: Mapping[str, str], *,
              enabled: bool = True, required: bool = True) -> NamedKey:
    value = environ.get(env) or None
    return NamedKey(name, f"env {env}", where, value, enabled,
                    "" if value else f"{env} is not set", env, required)


def _from_file(name: str, path: Path, where: str, enabled: bool) -> NamedKey:
    """A file (a Kubernetes Secret volume, say) can bring a new key to a running process;
    an environment variable cannot. Surrounding whitespace (a final newline) is not part
    of the key."""
    value: str | None = None
    try:
        value = path.read_text(encoding="utf-8").strip() or None
        problem = "" if value else f"file {path} is empty"
    except FileNotFoundError:
        problem = f"file {path} does not exist"
    except (OSError, UnicodeDecodeError) as exc:
        problem = f"file {path} cannot be read: {getattr(exc, 'strerror', None) or exc}"
    return NamedKey(name, f"file {path}", where, value, enabled, problem)


def _check_values(secrets: Secrets) -> None:
    for kind in KEY_KINDS:
        for k in secrets.usable(kind):
            if len(k.value or "") < SECRET_MIN_CHARS:
                raise ConfigError(k.config_key, f"secret must be at least {SECRET_MIN_CHARS} "
                                  f"characters ({k.name}, {k.source})")
    api = {k.value for k in secrets.usable("api_keys")}
    for k in secrets.usable("admin_tokens"):
        if k.value in api:
            raise ConfigError(k.config_key, "must differ from the upload API key")


def check_secrets(secrets: Secrets, need: tuple[KeyKind, ...],
                  check: tuple[KeyKind, ...] = ()) -> Secrets:
    """What a service verifies at start and on every reload: each enabled key of the kinds
    it uses has a value, and it has at least one usable key of each kind it `need`s."""
    for kind in (*need, *check):
        for k in secrets.of(kind):
            if k.enabled and k.required and k.value is None:
                what = f"is not set (the {WHAT[kind]})" if k.name == k.env else (
                    f"{k.name!r}: {k.problem}")
                raise ConfigError(k.config_key, what)
    for kind in need:
        if not secrets.usable(kind):
            raise ConfigError(f"secrets.{kind}", f"no enabled {WHAT[kind]}: enable one")
    return secrets


def _origin(t: Table, environ: Mapping[str, str]) -> OriginConfig:
    kind = t.text("kind", "fs", choices=("fs", "s3"))
    path = Path(t.text("path", "var/origin"))
    bucket = t.text("bucket", "mediacdn")
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
        raise ConfigError(t.key("bucket"), f"is not a valid S3 bucket name: {bucket!r}")
    endpoint_env = t.text("endpoint_url_env", None)
    endpoint = t.text("endpoint_url", None)
    if endpoint_env:
        endpoint = environ.get(endpoint_env) or endpoint
    if endpoint is not None and not re.match(r"https?://", endpoint):
        raise ConfigError(t.key("endpoint_url"), f"must be an http(s) URL, got {endpoint!r}")
    access_env = _env_name(t, "access_key_env", "AWS_ACCESS_KEY_ID")
    secret_env = _env_name(t, "secret_key_env", "AWS_SECRET_ACCESS_KEY")
    cfg = OriginConfig(
        kind=kind,
        path=path,
        bucket=bucket,
        endpoint_url=endpoint,
        region=t.text("region", "us-east-1"),
        access_key=environ.get(access_env) or None,
        secret_key=environ.get(secret_env) or None,
        create_bucket=t.flag("create_bucket", True),
        connect_timeout=t.number("connect_timeout", 2.0, lo=0.01),
        read_timeout=t.number("read_timeout", 10.0, lo=0.01),
        max_attempts=t.integer("max_attempts", 3, lo=1, hi=10),
        max_pool_connections=t.integer("max_pool_connections", 32, lo=1, hi=1024),
        call_timeout=t.number("call_timeout", 15.0, lo=0.05),
    )
    t.done()
    return cfg


def _ingest(t: Table) -> IngestConfig:
    host = t.text("host", "127.0.0.1")
    port = t.integer("port", 8001, lo=0, hi=65535)
    listener, url = _listener(t, host, port, Listener())
    cfg = IngestConfig(
        host=host,
        port=port,
        url=url,
        listener=listener,
        public_base_url=t.text("public_base_url", None) or "",
        max_bytes=t.integer("max_bytes", 50 * 1024 * 1024, lo=1),
        max_pixels=t.integer("max_pixels", 50_000_000, lo=1),
        max_dimension=t.integer("max_dimension", 16384, lo=1, hi=65535),
        max_frames=t.integer("max_frames", 256, lo=1, hi=10_000),
        spool_bytes=t.integer("spool_bytes", 1024 * 1024, lo=0),
        spool_dir=Path(d) if (d := t.text("spool_dir", None)) else None,
        idle_timeout=t.number("idle_timeout", 20.0, lo=0.1),
        purge_ack_seconds=t.number("purge_ack_seconds", 5.0, lo=0.0),
        log_poll_seconds=t.number("log_poll_seconds", 1.0, lo=0.05),
        origin_deadline_seconds=t.number("origin_deadline_seconds", 10.0, lo=0.1),
        peers=_peers(t, listener),
    )
    t.done()
    return cfg


def _peers(t: Table, listener: Listener) -> tuple[str, ...]:
    scheme = listener.admin_url.split("://", 1)[0]
    peers = tuple(u.rstrip("/") for u in t.texts("peers", []))
    for url in peers:
        parts = urlsplit(url)
        if parts.scheme != scheme or not parts.hostname or parts.path:
            raise ConfigError(t.key("peers"), f"{url!r}: each is a replica's admin URL, "
                              f"{scheme}://HOST:PORT")
    return peers


def _variant(t: Table) -> Variant:
    t.only("name", "width", "height", "crop", "max_height")
    name = t.text("name")
    if not NAME_RE.fullmatch(name):
        raise ConfigError(t.key("name"), f"must match {NAME_RE.pattern}, got {name!r}")
    if name.startswith("t-"):  # the names of signed transforms at the origin
        raise ConfigError(t.key("name"), f"must not start with 't-', got {name!r}")
    crop = t.text("crop", "none", choices=("none", "centre", "attention"))
    height = t.integer("height", None, lo=1, hi=16384)
    if crop != "none" and height is None:
        raise ConfigError(t.key("height"), "is required when crop is set")
    max_height = t.integer("max_height", None, lo=1, hi=16384)
    if max_height is not None and crop != "none":
        raise ConfigError(t.key("max_height"), "applies to variants without crop (a crop's "
                                               "height is its height)")
    v = Variant(name=name, width=t.integer("width", lo=1, hi=16384), height=height, crop=crop,
                max_height=max_height)
    t.done()
    return v


DEFAULT_LADDER = (
    Variant("w1080", 1080, None, "none"),
    Variant("w640", 640, None, "none"),
    Variant("w320", 320, None, "none"),
    Variant("s150", 150, 150, "attention"),
)


def _transcode(t: Table) -> TranscodeConfig:
    variants = tuple(_variant(v) for v in t.tables("variants", [])) or DEFAULT_LADDER
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ConfigError(t.key("variants"), "variant names must be unique")
    formats = t.texts("formats", ["webp", "jpg"])
    if not formats or any(f not in FORMATS for f in formats) or len(set(formats)) != len(formats):
        raise ConfigError(t.key("formats"), f"must be distinct values among {', '.join(FORMATS)}")
    cfg = TranscodeConfig(
        variants=variants,
        formats=tuple(f for f in FORMATS if f in formats),  # preference order avif > webp > jpg
        webp_quality=t.integer("webp_quality", 80, lo=1, hi=100),
        jpeg_quality=t.integer("jpeg_quality", 82, lo=1, hi=100),
        avif_quality=t.integer("avif_quality", 55, lo=1, hi=100),
        # Measured at 1080 (18 MP photo, one core): effort 0 49 ms, 1 177 ms, 2 250 ms,
        # 4 2.5 s, file sizes within 3% of each other; WebP q80 81 ms. So 0.
        avif_effort=t.integer("avif_effort", 0, lo=0, hi=9),
        serve_originals=t.flag("serve_originals", False),
        workers=t.integer("workers", 2, lo=1, hi=64),
        worker_max_jobs=t.integer("worker_max_jobs", 200, lo=1),
        deadline_seconds=t.number("deadline_seconds", 30.0, lo=0.1),
        max_waiting=t.integer("max_waiting", 16, lo=0),
        wait_seconds=t.number("wait_seconds", 10.0, lo=0.1),
        ondemand_width_min=t.integer("ondemand_width_min", 100, lo=1, hi=16384),
        ondemand_width_max=t.integer("ondemand_width_max", 2400, lo=0, hi=16384),
        ondemand_width_step=t.integer("ondemand_width_step", 20, lo=1, hi=16384),
        ondemand_max_dpr=t.integer("ondemand_max_dpr", 3, lo=1, hi=4),
        transform_max_width=t.integer("transform_max_width", 4096, lo=1, hi=16384),
        transform_max_height=t.integer("transform_max_height", 4096, lo=1, hi=16384),
        transform_rate_per_minute=t.integer("transform_rate_per_minute", 60, lo=1),
    )
    if 0 < cfg.ondemand_width_max < cfg.ondemand_width_min:
        raise ConfigError(t.key("ondemand_width_max"),
                          "must be 0 (off) or at least transcode.ondemand_width_min")
    t.done()
    return cfg


def _edge_settings(t: Table) -> tuple[EdgeSettings, Listener]:
    cfg = EdgeSettings(
        cache_root=Path(t.text("cache_root", "var/cache")),
        cache_bytes=t.integer("cache_bytes", 1 << 30, lo=1 << 20),
        memory_bytes=t.integer("memory_bytes", 256 << 20, lo=0),
        memory_object_bytes=t.integer("memory_object_bytes", 1 << 20, lo=0),
        negative_ttl=t.number("negative_ttl", 10.0),
        origin_timeout=t.number("origin_timeout", 5.0, lo=0.05),
        purge_poll_seconds=t.number("purge_poll_seconds", 10.0, lo=0.05),
        origin_probe_seconds=t.number("origin_probe_seconds", 60.0, lo=0.5),
        purge_follow_seconds=t.number("purge_follow_seconds", 20.0, lo=0.1),
        purge_retention_seconds=t.number("purge_retention_seconds", 7 * 86400.0, lo=1.0),
        workers=t.integer("workers", 1, lo=1, hi=64),
        access_log=t.text("access_log", "misses", choices=("all", "misses")),
        cors_allow_origin=_cors(t),
        idle_timeout=t.number("idle_timeout", 20.0, lo=0.1),
        connection_buffer_bytes=t.integer("connection_buffer_bytes", 64 << 10, lo=1024),
        send_timeout=t.number("send_timeout", 30.0, lo=0.1),
        trusted_proxies=_networks(t, "trusted_proxies"),
        front_door=t.flag("front_door", True),
    )
    # Defaults for every node: a shared certificate (a wildcard) and where the admin binds.
    cert, key = _tls_paths(t)
    defaults = Listener(tls_cert=cert, tls_key=key,
                        admin_host=t.text("admin_host", "127.0.0.1"),
                        trusted_proxies=cfg.trusted_proxies)
    t.done()
    return cfg, defaults


def _cors(t: Table) -> str:
    value = t.get_raw("cors_allow_origin", "*")
    if not isinstance(value, str) or not (value in ("*", "") or re.fullmatch(
            r"https?://[A-Za-z0-9.-]+(:\d{1,5})?", value)):
        raise ConfigError(t.key("cors_allow_origin"),
                          f'must be "*", "" or one origin like https://example.com; got {value!r}')
    return value


def _edge_node(t: Table, defaults: EdgeSettings, listen: Listener) -> EdgeNode:
    t.only("name", "region", "host", "port", "url", "cache_dir", "cache_bytes", "memory_bytes",
           "workers", "tls_cert", "tls_key", "admin_host", "admin_port", "admin_url",
           "trusted_proxies")
    name = t.text("name")
    if not NAME_RE.fullmatch(name):
        raise ConfigError(t.key("name"), f"must match {NAME_RE.pattern}, got {name!r}")
    host = t.text("host", "127.0.0.1")
    port = t.integer("port", lo=1, hi=65535)
    listener, url = _listener(t, host, port, listen)
    node = EdgeNode(
        name=name,
        region=t.text("region"),
        host=host,
        port=port,
        url=url,
        listener=listener,
        cache_dir=Path(t.text("cache_dir", str(defaults.cache_root / name))),
        cache_bytes=t.integer("cache_bytes", defaults.cache_bytes, lo=1 << 20),
        memory_bytes=t.integer("memory_bytes", defaults.memory_bytes, lo=0),
        workers=t.integer("workers", defaults.workers, lo=1, hi=64),
    )
    t.done()
    return node


def _cidr(t: Table, value: str, index: int) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError:
        raise ConfigError(f"{t.key('cidrs')}[{index}]", f"is not a CIDR: {value!r}") from None


def _regions(tables: list[Table], edges: list[EdgeNode]) -> tuple[Region, ...]:
    regions: list[Region] = []
    for t in tables:
        t.only("name", "lat", "lon", "countries", "cidrs", "shield")
        name = t.text("name")
        if not NAME_RE.fullmatch(name):
            raise ConfigError(t.key("name"), f"must match {NAME_RE.pattern}, got {name!r}")
        if any(r.name == name for r in regions):
            raise ConfigError(t.key("name"), f"duplicate region {name!r}")
        countries = t.texts("countries", [])
        for i, c in enumerate(countries):
            if not COUNTRY_RE.fullmatch(c):
                raise ConfigError(f"{t.key('countries')}[{i}]", f"not ISO 3166 alpha-2: {c!r}")
        lat, lon = t.number("lat", lo=-90.0), t.number("lon", lo=-180.0)
        if lat > 90 or lon > 180:
            raise ConfigError(t.key("lat" if lat > 90 else "lon"), "out of range")
        cidrs = tuple(_cidr(t, c, i) for i, c in enumerate(t.texts("cidrs", [])))
        mine = tuple(e for e in edges if e.region == name)
        if not mine:
            raise ConfigError(t.key("name"), f"region {name!r} has no edges")
        shield = t.text("shield", None)
        regions.append(Region(name, lat, lon, countries, cidrs, mine, shield))
        t.done()
    if not regions:
        raise ConfigError("regions", "at least one region is required")
    known = {r.name for r in regions}
    _check_shields(regions, known)
    seen: set[str] = set()
    for i, e in enumerate(edges):
        if e.region not in known:
            raise ConfigError(f"edges[{i}].region", f"unknown region {e.region!r}")
        if e.name in seen:
            raise ConfigError(f"edges[{i}].name", f"duplicate edge {e.name!r}")
        seen.add(e.name)
    countries_seen: dict[str, str] = {}
    for r in regions:
        for c in r.countries:
            if c in countries_seen:
                where = f"{countries_seen[c]} and {r.name}"
                raise ConfigError("regions.countries", f"{c} is in {where}")
            countries_seen[c] = r.name
    return tuple(regions)


def _check_shields(regions: list[Region], known: set[str]) -> None:
    shields = {r.name: r.shield for r in regions}
    for i, r in enumerate(regions):
        key = f"regions[{i}].shield"
        if r.shield is None:
            continue
        if r.shield not in known:
            raise ConfigError(key, f"unknown region {r.shield!r}")
        if r.shield == r.name:
            raise ConfigError(key, "a region cannot be its own shield")
        # One level only: a shield's edges fill from the origin, so a request can cross
        # at most one region boundary and edges whose configs disagree cannot loop.
        if shields[r.shield] is not None:
            raise ConfigError(key, f"{r.shield!r} has a shield itself; shields do not chain")


def _router(t: Table, regions: tuple[Region, ...]) -> RouterConfig:
    host = t.text("host", "127.0.0.1")
    port = t.integer("port", 8000, lo=0, hi=65535)
    default_region = t.text("default_region", regions[0].name)
    if default_region not in {r.name for r in regions}:
        raise ConfigError(t.key("default_region"), f"unknown region {default_region!r}")
    listener, url = _listener(t, host, port, Listener())
    cfg = RouterConfig(
        host=host,
        port=port,
        url=url,
        listener=listener,
        default_region=default_region,
        probe_interval=t.number("probe_interval", 1.0, lo=0.05),
        probe_timeout=t.number("probe_timeout", 0.5, lo=0.01),
        fall=t.integer("fall", 2, lo=1, hi=100),
        rise=t.integer("rise", 2, lo=1, hi=100),
    )
    t.done()
    return cfg


def _networks(t: Table, name: str) -> tuple[Network, ...]:
    out: list[Network] = []
    for i, value in enumerate(t.texts(name, [])):
        try:
            out.append(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise ConfigError(f"{t.key(name)}[{i}]", f"is not an address or CIDR: {value!r}"
                              ) from None
    return tuple(out)


def _tls_paths(t: Table, defaults: Listener = PLAIN) -> tuple[Path | None, Path | None]:
    cert, key = t.text("tls_cert", None), t.text("tls_key", None)
    if (cert is None) != (key is None):
        raise ConfigError(t.key("tls_key" if key is None else "tls_cert"),
                          "is required with " + ("tls_cert" if key is None else "tls_key"))
    if cert is None:
        return defaults.tls_cert, defaults.tls_key
    return Path(cert), Path(key)


def _listener(t: Table, host: str, port: int, defaults: Listener) -> tuple[Listener, str]:
    """The service's TLS, admin listener and trusted proxies, and its URL (https:// with
    TLS: a given http:// URL is refused rather than silently wrong)."""
    cert, key = _tls_paths(t, defaults)
    scheme = "https" if cert is not None else "http"
    url = t.text("url", f"{scheme}://{host}:{port}").rstrip("/")
    if not url.startswith(f"{scheme}://"):
        raise ConfigError(t.key("url"), f"must start with {scheme}:// "
                          + ("(tls_cert is set)" if cert else "(no tls_cert)"))
    admin_host = t.text("admin_host", defaults.admin_host)
    admin_port = t.integer("admin_port", None, lo=1, hi=65535)
    if admin_port is not None and admin_port == port:
        raise ConfigError(t.key("admin_port"), "must differ from port")
    admin_url = t.text("admin_url", None)
    if admin_url is None:
        admin_url = f"{scheme}://{admin_host}:{admin_port}" if admin_port else url
    elif not admin_url.startswith(f"{scheme}://"):
        raise ConfigError(t.key("admin_url"), f"must start with {scheme}://")
    proxies = _networks(t, "trusted_proxies")
    if not t.has("trusted_proxies"):  # an edge node: the [edge] table's list
        proxies = defaults.trusted_proxies
    return Listener(cert, key, admin_host, admin_port, admin_url.rstrip("/"), proxies), url


def _with_public_base(ingest: IngestConfig, router: RouterConfig) -> IngestConfig:
    from dataclasses import replace

    return replace(ingest, public_base_url=(ingest.public_base_url or router.url).rstrip("/"))


def _check_ports(cfg: Config) -> None:
    taken: dict[tuple[str, int], str] = {}
    entries = [("ingest.port", cfg.ingest.host, cfg.ingest.port)]
    entries.append(("router.port", cfg.router.host, cfg.router.port))
    entries += [(f"edges.{e.name}.port", e.host, e.port) for e in cfg.edges]
    listeners = [("ingest", cfg.ingest.listener), ("router", cfg.router.listener)]
    listeners += [(f"edges.{e.name}", e.listener) for e in cfg.edges]
    entries += [(f"{key}.admin_port", ls.admin_host, ls.admin_port)
                for key, ls in listeners if ls.admin_port is not None]
    for key, host, port in entries:
        if port == 0:  # 0 = any free port, chosen at bind time (tests)
            continue
        if (host, port) in taken:
            raise ConfigError(key, f"port {port} is already used by {taken[(host, port)]}")
        taken[(host, port)] = key
