"""The durable purge log: ordering, cursors, compaction, and an edge that was away too long."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from common.hashing import content_id
from config import Config
from edge.disk import DiskTier
from edge.entry import Entry
from origin import keys as K
from origin import purgelog
from origin.fs import FsOrigin
from tests.helpers import make_config


async def test_records_are_read_in_order_after_a_cursor(tmp_path: Path) -> None:
    origin = FsOrigin(tmp_path / "o")
    ids = [content_id(bytes([i])) for i in range(5)]
    written = [await purgelog.append(origin, ids=[i]) for i in ids]
    await purgelog.append(origin, ids=[], purge_all=True, region="us-east")
    records = await purgelog.read_since(origin, "")
    assert [r.ids for r in records[:5]] == [(i,) for i in ids]
    assert records[5].all and records[5].applies_to("us-east")
    assert not records[5].applies_to("eu-west")
    assert [r.key for r in await purgelog.read_since(origin, written[2].key)] == \
        [r.key for r in records[3:]]


async def test_compaction_drops_only_old_records(tmp_path: Path) -> None:
    origin = FsOrigin(tmp_path / "o")
    old_ns = time.time_ns() - 10 * 86400 * 10**9
    for n in range(3):
        await origin.put(K.purge_record(old_ns + n, "abcdef01"), b'{"ids": []}',
                         "application/json", {})
    fresh = await purgelog.append(origin, ids=[content_id(b"x")])
    assert await purgelog.compact(origin, older_than_seconds=7 * 86400) == 3
    assert await origin.list(K.PURGES_PREFIX) == [fresh.key]


async def test_an_edge_away_longer_than_the_retention_drops_its_whole_cache(
    tmp_path: Path, aiohttp_client: object
) -> None:
    from edge.app import create_app

    cfg: Config = make_config(tmp_path)
    cfg = replace(cfg, edge=replace(cfg.edge, purge_retention_seconds=3600))
    node = cfg.edges[0]
    data = b"cached long ago"
    key = f"{content_id(b'img')}/w320.webp"
    tier = DiskTier(node.cache_dir / "objects", node.cache_bytes)
    tier.put(Entry(key, data, content_id(data), "image/webp", time.time()))
    tier.close()
    # Its cursor is two hours old: records it missed may have been compacted away.
    node.cache_dir.mkdir(parents=True, exist_ok=True)
    (node.cache_dir / "purge.cursor").write_text(
        K.purge_record(time.time_ns() - 7200 * 10**9, "abcdef01"))
    client = await aiohttp_client(create_app(cfg, node))  # type: ignore[operator]
    async with client.get(f"/i/{key}") as r:
        assert r.status == 404  # not served from the old cache; the origin has nothing


async def test_a_damaged_record_purges_everything_and_never_blocks_the_edge(
    tmp_path: Path, aiohttp_client: object
) -> None:
    from edge.app import create_app

    cfg: Config = make_config(tmp_path)
    node = cfg.edges[0]
    origin = FsOrigin(cfg.origin.path)
    data = b"some variant bytes"
    image_id = content_id(b"damaged-record")
    await origin.put(K.variant(image_id, "w320", "webp"), data, "image/webp",
                     {"blake3": content_id(data)})
    client = await aiohttp_client(create_app(cfg, node))  # type: ignore[operator]
    path = f"/i/{image_id}/w320.webp"
    async with client.get(path) as r:
        assert r.status == 200
    async with client.get(path) as r:
        assert r.headers["X-Cache"] == "HIT"
    await origin.put(K.purge_record(time.time_ns(), "deadbeef"), b"\x00garbage",
                     "application/json", {})
    records = await purgelog.read_since(origin, "")
    assert len(records) == 1 and records[0].all  # read as the safe "purge everything"
    await client.close()
    client = await aiohttp_client(create_app(cfg, node))  # type: ignore[operator]
    async with client.get(path) as r:  # caught up (not a 503), and the cache was dropped
        assert r.status == 200 and r.headers["X-Cache"] == "MISS"
