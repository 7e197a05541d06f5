"""The hostile corpus, twice, against a real ingest process: every answer the contract's,
no 5xx, no crashed worker, bounded memory."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp
import pytest

from scripts.bench.common import tree_rss_mib
from tests.helpers import AUTH
from tests.hostile import corpus
from tests.topology import Service, env, write_config

pytestmark = pytest.mark.timeout(300)


async def test_hostile_corpus_twice(tmp_path: Path) -> None:
    config, _ = write_config(tmp_path, f'kind = "fs"\npath = "{tmp_path / "origin"}"')
    ingest = await Service(["ingest", "--config", str(config)], env()).start()
    assert ingest.proc is not None
    items = corpus()
    seen: dict[str, list[int]] = {}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as s:
            rss_before = tree_rss_mib(ingest.proc.pid)
            for _ in range(2):
                for name, data, _want in items:
                    async with s.post(ingest.url + "/v1/images", data=data, headers={
                            **AUTH, "Content-Type": "image/png"}) as r:
                        body = await r.json(content_type=None)
                        seen.setdefault(name, []).append(r.status)
                        if r.status >= 400:
                            assert r.content_type == "application/problem+json", name
                            assert body["status"] == r.status and body["detail"], name
            rss_after = tree_rss_mib(ingest.proc.pid)
            async with s.get(ingest.url + "/metrics") as r:
                metrics = await r.text()
    finally:
        await ingest.stop()
    wrong = {n: (seen[n], want) for n, _, want in items
             if any(st != want and not (want == 201 and st == 200) for st in seen[n])}
    assert not wrong, wrong
    assert not [n for n, st in seen.items() if any(x >= 500 for x in st)]
    restarts = re.search(r"^mediacdn_ingest_worker_restarts (\S+)$", metrics, re.M)
    assert restarts and float(restarts.group(1)) == 0.0  # no worker crashed or hung
    assert rss_after - rss_before < 100, (rss_before, rss_after)
    print(f"\nhostile corpus: {len(items)} inputs x 2, RSS {rss_before:.0f} -> "
          f"{rss_after:.0f} MiB")
