"""The config's shape: one frozen dataclass per area. Values are validated by `loader`."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

FORMATS = ("avif", "webp", "jpg")
OriginKind = Literal["fs", "s3"]
CropMode = Literal["none", "centre", "attention"]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Listener:
    """How one service is reached: TLS on its port, and its admin surface apart."""

    tls_cert: Path | None = None  # PEM; with tls_key, the port speaks HTTPS only
    tls_key: Path | None = None
    admin_host: str = "127.0.0.1"
    admin_port: int | None = None  # set: /_admin/*, /metrics, /_internal/* only there
    admin_url: str = ""  # where mediacdn's clients reach the admin surface ("": url)
    trusted_proxies: tuple[Network, ...] = ()  # peers whose X-Forwarded-For is believed

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None


PLAIN = Listener()  # plain HTTP, no admin listener, no trusted proxies


KeyKind = Literal["api_keys", "admin_tokens", "signing_keys"]
KEY_KINDS: tuple[KeyKind, ...] = ("api_keys", "admin_tokens", "signing_keys")


@dataclass(frozen=True)
class NamedKey:
    """One secret by name: logs and errors say `name` and `source`, never `value`."""

    name: str
    source: str  # "env MEDIACDN_API_KEY" or "file /run/secrets/api-key"
    config_key: str  # where it is configured: "secrets.api_keys[0]", "secrets.api_key_env"
    value: str | None = field(default=None, repr=False)  # None: see `problem`
    enabled: bool = True  # false: revoked (refused; its value is not even needed)
    problem: str = ""  # why there is no value: "is not set", "cannot be read: ..."
    env: str | None = None  # the environment variable, when it comes from one
    required: bool = True  # False: legacy signing_key_envs, unset means "not in use"

    @property
    def usable(self) -> bool:
        return self.enabled and self.value is not None


@dataclass(frozen=True)
class Secrets:
    """Every named key of each kind, in config order. A service checks against all usable
    ones; mediacdn's own clients (edge to ingest, the CLI) send the first usable one."""

    api_keys: tuple[NamedKey, ...] = ()
    admin_tokens: tuple[NamedKey, ...] = ()
    signing_keys: tuple[NamedKey, ...] = ()

    def of(self, kind: KeyKind) -> tuple[NamedKey, ...]:
        keys: tuple[NamedKey, ...] = getattr(self, kind)
        return keys

    def usable(self, kind: KeyKind) -> tuple[NamedKey, ...]:
        return tuple(k for k in self.of(kind) if k.usable)

    def first(self, kind: KeyKind) -> NamedKey | None:
        return next(iter(self.usable(kind)), None)

    @property
    def api_key(self) -> str | None:
        k = self.first("api_keys")
        return k.value if k else None

    @property
    def admin_token(self) -> str | None:
        k = self.first("admin_tokens")
        return k.value if k else None

    @property
    def signing_values(self) -> tuple[str, ...]:
        return tuple(k.value for k in self.usable("signing_keys") if k.value is not None)

    def unset_hint(self, kind: KeyKind) -> str:
        """What to set when no key of `kind` is usable, e.g. "MEDIACDN_ADMIN_TOKEN"."""
        enabled = [k for k in self.of(kind) if k.enabled]
        if not enabled:
            return f"an enabled key in secrets.{kind}"
        return ", ".join(k.env or f"{k.config_key} ({k.source})" for k in enabled)


@dataclass(frozen=True)
class OriginConfig:
    kind: OriginKind
    path: Path
    bucket: str
    endpoint_url: str | None
    region: str
    access_key: str | None
    secret_key: str | None
    create_bucket: bool
    connect_timeout: float
    read_timeout: float
    max_attempts: int  # tries per call, the first included
    max_pool_connections: int
    call_timeout: float = 15.0  # one S3 call, every attempt included


@dataclass(frozen=True)
class Variant:
    name: str
    width: int
    height: int | None
    crop: CropMode
    max_height: int | None = None  # fit variants: the height is capped too (very tall sources)

    @property
    def is_square_crop(self) -> bool:
        return self.height is not None and self.crop != "none"


@dataclass(frozen=True)
class TranscodeConfig:
    variants: tuple[Variant, ...]
    formats: tuple[str, ...]
    webp_quality: int
    jpeg_quality: int
    avif_quality: int
    avif_effort: int
    serve_originals: bool
    workers: int  # transcode worker processes
    worker_max_jobs: int  # a worker is replaced after this many images
    deadline_seconds: float
    max_waiting: int  # uploads that may wait for a free worker; beyond, 503 + Retry-After
    wait_seconds: float  # the longest an upload waits for a free worker
    # Widths on demand, `w{N}[@{D}x]`: N in range(min, max + 1, step), D in 1..max_dpr.
    # max 0 turns them off.
    ondemand_width_min: int = 100
    ondemand_width_max: int = 2400
    ondemand_width_step: int = 20
    ondemand_max_dpr: int = 3
    # Signed transforms: the largest w and h, and derivations per image per minute.
    transform_max_width: int = 4096
    transform_max_height: int = 4096
    transform_rate_per_minute: int = 60

    def variant(self, name: str) -> Variant | None:
        for v in self.variants:
            if v.name == name:
                return v
        return None


@dataclass(frozen=True)
class IngestConfig:
    host: str
    port: int
    url: str  # where operators and apps reach it
    public_base_url: str
    max_bytes: int
    max_pixels: int
    max_dimension: int
    max_frames: int
    spool_bytes: int
    spool_dir: Path | None  # big bodies are spooled under it; None: the system temp dir
    idle_timeout: float
    purge_ack_seconds: float  # how long a purge or delete waits for connected edges
    log_poll_seconds: float  # how often ingest re-reads the purge log at the origin
    origin_deadline_seconds: float  # overall, per upload phase that talks to the origin
    listener: Listener = field(default_factory=Listener)
    # Every ingest replica's admin URL (a name resolving to several addresses: each one): a
    # purge answered by one replica waits for the edges following the others too.
    peers: tuple[str, ...] = ()


@dataclass(frozen=True)
class EdgeSettings:
    """Defaults every edge node takes unless its own table overrides them."""

    cache_root: Path
    cache_bytes: int
    memory_bytes: int
    memory_object_bytes: int
    negative_ttl: float
    origin_timeout: float
    purge_poll_seconds: float  # polling the origin's log: only while ingest is unreachable
    purge_follow_seconds: float  # the purge stream's heartbeat: a silent ingest is left
    purge_retention_seconds: float
    # While the origin answers: probe it only if nothing (a fill, a probe) proved it for this
    # long. 1,000 idle edges probing every 5 s were 200 requests/s for nothing.
    origin_probe_seconds: float
    workers: int
    access_log: str  # "all", or "misses" (misses and errors only: a line per hit costs)
    cors_allow_origin: str  # "*" (default), one origin, or "" for no CORS headers
    idle_timeout: float  # close a connection that sends no whole request for this long
    # Past this many bytes waiting in a connection's write buffer, read no further request
    # on it until the client takes them (the memory one connection may hold, plus one
    # response).
    connection_buffer_bytes: int
    send_timeout: float  # drop a connection whose client takes nothing for this long
    trusted_proxies: tuple[Network, ...] = ()
    # Plain keep-alive GETs of hot keys answered in the connection's protocol, before
    # aiohttp (edge/frontdoor.py); everything else goes to aiohttp unchanged.
    front_door: bool = True


@dataclass(frozen=True)
class EdgeNode:
    name: str
    region: str
    host: str
    port: int
    url: str
    cache_dir: Path
    cache_bytes: int
    memory_bytes: int
    workers: int
    listener: Listener = field(default_factory=Listener)


@dataclass(frozen=True)
class Region:
    name: str
    lat: float
    lon: float
    countries: tuple[str, ...]
    cidrs: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    edges: tuple[EdgeNode, ...]
    shield: str | None = None  # a region whose owner edges fill ours before the origin


@dataclass(frozen=True)
class RouterConfig:
    host: str
    port: int
    url: str
    default_region: str
    probe_interval: float
    probe_timeout: float
    fall: int
    rise: int
    listener: Listener = field(default_factory=Listener)


@dataclass(frozen=True)
class Config:
    path: Path
    secrets: Secrets
    origin: OriginConfig
    ingest: IngestConfig
    transcode: TranscodeConfig
    edge: EdgeSettings
    regions: tuple[Region, ...]
    router: RouterConfig
    log_level: str
    tls_ca: Path | None = None  # CA bundle mediacdn's own clients verify with (None: system)

    @property
    def edges(self) -> tuple[EdgeNode, ...]:
        return tuple(e for r in self.regions for e in r.edges)

    def edge_node(self, name: str) -> EdgeNode | None:
        for e in self.edges:
            if e.name == name:
                return e
        return None

    def region(self, name: str) -> Region | None:
        for r in self.regions:
            if r.name == name:
                return r
        return None
