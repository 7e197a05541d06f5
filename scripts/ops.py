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
from config import Config, EdgeNode, load_config
from edge.rendezvous import owner
from origin import open_origin, purgelog
from scripts.cli import EXIT_FAILED, EXIT_OK, UsageError, environ

TIMEOUT = aiohttp.ClientTimeout(total=10, connect=2)
Result = dict[str, Any]


def _cfg(args: argparse.Namespace) -> Config:
    return load_config(args.config, environ())


def _token(cfg: Config, admin: bool) -> str:
    value = cfg.secrets.admin_token if admin else cfg.secrets.api_key
    var = cfg.secrets.admin_token_env if admin else cfg.secrets.api_key_env
    if not value:
        raise UsageError(f"{var} is not set: export it (mediacdn up prints the generated one)")
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
    failed = [r for r in results if not r["ok"]]
    if args.json:
        print(json.dumps({"results": results, **(extra or {}), "failed": len(failed)}))
    else:
        for r in results:
            print(line(r))
        for r in failed:
            sys.stderr.write(f"mediacdn: failed: {r.get('target')}: {r.get('error')}\n")
    return EXIT_FAILED if failed else EXIT_OK


# -- purge ----------------------------------------------------------------------------------


async def send_purge(session: aiohttp.ClientSession, edge: EdgeNode, token: str,
                     body: Result) -> Result:
    result: Result = {"target": edge.name, "edge": edge.name, "region": edge.region,
                      "ok": False}
    try:
        async with session.post(f"{edge.url}/_admin/purge", json=body,
                                headers={"Authorization": f"Bearer {token}"}) as r:
            if r.status == 200:
                result.update(ok=True, purged=(await r.json())["purged"])
            else:
                result["error"] = await _problem(r)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        result["error"] = _fail(exc)
    return result


async def purge_everywhere(cfg: Config, edges: list[EdgeNode], ids: list[str],
                           purge_all: bool, region: str | None,
                           record: bool = True) -> tuple[list[Result], str | None]:
    """Every chosen edge at once; the durable record at the origin as well, so an edge
    that is down now applies it before it serves again."""
    token = _token(cfg, admin=True)
    body: Result = {"all": True} if purge_all else {"ids": ids}
    record_error = None
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        sends = [send_purge(session, e, token, body) for e in edges]
        if record:
            async def write_record() -> None:
                async with open_origin(cfg.origin) as origin:
                    await purgelog.append(origin, ids=ids, purge_all=purge_all,
                                          region=region, reason="purge")
            outcome = await asyncio.gather(write_record(), *sends, return_exceptions=True)
            if isinstance(outcome[0], BaseException):
                record_error = _fail(outcome[0])
            results = [r for r in outcome[1:] if isinstance(r, dict)]
        else:
            results = list(await asyncio.gather(*sends))
    return results, record_error


def cmd_purge(args: argparse.Namespace) -> int:
    cfg = _cfg(args)
    edges = _edges(cfg, args.region)
    results, record_error = _run_purge(cfg, edges, args)
    if record_error:
        results.append({"target": "origin purge log", "ok": False, "error": record_error})
    return _report(args, results, lambda r: (
        f"edge {r['edge']} {r['region']} ok purged={r['purged']}" if r["ok"] and "edge" in r
        else f"{'edge ' + r['target'] if 'edge' in r else r['target']} FAILED {r['error']}"))


def _run_purge(cfg: Config, edges: list[EdgeNode],
               args: argparse.Namespace) -> tuple[list[Result], str | None]:
    return asyncio.run(purge_everywhere(cfg, edges, list(args.ids), bool(args.all),
                                        args.region))


# -- delete ---------------------------------------------------------------------------------


async def _delete(cfg: Config, ids: list[str]) -> list[Result]:
    token = _token(cfg, admin=True)
    results: list[Result] = []
    deleted: list[str] = []
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        for image_id in ids:
            result: Result = {"target": image_id, "id": image_id, "ok": False}
            try:
                async with session.delete(f"{cfg.ingest.url}/v1/images/{image_id}",
                                          headers={"Authorization": f"Bearer {token}"}) as r:
                    if r.status == 204:
                        result["ok"] = True
                        deleted.append(image_id)
                    else:
                        result["error"] = await _problem(r)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                result["error"] = f"ingest {_fail(exc)}"
            results.append(result)
    if deleted:  # ingest recorded the purge durably; tell the edges now as well
        edge_results, _ = await purge_everywhere(cfg, list(cfg.edges), deleted, False, None,
                                                 record=False)
        results += edge_results
    return results


def cmd_delete(args: argparse.Namespace) -> int:
    cfg = _cfg(args)
    results = asyncio.run(_delete(cfg, list(args.ids)))
    return _report(args, results, lambda r: (
        (f"deleted {r['id']}" if "id" in r else f"edge {r['edge']} ok purged={r['purged']}")
        if r["ok"] else f"{r['target']} FAILED {r['error']}"))


# -- stats ----------------------------------------------------------------------------------


STAT_COLUMNS = ("hits", "misses", "hit_ratio", "bytes_served", "cache_bytes", "cache_entries",
                "evictions", "origin_fetches", "errors")


async def _stats(cfg: Config, edges: list[EdgeNode]) -> list[Result]:
    token = _token(cfg, admin=True)

    async def one(session: aiohttp.ClientSession, e: EdgeNode) -> Result:
        result: Result = {"target": e.name, "edge": e.name, "region": e.region, "ok": False}
        try:
            async with session.get(f"{e.url}/_admin/stats",
                                   headers={"Authorization": f"Bearer {token}"}) as r:
                if r.status == 200:
                    result.update(ok=True, stats=await r.json())
                else:
                    result["error"] = await _problem(r)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            result["error"] = _fail(exc)
        return result

    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
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
    header = f"{'edge':<14} {'region':<10} " + " ".join(f"{c:>14}" for c in STAT_COLUMNS)
    print(header)
    for r in results:
        if r["ok"]:
            s = r["stats"]
            print(f"{r['edge']:<14} {r['region']:<10} "
                  + " ".join(f"{s[c]:>14}" for c in STAT_COLUMNS))
        else:
            print(f"{r['edge']:<14} {r['region']:<10} unreachable: {r['error']}")
    print(f"{'total':<14} {'':<10} " + " ".join(f"{totals[c]:>14}" for c in STAT_COLUMNS))
    failed = [r for r in results if not r["ok"]]
    for r in failed:
        sys.stderr.write(f"mediacdn: failed: {r['edge']}: {r['error']}\n")
    return EXIT_FAILED if failed else EXIT_OK


# -- warm -----------------------------------------------------------------------------------


async def _warm(cfg: Config, ids: list[str], region: str | None) -> list[Result]:
    regions = [r for r in cfg.regions if region is None or r.name == region]
    if not regions:
        raise UsageError(f"no region {region!r}")
    paths = [f"/i/{i}/{v.name}.{f}" for i in ids for v in cfg.transcode.variants
             for f in cfg.transcode.formats]
    results: list[Result] = []
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
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
                    if bad:
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
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300,
                                                                   connect=2)) as session:
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
