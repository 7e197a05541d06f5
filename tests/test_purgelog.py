"""The durable invalidation log: sequence numbers claimed by conditional create, order
without clocks, several writers, compaction, damaged records, an edge that was away."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from pathlib import Path

from common.hashing import content_id
from config import Config
from edge.disk import DiskTier
from edge.entry import Entry
from ingest.purgehub import Gone, PurgeHub
from origin import Origin, purgelog
from origin import keys as K
from origin.fs import FsOrigin
from tests.helpers import make_config


async def test_a_create_is_refused_when_the_key_exists(origin: Origin) -> None:
    key = purgelog.key_of(7)
    assert await origin.create(key, b"first", "application/json")
    assert not await origin.create(key, b"second", "application/json")
    assert (await origin.read(key))[1] == b"first"


async def test_records_are_read_in_sequence_after_a_cursor(origin: Origin) -> None:
    hub = PurgeHub(origin, 60, 86400)
    await hub.load()
    ids = [content_id(bytes([i])) for i in range(5)]
    for i in ids:
        await hub.append("purge", [i])
    await hub.append("purge", [], purge_all=True, region="us-east")
    batch = await purgelog.read_after(origin, 0)
    assert [r.seq for r in batch.records] == [1, 2, 3, 4, 5, 6] and not batch.missed
    assert [r.ids for r in batch.records[:5]] == [(i,) for i in ids]
    assert batch.records[5].all and batch.records[5].applies_to("us-east")
    assert not batch.records[5].applies_to("eu-west")
    assert [r.seq for r in (await purgelog.read_after(origin, 3)).records] == [4, 5, 6]
    assert await hub.records_after(6, 0) == []
    assert [r.seq for r in await hub.records_after(4, 0)] == [5, 6]


async def test_two_writers_never_share_or_skip_a_number(origin: Origin) -> None:
    # Two ingest replicas on one origin, appending at once: every record lands exactly once,
    # numbered 1..N without a hole, whatever order their PUTs reach the origin in.
    a, b = PurgeHub(origin, 60, 86400), PurgeHub(origin, 60, 86400)
    await a.load()
    await b.load()
    ids = [content_id(i.to_bytes(2, "big")) for i in range(24)]
    await asyncio.gather(*(hub.append("purge", [i]) for hub, i in
                           zip([a, b] * 12, ids, strict=True)))
    batch = await purgelog.read_after(origin, 0)
    # Appends that wait together may share a record (group commit): numbered 1..K, each
    # id in exactly one record.
    assert [r.seq for r in batch.records] == list(range(1, len(batch.records) + 1))
    assert sorted(i for r in batch.records for i in r.ids) == sorted(ids)


async def test_purges_arriving_during_a_write_share_the_next_record(origin: Origin) -> None:
    # Numbers are claimed one round trip at a time: 30 purges at once must not cost 30
    # origin writes in a row (each answered only after all the ones before it).
    hub = PurgeHub(origin, 60, 86400)
    await hub.load()
    ids = [content_id(i.to_bytes(2, "big")) for i in range(30)]
    recs = await asyncio.gather(*(hub.append("purge", [i]) for i in ids))
    batch = await purgelog.read_after(origin, 0)
    assert len(batch.records) <= 2
    assert sorted(i for r in batch.records for i in r.ids) == sorted(ids)
    for i, rec in zip(ids, recs, strict=True):  # each caller's answer names a record with it
        assert i in rec.ids
    whole = await hub.append("purge", [], purge_all=True, region="us-east")
    assert whole.all and whole.ids == () and whole.region == "us-east"


async def test_compaction_keeps_the_newest_and_a_reader_behind_it_is_told(
        tmp_path: Path) -> None:
    origin = FsOrigin(tmp_path / "o")
    old = time.time_ns() - 10 * 86400 * 10**9
    for seq in (1, 2, 3):
        rec = purgelog.Record(seq, "purge", (content_id(b"x"),), False, None, old)
        assert await purgelog.try_write(origin, rec)
    hub = PurgeHub(origin, 60, retention_seconds=7 * 86400)
    await hub.load()
    fresh = await hub.append("purge", [content_id(b"y")])
    assert await hub.compact() == 3
    assert await origin.list(purgelog.PREFIX) == [purgelog.key_of(fresh.seq)]
    # A follower that had applied only record 1 missed 2 and 3: it must drop everything.
    batch = await purgelog.read_after(origin, 1)
    assert batch.missed and [r.seq for r in batch.records] == [4]
    assert not (await purgelog.read_after(origin, 3)).missed
    # The hub no longer holds them either: such a follower is sent to the origin.
    try:
        await hub.records_after(1, 0)
    except Gone:
        pass
    else:
        raise AssertionError("a cursor before the compacted records must be Gone")
    # Numbers keep going up after compaction (the newest record carries the count).
    assert (await hub.append("purge", [content_id(b"z")])).seq == 5


async def test_an_edge_whose_records_were_compacted_away_drops_its_whole_cache(
    tmp_path: Path, aiohttp_client: object
) -> None:
    from edge.app import create_app

    cfg: Config = make_config(tmp_path)
    node = cfg.edges[0]
    data = b"cached long ago"
    key = f"{content_id(b'img')}/w320.webp"
    tier = DiskTier(node.cache_dir / "objects", node.cache_bytes)
    tier.put(Entry(key, data, content_id(data), "image/webp", time.time()))
    tier.close()
    origin = FsOrigin(cfg.origin.path)
    for seq in (5, 6):  # records 2..4 are gone
        assert await purgelog.try_write(origin, purgelog.new_record(seq, "purge",
                                                                    [content_id(b"o")]))
    (node.cache_dir / "purge.cursor").write_text("1")
    client = await aiohttp_client(create_app(cfg, node))  # type: ignore[operator]
    async with client.get(f"/i/{key}") as r:
        assert r.status == 404  # not served from the old cache; the origin has nothing
    assert (node.cache_dir / "purge.cursor").read_text() == "6"


async def test_an_edge_with_no_cursor_or_an_old_one_starts_from_an_empty_cache(
    tmp_path: Path, aiohttp_client: object
) -> None:
    from edge.app import create_app

    cfg: Config = make_config(tmp_path)
    node = cfg.edges[0]
    key = f"{content_id(b'img2')}/w320.webp"
    tier = DiskTier(node.cache_dir / "objects", node.cache_bytes)
    tier.put(Entry(key, b"v", content_id(b"v"), "image/webp", time.time()))
    tier.close()
    # The previous version's cursor format: what it applied cannot be mapped to numbers.
    (node.cache_dir / "purge.cursor").write_text(K.PURGES_PREFIX + "0" * 20 + "-abcdef01.json")
    client = await aiohttp_client(create_app(cfg, node))  # type: ignore[operator]
    async with client.get(f"/i/{key}") as r:
        assert r.status == 404


async def test_a_damaged_record_purges_everything_and_never_blocks_the_edge(
    tmp_path: Path, aiohttp_client: object
) -> None:
    from edge.app import create_app

    cfg: Config = make_config(tmp_path)
    cfg = replace(cfg, edge=replace(cfg.edge, purge_poll_seconds=0.1))
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
    assert await origin.create(purgelog.key_of(1), b"\x00garbage", "application/json")
    batch = await purgelog.read_after(origin, 0)
    assert len(batch.records) == 1 and batch.records[0].all  # the safe "purge everything"
    for _ in range(50):  # no ingest here: the edge follows the origin's log
        async with client.get(path) as r:
            if r.headers["X-Cache"] == "MISS":
                break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the damaged record was never applied")
    assert json.loads((node.cache_dir / "purge.cursor").read_text()) == 1


class ListCountingOrigin(FsOrigin):
    lists = 0

    async def list(self, prefix: str, start_after: str = "", limit: int = 1000) -> list[str]:
        self.lists += 1
        return await super().list(prefix, start_after, limit)


async def test_an_idle_reader_of_a_long_log_lists_it_once_per_poll(tmp_path: Path) -> None:
    # Ingest re-reads the log every log_poll_seconds and fallback edges every
    # purge_poll_seconds: an idle read must not list the whole log (a LIST per 1,000
    # records, every poll, growing with the retention).
    origin = ListCountingOrigin(tmp_path / "origin")
    for seq in range(1, 2501):
        assert await purgelog.try_write(origin, purgelog.new_record(
            seq, "purge", [content_id(seq.to_bytes(2, "big"))]))
    hub = PurgeHub(origin, 60, 86400)
    await hub.load()
    origin.lists = 0
    assert await hub.refresh() == 0
    assert (await purgelog.read_after(origin, 2500)).records == []
    assert origin.lists == 2
