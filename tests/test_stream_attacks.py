"""Attacks on the purge stream (edges follow ingest over one WebSocket per node, acks sent
back on it): two streams claiming one node, a stalled edge, a stalled ingest, a stream whose
next record ingest no longer holds.

Uses the harness of tests/test_invalidation.py (real ingest/edges on loopback, the suite's
S3 server behind the counting, slowable proxy).
"""

from __future__ import annotations

import asyncio
import json

import pytest

from common.hashing import content_id
from tests import test_invalidation
from tests.helpers import ADMIN
from tests.test_invalidation import Net, _last, _stream

net = test_invalidation.net  # the harness's fixture

pytestmark = pytest.mark.timeout(240)


async def _purge(net: Net, ids: list[str]) -> tuple[int, dict[str, str]]:
    assert net.ingest is not None
    async with net.http.post(net.ingest.url + "/v1/purges", json={"ids": ids},
                             headers=ADMIN) as r:
        return r.status, (await r.json())["edges"]


async def test_a_purge_is_not_applied_by_a_node_while_one_of_its_streams_lags(
        net: Net) -> None:
    # Two streams name the same node (a replacement started before the old one is gone, a
    # copied config): ingest kept one cursor per name, set by whichever stream acked last,
    # so the first stream's ack answered the purge 200 "applied" while the other process
    # still held (and served) the purged copy.
    net.write()
    await net.start_ingest()
    last = await _last(net)
    a, b = await _stream(net, "e1", last), await _stream(net, "e1", last)
    for ws in (a, b):
        assert json.loads(await ws.receive_bytes(timeout=5))["records"] == []
    posting = asyncio.create_task(_purge(net, [content_id(b"x")]))
    for ws in (a, b):
        pushed = json.loads(await ws.receive_bytes(timeout=5))
    await a.send_str(str(pushed["last"]))  # only one of the two applied it
    status, edges = await asyncio.wait_for(posting, 10)
    assert (status, edges) == (202, {"e1": "pending"})
    # Once the other applies it too, the node has.
    async with net.http.get(f"{net.ingest.url}/v1/purges/{pushed['last']}",
                            headers=ADMIN) as r:
        assert (await r.json())["edges"] == {"e1": "pending"}
    await b.send_str(str(pushed["last"]))
    await asyncio.sleep(0.3)
    async with net.http.get(f"{net.ingest.url}/v1/purges/{pushed['last']}",
                            headers=ADMIN) as r:
        assert (await r.json())["edges"] == {"e1": "applied"}
    await a.close()
    await b.close()
