"""`mediacdn reprocess (--all | ID...) [--variants NAME...] [--concurrency N] [--json]`:
derive, eagerly, the configured variants images lack (after a ladder change). Each image is
one call to ingest (one decode for all its missing variants); what exists is skipped, so
an interrupted run resumes where it stopped. A progress line on a TTY; `--json`: a line per
image, then a summary."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp

from common.tls import client_context
from config import Config, load_config
from origin import open_origin
from scripts.cli import EXIT_FAILED, EXIT_OK, UsageError, environ

PAGE = 1000


async def all_ids(cfg: Config) -> AsyncIterator[str]:
    """Every image with a manifest at the origin, in key order."""
    async with open_origin(cfg.origin) as origin:
        after = ""
        while True:
            keys = await origin.list("manifests/", start_after=after, limit=PAGE)
            for key in keys:
                yield key.removeprefix("manifests/").removesuffix(".json")
            if len(keys) < PAGE:
                return
            after = keys[-1]


async def _one(session: aiohttp.ClientSession, cfg: Config, image_id: str,
               variants: list[str] | None) -> dict[str, Any]:
    url = f"{cfg.ingest.listener.admin_url}/_internal/reprocess/{image_id}"
    try:
        async with session.post(url, json={"variants": variants} if variants else {},
                                headers={"Authorization": f"Bearer {cfg.secrets.admin_token}"}
                                ) as r:
            body = await r.json(content_type=None)
            if r.status != 200:
                detail = body.get("detail", "") if isinstance(body, dict) else ""
                return {"id": image_id, "ok": False, "error": f"HTTP {r.status} {detail}"}
            return {"ok": True, **body}
    except (aiohttp.ClientError, TimeoutError, ValueError, OSError) as exc:
        return {"id": image_id, "ok": False, "error": f"{type(exc).__name__}: {exc}"}


async def run(cfg: Config, ids: list[str] | None, variants: list[str] | None,
              concurrency: int, emit: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    slots = asyncio.Semaphore(concurrency)
    timeout = aiohttp.ClientTimeout(total=2 * cfg.transcode.deadline_seconds + 60)

    async def one(session: aiohttp.ClientSession, image_id: str) -> None:
        try:
            result = await _one(session, cfg, image_id, variants)
        finally:
            slots.release()
        results.append(result)
        emit(result)

    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(
            ssl=client_context(cfg.tls_ca))) as session:
        tasks: set[asyncio.Task[None]] = set()
        source = _given(ids) if ids is not None else all_ids(cfg)
        async for image_id in source:
            await slots.acquire()  # at most `concurrency` in flight, ids read as we go
            task = asyncio.create_task(one(session, image_id))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
    return results


async def _given(ids: list[str]) -> AsyncIterator[str]:
    for i in ids:
        yield i


def cmd_reprocess(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, environ())
    if not cfg.secrets.admin_token:
        raise UsageError(f"{cfg.secrets.unset_hint('admin_tokens')} is not set: export it")
    unknown = [n for n in args.variants or [] if cfg.transcode.variant(n) is None]
    if unknown:
        raise UsageError(f"not variants of this config: {', '.join(unknown)}")
    progress = sys.stderr.isatty() and not args.json
    t0, done, derived = time.monotonic(), 0, 0

    def emit(result: dict[str, Any]) -> None:
        nonlocal done, derived
        done += 1
        derived += len(result.get("derived", []))
        if args.json:
            print(json.dumps(result), flush=True)
        elif progress:
            sys.stderr.write(f"\rreprocess: {done} images, {derived} variants derived")
            sys.stderr.flush()

    results = asyncio.run(run(cfg, None if args.all else list(args.ids), args.variants,
                              args.concurrency, emit))
    seconds = time.monotonic() - t0
    failed = [r for r in results if not r["ok"]]
    summary = {"images": len(results), "derived": derived, "failed": len(failed),
               "seconds": round(seconds, 3),
               "images_per_second": round(len(results) / seconds, 2) if seconds else 0.0}
    if args.json:
        print(json.dumps({"summary": summary}))
    else:
        if progress:
            sys.stderr.write("\n")
        print(f"{summary['images']} images, {derived} variants derived, {len(failed)} failed, "
              f"{summary['images_per_second']} images/s")
        for r in failed:
            sys.stderr.write(f"mediacdn: failed: {r['id']}: {r.get('error')}\n")
    return EXIT_FAILED if failed else EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"reprocess": cmd_reprocess}
