"""Writes docs/config.md, the configuration reference, from the loader itself.

The keys, their types, defaults and bounds are not listed by hand: the loader is run on a
minimal config while every typed read of `config.table.Table` is recorded, so a key the
loader accepts is a key this script sees. Only the meanings are written here; a key without
one stops the script. `python -m scripts.gen_config_doc` writes the file; `--check` exits 1
when the file differs from what would be written (tests/test_docs.py runs the same check).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

from config.loader import parse_config
from config.table import Table

DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"
READS = {"text": "string", "integer": "integer", "number": "number", "flag": "boolean",
         "texts": "list of strings", "get_raw": "string", "table": "table",
         "tables": "array of tables"}
# The smallest config the loader accepts with one element in every array of tables, so each
# per-element key is read once.
MINIMAL: dict[str, Any] = {
    "transcode": {"variants": [{"name": "v", "width": 1}]},
    "regions": [{"name": "r", "lat": 0.0, "lon": 0.0}],
    "edges": [{"name": "e", "region": "r", "port": 1}],
    "secrets": {kind: [{"name": "k", "env": "K"}]
                for kind in ("api_keys", "admin_tokens", "signing_keys")},
}


@dataclass(frozen=True)
class Key:
    path: str  # "origin.kind", "edges[].port"
    kind: str  # one of READS' values
    default: object  # `REQUIRED` when the key must be given
    bounds: str


REQUIRED = object()


@contextmanager
def _recording() -> Iterator[list[Key]]:
    """Wrap every typed read of Table for the duration, recording what was read.
    (Patching our own class at generation time keeps the loader free of doc hooks.)"""
    keys: list[Key] = []
    originals = {name: getattr(Table, name) for name in READS}

    def wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def read(self: Table, key: str, *args: Any, **kw: Any) -> Any:
            default = args[0] if args else kw.get("default", REQUIRED)
            lo, hi = kw.get("lo"), kw.get("hi")
            bounds = (f"{lo} to {hi}" if hi is not None else f">= {lo}") if lo is not None else ""
            if "choices" in kw:
                bounds = "one of " + ", ".join(f'"{c}"' for c in kw["choices"])
            path = re.sub(r"\[\d+\]", "[]", self.key(key))
            keys.append(Key(path, READS[name], default, bounds))
            return fn(self, key, *args, **kw)
        return read

    with contextlib.ExitStack() as stack:
        for name, fn in originals.items():
            stack.enter_context(mock.patch.object(Table, name, wrap(name, fn)))
        yield keys


def accepted_keys() -> list[Key]:
    """Every key the loader reads, in the order it reads them (tables included)."""
    with _recording() as keys:
        parse_config(MINIMAL, {}, Path("minimal.toml"))
    seen: dict[str, Key] = {}
    for k in keys:
        seen.setdefault(k.path, k)
    return list(seen.values())


SECTIONS = {
    "": "Top level",
    "secrets": "`[secrets]`: where the secrets are",
    "secrets.api_keys[]": "`[[secrets.api_keys]]`: one per named upload API key",
    "secrets.admin_tokens[]": "`[[secrets.admin_tokens]]`: one per named admin token",
    "secrets.signing_keys[]": "`[[secrets.signing_keys]]`: one per named transform signing key",
    "origin": "`[origin]`: where originals, variants, manifests and the purge log live",
    "ingest": "`[ingest]`: the upload API",
    "transcode": "`[transcode]`: the ladder and its encoders",
    "transcode.variants[]": "`[[transcode.variants]]`: one per variant of the ladder",
    "edge": "`[edge]`: defaults for every edge node",
    "edges[]": "`[[edges]]`: one per edge node",
    "regions[]": "`[[regions]]`: one per region",
    "router": "`[router]`: the geo router",
}

# Meaning of each key, and where the default is derived from other keys, how.
MEANING: dict[str, str] = {
    "log_level": "Log level of every service (JSON lines on stderr).",
    "secrets.api_key_env": "Environment variable holding the upload API key (>= 16 chars); "
                           "a key named after the variable. Replaced by `api_keys` when "
                           "that is given (both: refused).",
    "secrets.admin_token_env": "Environment variable holding the admin token (purge, delete, "
                               "stats; >= 16 chars, not the API key). Replaced by "
                               "`admin_tokens` when that is given.",
    "secrets.api_keys": "Named upload API keys, every enabled one valid (rotation). "
                        "SIGHUP reloads them; see docs/operations.md. Absent: "
                        "`api_key_env` names the one key.",
    "secrets.admin_tokens": "Named admin tokens, every enabled one valid; edges and the CLI "
                            "send the first enabled one. Absent: `admin_token_env`.",
    "secrets.signing_keys": "Named keys of signed transform URLs, every enabled one valid; "
                            "`mediacdn sign` uses the first. Absent: `signing_key_envs`.",
    "secrets.api_keys[].name": "The key's name, said in logs and errors (`key=NAME`), never "
                               "its value; unique in its list.",
    "secrets.api_keys[].env": "Environment variable holding the key (>= 16 chars). Exactly one "
                              "of `env` and `file`.",
    "secrets.api_keys[].file": "File holding the key (whitespace around it dropped): a new "
                               "file (a Kubernetes Secret volume) is read on SIGHUP, a "
                               "variable cannot change in a running process.",
    "secrets.api_keys[].enabled": "`false`: revoked (401/403 from the next reload on), its "
                                  "value no longer needed.",
    "origin.kind": "`fs`: a directory (one host, or one shared volume); `s3`: an "
                   "S3-compatible bucket.",
    "origin.path": "Directory of the `fs` origin.",
    "origin.bucket": "Bucket of the `s3` origin (S3 bucket naming rules).",
    "origin.endpoint_url_env": "Environment variable that, when set, overrides `endpoint_url`.",
    "origin.endpoint_url": "S3 endpoint, `http(s)://host[:port]`; unset: AWS.",
    "origin.access_key_env": "Environment variable holding the S3 access key.",
    "origin.secret_key_env": "Environment variable holding the S3 secret key.",
    "origin.region": "S3 region name used for signing.",
    "origin.create_bucket": "Create the bucket at start when it does not exist.",
    "origin.connect_timeout": "Seconds to connect to S3.",
    "origin.read_timeout": "Seconds to wait for S3 to answer.",
    "origin.max_attempts": "botocore retries after a failed S3 call (botocore counts "
                           "retries: 3 means up to 4 tries).",
    "origin.max_pool_connections": "Connections kept to S3 per process.",
    "ingest.host": "Address the ingest API binds (`0.0.0.0` in a container).",
    "ingest.port": "Port of the ingest API (0: any free port).",
    "ingest.url": "Where the CLI and apps reach the ingest API. Default "
                  "`http://{host}:{port}`.",
    "ingest.public_base_url": "Base of the `url` of each variant in upload answers. Default: "
                              "`router.url`.",
    "ingest.max_bytes": "Largest upload body, checked while streaming (413 above).",
    "ingest.max_pixels": "Largest image, pixels summed over frames (422 above).",
    "ingest.max_dimension": "Largest width or height (422 above).",
    "ingest.max_frames": "Most frames of an animation (422 above).",
    "ingest.spool_bytes": "Upload bodies above this go to a temporary file, not memory.",
    "ingest.idle_timeout": "Seconds a connection may stay idle between requests.",
    "transcode.variants": "The ladder. Default: `w1080`, `w640`, `w320` (fit to width) and "
                          "`s150` (150x150, attention crop).",
    "transcode.variants[].name": "Variant name in URLs, `[a-z0-9][a-z0-9_-]{0,31}`, unique.",
    "transcode.variants[].crop": "`none`: fit to `width`, aspect kept, never upscaled; "
                                 "`centre` or `attention`: crop to `width` x `height`.",
    "transcode.variants[].height": "Height of a cropped variant (required with `crop`).",
    "transcode.variants[].max_height": "Optional, fit variants only: the height is capped too "
                                       "(aspect kept), so very tall sources stay bounded.",
    "transcode.variants[].width": "Width in pixels.",
    "transcode.formats": "Formats of every variant among `avif`, `webp`, `jpg`; negotiation "
                         "prefers avif > webp > jpg.",
    "transcode.webp_quality": "WebP quality.",
    "transcode.jpeg_quality": "JPEG quality.",
    "transcode.avif_quality": "AVIF quality.",
    "transcode.avif_effort": "AVIF encoder effort (0 fastest; 4 takes seconds per image).",
    "transcode.serve_originals": "Edges also serve `/i/{id}/original` (checked against the id).",
    "transcode.workers": "Transcode worker processes of the ingest (one image each at a time).",
    "transcode.worker_max_jobs": "A worker is replaced after this many images.",
    "transcode.deadline_seconds": "Time limit to build one image's ladder (a worker past twice "
                                  "this is killed).",
    "edge.cache_root": "Parent directory of each edge's cache directory.",
    "edge.cache_bytes": "Disk cache size per edge (LRU; kept across restarts).",
    "edge.memory_bytes": "Hot in-memory tier per edge worker process.",
    "edge.memory_object_bytes": "Objects larger than this are not kept in the hot tier.",
    "edge.negative_ttl": "Seconds a 404 for an unknown id or variant is remembered.",
    "edge.origin_timeout": "Seconds a miss may wait for its upstream fetch (then 504).",
    "edge.purge_poll_seconds": "Only while ingest cannot be reached: how often an edge reads "
                               "new purge records from the origin's log instead.",
    "edge.origin_probe_seconds": "Readiness: while the origin answers, an edge probes it "
                                 "(one HEAD bucket) only if no fill or probe proved it for "
                                 "this long; once it fails, every 5 s until it answers.",
    "edge.purge_follow_seconds": "Heartbeat of an edge's purge stream to ingest: a ping this "
                                 "often; no answer within half of it and the edge reconnects "
                                 "(or reads the origin's log).",
    "edge.purge_retention_seconds": "Age after which the ingest compacts purge records; an "
                                    "edge that missed compacted records drops its whole "
                                    "cache on return.",
    "edge.connection_buffer_bytes": "Unsent bytes a connection may hold before the edge "
                                    "stops reading its further requests until the client "
                                    "reads (a client that never reads cannot hoard memory).",
    "edge.send_timeout": "Close a connection whose client takes no bytes for this long "
                         "(TCP_USER_TIMEOUT on Linux).",
    "origin.call_timeout": "Seconds for one S3 call, all of its max_attempts tries "
                           "included.",
    "ingest.spool_dir": "Where upload bodies over spool_bytes are spooled (one directory "
                        "per ingest process, removed when it dies); default: the temp dir.",
    "ingest.purge_ack_seconds": "How long a purge or delete waits for every connected edge "
                                "to apply it before answering (the answer names the ones "
                                "that had not).",
    "ingest.peers": "Every ingest replica's admin URL (its own may be listed; a host name "
                    "resolving to several addresses, such as a Kubernetes headless Service, "
                    "counts as each). A purge or delete answered by one replica then waits "
                    "for the edges following the others too.",
    "ingest.log_poll_seconds": "How often ingest re-reads the purge log at the origin, for "
                               "records other ingest replicas wrote.",
    "ingest.origin_deadline_seconds": "Each step of an upload that talks to the origin "
                                      "(lookup, store) finishes within this, else 503.",
    "transcode.max_waiting": "Uploads that may wait for a free transcode worker; more get "
                             "503 with Retry-After.",
    "transcode.wait_seconds": "How long an upload may wait for a free worker before 503.",
    "transcode.ondemand_width_min": "Smallest `N` of a width on demand, "
                                    "`/i/{id}/w{N}[@{D}x].{ext}`.",
    "transcode.ondemand_width_max": "Largest `N` of a width on demand; `0` turns widths on "
                                    "demand off (then only the ladder's names are served).",
    "transcode.ondemand_width_step": "`N` must be `ondemand_width_min` plus a multiple of this; "
                                     "any other width answers 404, nothing derived.",
"secrets.signing_key_envs": "Environment variables holding the keys of signed transform "
                                "URLs (>= 16 chars each); every one set is valid at once, for "
                                "rotation. `mediacdn up` generates the first when none is set. "
                                "Replaced by `signing_keys` when that is given.",
    "transcode.transform_max_width": "Largest `w` of a signed transform; more is 400.",
    "transcode.transform_max_height": "Largest `h` of a signed transform; more is 400.",
    "transcode.transform_rate_per_minute": "Signed transforms of one image derived per minute "
                                           "at most (ingest); more is 429 with Retry-After.",
    "transcode.ondemand_max_dpr": "Largest `D` of `@{D}x`: the output is `N` x `D` pixels wide, "
                                  "never wider than the source.",
    "edge.workers": "Processes per edge node, sharing its port (SO_REUSEPORT) and cache.",
    "edge.front_door": "Answer plain keep-alive HTTP/1.1 GETs of objects in the memory tier "
    "in the connection's protocol, before aiohttp (strict llhttp parse via httptools, "
    "pre-rendered head, body by sendfile; never sendfile on TLS); anything else, and the rest "
    "of that connection, goes to aiohttp byte for byte. `false`: aiohttp answers everything.",
    "edge.access_log": "`misses`: log misses and errors only; `all`: also every hit.",
    "edge.cors_allow_origin": '`"*"`, one origin (`https://example.com`), or `""` for no '
                              "CORS headers.",
    "edge.idle_timeout": "Seconds a connection may stay idle between requests.",
    "edges": "The edge nodes; each belongs to one region.",
    "edges[].name": "Node name, `[a-z0-9][a-z0-9_-]{0,31}`, unique (`mediacdn edge --node`).",
    "edges[].host": "Address the node binds.",
    "edges[].port": "Port the node binds.",
    "edges[].region": "Name of its `[[regions]]`.",
    "edges[].url": "Where browsers and the other edges reach it: redirects point here. "
                   "Default `http(s)://{host}:{port}`.",
    "edges[].cache_dir": "Its disk cache directory. Default `{edge.cache_root}/{name}`.",
    "edges[].cache_bytes": "Default `edge.cache_bytes`.",
    "edges[].memory_bytes": "Default `edge.memory_bytes`.",
    "edges[].workers": "Default `edge.workers`.",
    "regions": "The regions (at least one), each with at least one edge.",
    "regions[].name": "Region name, unique.",
    "regions[].countries": "ISO 3166 alpha-2 codes routed here (each in one region only).",
    "regions[].lat": "Latitude: failover goes to the nearest region.",
    "regions[].lon": "Longitude.",
    "regions[].cidrs": "Client networks routed here (the most specific match wins).",
    "regions[].shield": "Another region whose owner edge this region's owner edges fill "
                        "from before the origin (checked like any peer: blake3 and size "
                        "from the origin's HEAD), so the origin sees one GET per object "
                        "across shielded regions. One level: a shield has no shield itself.",
    "router.host": "Address the router binds.",
    "router.port": "Port of the router (0: any free port).",
    "router.default_region": "Region when neither `?region=`, country nor address decide. "
                             "Default: the first region.",
    "router.url": "Public URL of the router. Default `http://{host}:{port}`.",
    "router.probe_interval": "Seconds between health probes of each edge's `/healthz`.",
    "router.probe_timeout": "Seconds a probe may take.",
    "router.fall": "Failed probes in a row that mark an edge down.",
    "router.rise": "Good probes in a row that mark it up again.",
    "tls_ca": "CA bundle (PEM) that mediacdn's own clients (edge to edge and to ingest, "
              "router probes, the CLI) verify HTTPS services with. Default: the system "
              "store.",
}
_SERVICES = {"ingest": "the ingest API", "router": "the router", "edge": "every edge node",
             "edges[]": "this edge node"}
for _svc, _what in _SERVICES.items():
    MEANING[f"{_svc}.tls_cert"] = (
        f"PEM certificate (chain) of {_what}; with `tls_key` its port speaks HTTPS only and "
        "its `url` starts with `https://`. Reloaded on SIGHUP (new connections get the new "
        "one; open ones keep going)." + (" Default `edge.tls_cert`." if _svc == "edges[]"
                                         else ""))
    MEANING[f"{_svc}.tls_key"] = "PEM private key for `tls_cert`."
    MEANING[f"{_svc}.admin_host"] = (f"Address the admin listener of {_what} binds "
                                      "(loopback by default).")
    if _svc != "edge":
        MEANING[f"{_svc}.admin_port"] = (
            f"Set: `/_admin/*`, `/metrics` and `/_internal/*` of {_what} are served on this "
            "port only (404 on the public port). Unset: on the public port.")
        MEANING[f"{_svc}.admin_url"] = (
            "Where mediacdn's clients reach the admin listener (the CLI, and edges for "
            "ingest's purge stream). Default `{scheme}://{admin_host}:{admin_port}`, or `url` "
            "without an admin_port.")
    MEANING[f"{_svc}.trusted_proxies"] = (
        "Addresses or CIDRs of load balancers in front of " + _what + ": only from these "
        "are `X-Forwarded-For` / `Forwarded` believed for the client address (the right-most "
        "address not itself trusted). Empty: the headers are ignored."
        + (" Default `edge.trusted_proxies`." if _svc == "edges[]" else ""))
# Defaults computed from other keys: shown as the rule, not as the minimal config's value.
DERIVED = {"ingest.url", "ingest.public_base_url", "edges[].url", "edges[].cache_dir",
           "edges[].cache_bytes", "edges[].memory_bytes", "edges[].workers",
           "router.default_region", "router.url", "transcode.variants", "ingest.admin_url",
           "router.admin_url", "edges[].admin_url", "edges[].tls_cert", "edges[].tls_key",
           "edges[].admin_host", "edges[].trusted_proxies"}


def _section(path: str) -> str:
    head, _, _ = path.rpartition(".")
    return head


def _default(k: Key) -> str:
    if k.path in DERIVED:
        return "(see meaning)"
    if k.default is REQUIRED:
        return "required"
    if k.default is None:
        return "unset"
    if isinstance(k.default, bool):
        return f"`{str(k.default).lower()}`"
    if isinstance(k.default, str):
        return f'`"{k.default}"`'
    if isinstance(k.default, list | tuple):
        return "`[" + ", ".join(f'"{v}"' for v in k.default) + "]`"
    if isinstance(k.default, int) and k.path.endswith("bytes") and k.default >= 1 << 20:
        return f"`{k.default}` ({_size(k.default)})"
    if isinstance(k.default, float) and k.default.is_integer():
        return f"`{int(k.default)}`"
    return f"`{k.default}`"


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20)):
        if n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n / (1 << 20):.1f} MiB"


HEADER = """# Configuration reference

Generated by `python -m scripts.gen_config_doc` from the loader (`config/loader.py`,
`config/schema.py`): every key it accepts, with its type, default and bounds. Do not edit by
hand; add the meaning of a new key in `scripts/gen_config_doc.py` and run it again
(`tests/test_docs.py` fails when this file is out of date or a key is missing).

`mediacdn` reads `--config PATH`, else `$MEDIACDN_CONFIG`, else `config/local.toml` in the
directory it starts in, else the packaged default. Relative paths are taken from the directory
`mediacdn` starts in. An unknown key, a wrong type or a value out of bounds is refused at start
with one line naming the key (`edge.cache_bytes: must be >= 1048576, got 5`), exit 2.
Sizes are in bytes, durations in seconds.

Secrets are never in the file: it names environment variables (`secrets.*_env`,
`origin.*_env`, `env` of a named key) or files (`file` of a named key). `mediacdn up`
generates random API key and admin token when their variables are unset; `mediacdn ingest`,
`mediacdn edge` and `mediacdn router` refuse to start when an enabled key they check has no
value. SIGHUP reloads `[secrets]` (docs/operations.md, "Keys: rotation and revocation").
"""

# The three kinds of named key take the same keys.
MEANING.update({f"secrets.{kind}[].{key}": MEANING[f"secrets.api_keys[].{key}"]
                for kind in ("admin_tokens", "signing_keys")
                for key in ("name", "env", "file", "enabled")})


def render() -> str:
    keys = accepted_keys()
    missing = [k.path for k in keys if k.path not in MEANING and k.kind != "table"]
    if missing:
        raise SystemExit("gen_config_doc: no meaning written for " + ", ".join(missing))
    out = [HEADER]
    by_section: dict[str, list[Key]] = {}
    for k in keys:
        if k.kind == "table":
            continue
        by_section.setdefault(_section(k.path), []).append(k)
    for section, title in SECTIONS.items():
        rows = by_section.pop(section, [])
        if not rows:
            continue
        out.append(f"\n## {title}\n\n| key | type | default | bounds | meaning |\n"
                   "|---|---|---|---|---|\n")
        for k in rows:
            name = k.path.rpartition(".")[2]
            out.append(f"| `{name}` | {k.kind} | {_default(k)} | {k.bounds} | "
                       f"{MEANING[k.path]} |\n")
    if by_section:
        raise SystemExit(f"gen_config_doc: no section title for {', '.join(by_section)}")
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--check", action="store_true", help="exit 1 if docs/config.md is stale")
    args = p.parse_args(argv)
    text = render()
    if args.check:
        if DOC.read_text(encoding="utf-8") != text:
            print(f"{DOC} is out of date: run python -m scripts.gen_config_doc",
                  file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
