"""Operator commands: upload, purge, delete, stats, warm. Thin: the same config loader and
key layout as the services, and their HTTP APIs. Every target's failure is named; exit 1
if any failed."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from common.hashing import Hasher
from common.tls import client_context
from config import Config, EdgeNode, load_config
from config.schema import KeyKind
from edge.rendezvous import owner
from scripts.cli import EXIT_FAILED, EXIT_OK, UsageError, environ

TIMEOUT_SECONDS, CONNECT_SECONDS = 10.0, 2.0
TIMEOUT = aiohttp.ClientTimeout(total=TIMEOUT_SECONDS, connect=CONNECT_SECONDS)
Result = dict[str, Any]


def _cfg(args: argparse.Namespace) -> Config:
    return load_config(args.config, environ())


def _session(cfg: Config, timeout: aiohttp.ClientTimeout = TIMEOUT) -> aiohttp.ClientSession:
    """Verifies HTTPS services with the config's CA bundle (tls_ca), else the system's."""
    return aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(
        ssl=client_context(cfg.tls_ca)))


def _token(cfg: Config, admin: bool) -> str:
    # The first enabled key with a value, as the edges do (docs/operations.md, rotation).
    kind: KeyKind = "admin_tokens" if admin else "api_keys"
    value = cfg.secrets.admin_token if admin else cfg.secrets.api_key
    if not value:
        raise UsageError(f"{cfg.secrets.unset_hint(kind)} is not set: export it (mediacdn up "
                         "prints the generated one)")
    return value


def _edges(cfg: Config, region: str | None) -> list[EdgeNode]:
    if region is None:
        return list(cfg.edges)
    r = cfg.region(region)
    if r is None:
        raise UsageError(f"no region {region!r}; regions: "
                         + ", ".join(x.name for x in cfg.regions))
    return list(r.edges)


async def _problem(r: aiohttp.ClientResponse) -> str:
    try:
        body = await r.json(content_type=None)
        return f"HTTP {r.status}: {body.get('detail') or body.get('title')}"
    except (ValueError, AttributeError):
        return f"HTTP {r.status}"


def _fail(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"unreachable ({exc.os_error.strerror or exc.os_error})"
    return f"{type(exc).__name__}: {exc}"


def _report(args: argparse.Namespace, results: list[Result], line: Callable[[Result], str],
            extra: Result | None = None) -> int:
    """Done targets on stdout, each failure once on stderr (not also on stdout: a terminal
    shows both, and the same error twice reads as two)."""
    failed = [r for r in results if not r["ok"]]
    if args.json:
        print(json.dumps({"results": results, **(extra or {}), "failed": len(failed)}))
    else:
        for r in results:
            if r["ok"]:
                print(line(r))
            else:
                sys.stderr.write(f"mediacdn: {line(r)}\n")
    return EXIT_FAILED if failed else EXIT_OK


# -- purge ----------------------------------------------------------------------------------


def _edge_results(edges: list[EdgeNode], applied: dict[str, str], seq: int) -> list[Result]:
    """One line per configured edge, from ingest's word on which ones applied record seq."""
    out: list[Result] = []
    for e in edges:
        state = applied.get(e.name)
        result: Result = {"target": e.name, "edge": e.name, "region": e.region, "seq": seq,
                          "ok": state == "applied"}
        if state == "pending":
            result["error"] = ("connected but had not applied it in time; it applies it "
                               "before it serves again")
        elif state in (None, "absent"):
            result["error"] = ("unreachable: not following ingest's purge stream; it applies "
                               "it before it serves again")
        out.append(result)
    return out


async def _ingest_call(session: aiohttp.ClientSession, method: str, url: str, token: str,
                       body: Result | None = None) -> tuple[int, Any]:
    async with session.request(method, url, json=body,
                               headers={"Authorization": f"Bearer {token}"}) as r:
        if r.status >= 400:
            raise IngestRefused(await _problem(r))
        return r.status, (await r.json() if r.status in (200, 202) else dict(r.headers))


class IngestRefused(Exception):
    pass


async def purge_everywhere(cfg: Config, edges: list[EdgeNode], ids: list[str],
                           purge_all: bool, region: str | None) -> list[Result]:
    """Ingest records the purge durably and answers once every connected edge applied it."""
    token = _token(cfg, admin=True)
    body: Result = {"all": True} if purge_all else {"ids": ids}
    if region:
        body["region"] = region
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_SECONDS + cfg.ingest.purge_ack_seconds,
                                    connect=CONNECT_SECONDS)
    async with _session(cfg, timeout) as session:
        try:
            _, answer = await _ingest_call(session, "POST",
                                           f"{cfg.ingest.listener.admin_url}/v1/purges",
                                           token, body)
        except (IngestRefused, aiohttp.ClientError, TimeoutError, OSError) as exc:
            error = str(exc) if isinstance(exc, IngestRefused) else _fail(exc)
            return [{"target": "ingest", "ok": False, "error": f"ingest {error}"}]
    return _edge_results(edges, answer.get("edges", {}), int(answer["seq"]))


def cmd_purge(args: argparse.Namespace) -> int:
    cfg = _cfg(args)
    edges = _edges(cfg, args.region)
    results = asyncio.run(purge_everywhere(cfg, edges, list(args.ids), bool(args.all),
                                           args.region))
    return _report(args, results, lambda r: (
        f"edge {r['edge']} {r['region']} ok applied seq={r['seq']}" if r["ok"]
        else f"{'edge ' + r['target'] if 'edge' in r else r['target']} FAILED {r['error']}"))


# -- delete ---------------------------------------------------------------------------------


async def _delete(cfg: Config, ids: list[str]) -> list[Result]:
    """Ingest removes the objects, records the delete and answers once connected edges
    applied it; the edges that had not are named."""
    token = _token(cfg, admin=True)
    results: list[Result] = []
    last_seq = 0
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_SECONDS + cfg.ingest.purge_ack_seconds,
                                    connect=CONNECT_SECONDS)
    admin_url = cfg.ingest.listener.admin_url
    async with _session(cfg, timeout) as session:
        for image_id in ids:
            result: Result = {"target": image_id, "id": image_id, "ok": False}
            try:
                _, headers = await _ingest_call(
                    session, "DELETE", f"{admin_url}/v1/images/{image_id}", token)
                result["ok"] = True
                last_seq = max(last_seq, int(headers.get("X-Purge-Seq", "0")))
            except IngestRefused as exc:
                result["error"] = str(exc)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                result["error"] = f"ingest {_fail(exc)}"
            results.append(result)
        if last_seq:  # records are applied in order: the last one speaks for all
            try:
                _, answer = await _ingest_call(
                    session, "GET", f"{admin_url}/v1/purges/{last_seq}", token)
            except (IngestRefused, aiohttp.ClientError, TimeoutError, OSError) as exc:
                error = str(exc) if isinstance(exc, IngestRefused) else _fail(exc)
                return [*results, {"target": "ingest", "ok": False, "error": error}]
            results += _edge_results(list(cfg.edges), answer.get("edges", {}), last_seq)
    return results


def cmd_delete(args: argparse.Namespace) -> int:
    cfg = _cfg(args)
    results = asyncio.run(_delete(cfg, list(args.ids)))
    return _report(args, results, lambda r: (
        (f"deleted {r['id']}" if "id" in r else f"edge {r['edge']} {r['region']} ok applied")
        if r["ok"] else f"{r['target']} FAILED {r['error']}"))


# -- stats ----------------------------------------------------------------------------------


STAT_COLUMNS = ("hits", "misses", "hit_ratio", "bytes_served", "cache_bytes", "cache_entries",
                "evictions", "origin_fetches", "errors")


async def _stats(cfg: Config, edges: list[EdgeNode]) -> list[Result]:
    token = _token(cfg, admin=True)

    async def one(session: aiohttp.ClientSession, e: EdgeNode) -> Result:
        result: Result = {"target": e.name, "edge": e.name, "region": e.region, "ok": False}
        try:
            async with session.get(f"{e.listener.admin_url}/_admin/stats",
                                   headers={"Authorization": f"Bearer {token}"}) as r:
                if r.status == 200:
                    result.update(ok=True, stats=await r.json())
                else:
                    result["error"] = await _problem(r)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            result["error"] = _fail(exc)
        return result

    async with _session(cfg) as session:
        return list(await asyncio.gather(*(one(session, e) for e in edges)))


def cmd_stats(args: argparse.Namespace) -> int:
    cfg = _cfg(args)
    results = asyncio.run(_stats(cfg, _edges(cfg, args.region)))
    ok = [r["stats"] for r in results if r["ok"]]
    totals = {k: sum(s[k] for s in ok) for k in STAT_COLUMNS if k != "hit_ratio"}
    served = totals["hits"] + totals["misses"]
    totals["hit_ratio"] = round(totals["hits"] / served, 4) if served else 0.0
    if args.json:
        return _report(args, results, str, {"totals": totals})
    if ok:  # no table at all when no edge answered: a row of zeros would be a lie
        header = f"{'edge':<14} {'region':<10} " + " ".join(f"{c:>14}" for c in STAT_COLUMNS)
        print(header)
        for r in results:
            if r["ok"]:
                s = r["stats"]
                print(f"{r['edge']:<14} {r['region']:<10} "
                      + " ".join(f"{s[c]:>14}" for c in STAT_COLUMNS))
        print(f"{'total':<14} {'':<10} " + " ".join(f"{totals[c]:>14}" for c in STAT_COLUMNS))
    failed = [r for r in results if not r["ok"]]
    for r in failed:
        sys.stderr.write(f"mediacdn: edge {r['edge']} FAILED {r['error']}\n")
    return EXIT_FAILED if failed else EXIT_OK


# -- warm -----------------------------------------------------------------------------------


async def _warm(cfg: Config, ids: list[str], region: str | None) -> list[Result]:
    regions = [r for r in cfg.regions if region is None or r.name == region]
    if not regions:
        raise UsageError(f"no region {region!r}")
    paths = [f"/i/{i}/{v.name}.{f}" for i in ids for v in cfg.transcode.variants
             for f in cfg.transcode.formats]
    results: list[Result] = []
    async with _session(cfg) as session:
        for r in regions:
            for image_id in ids:
                edge = owner(r.edges, image_id)
                mine = [p for p in paths if p.startswith(f"/i/{image_id}/")]
                result: Result = {"target": f"{edge.name} {image_id}", "edge": edge.name,
                                  "region": r.name, "id": image_id, "ok": False}
                try:
                    statuses = await asyncio.gather(*(_fetch_status(session, edge.url + p)
                                                      for p in mine))
                    bad = [f"{p.rsplit('/', 1)[1]}={s}" for p, s in zip(mine, statuses,
                                                                        strict=True)
                           if s != 200]
                    result.update(ok=not bad, variants=len(mine) - len(bad))
                    if all(st == 404 for st in statuses):
                        result["error"] = "no such image"
                    elif bad:
                        result["error"] = "HTTP " + ", ".join(bad)
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    result["error"] = _fail(exc)
                results.append(result)
    return results


async def _fetch_status(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url) as r:
        await r.read()
        return r.status


def cmd_warm(args: argparse.Namespace) -> int:
    cfg = _cfg(args)
    results = asyncio.run(_warm(cfg, list(args.ids), args.region))
    return _report(args, results, lambda r: (
        f"warm {r['region']} {r['edge']} {r['id']} variants={r['variants']}" if r["ok"]
        else f"warm {r['target']} FAILED {r['error']}"))


# -- upload ---------------------------------------------------------------------------------


def _hash_file(path: Path) -> tuple[str, int]:
    if not path.is_file():
        raise FileNotFoundError(f"not a readable file: {path}")
    h, size = Hasher(), 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


async def _upload(cfg: Config, files: list[str], progress: bool) -> list[Result]:
    key = _token(cfg, admin=False)
    auth = {"Authorization": f"Bearer {key}"}
    results: list[Result] = []
    async with _session(cfg, aiohttp.ClientTimeout(total=300, connect=2)) as session:
        for n, name in enumerate(files, 1):
            if progress:
                sys.stderr.write(f"\r[{n}/{len(files)}] {name[-50:]:<50}")
                sys.stderr.flush()
            result: Result = {"target": name, "file": name, "ok": False}
            path = Path(name)
            try:
                image_id, size = await asyncio.to_thread(_hash_file, path)
                result.update(id=image_id, bytes=size)
                async with session.head(f"{cfg.ingest.url}/v1/images/{image_id}",
                                        headers=auth) as r:
                    if r.status == 401:
                        raise PermissionError("the API key was refused (HTTP 401)")
                    exists = r.status == 200
                if exists:  # hash-first: the origin has these bytes, send nothing
                    async with session.get(f"{cfg.ingest.url}/v1/images/{image_id}") as r:
                        manifest = await r.json()
                    result.update(ok=True, status="exists", manifest=manifest)
                else:
                    data = await asyncio.to_thread(path.read_bytes)
                    async with session.post(f"{cfg.ingest.url}/v1/images", data=data,
                                            headers=auth) as r:
                        if r.status in (200, 201):
                            manifest = await r.json()
                            result.update(ok=True, manifest=manifest,
                                          status="created" if r.status == 201 else "exists")
                        else:
                            result["error"] = await _problem(r)
            except (aiohttp.ClientError, TimeoutError) as exc:
                result["error"] = f"ingest {_fail(exc)}"
            except OSError as exc:
                result["error"] = str(exc)
            results.append(result)
    if progress:
        sys.stderr.write("\n")
    return results


def _upload_line(r: Result) -> str:
    if not r["ok"]:
        return f"{r['file']} FAILED {r['error']}"
    m = r["manifest"]
    first = m["variants"][0]["url"] if m.get("variants") else ""
    return f"{r['file']} {r['status']} {m['id']} {first}"


def cmd_upload(args: argparse.Namespace) -> int:
    cfg = _cfg(args)
    progress = len(args.files) > 1 and sys.stderr.isatty() and not args.json
    results = asyncio.run(_upload(cfg, list(args.files), progress))
    return _report(args, results, _upload_line)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "purge": cmd_purge,
    "delete": cmd_delete,
    "stats": cmd_stats,
    "warm": cmd_warm,
    "upload": cmd_upload,
}
