"""Pure routing functions: rendezvous hashing, region choice, distances, hysteresis."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from common.errors import BadRequest
from common.hashing import content_id
from config.schema import EdgeNode, RouterConfig
from edge.rendezvous import owner, ranked
from edge.router.geo import by_distance, choose_region, distance_km
from edge.router.health import HealthMonitor
from tests.helpers import make_config


def _edges(n: int) -> list[EdgeNode]:
    return [EdgeNode(f"e{i}", "r", "127.0.0.1", 9000 + i, "http://x", Path("/"), 1, 1, 1)
            for i in range(n)]


def test_rendezvous_is_balanced_over_three_edges() -> None:
    edges = _edges(3)
    ids = [content_id(os.urandom(16)) for _ in range(1000)]
    counts = Counter(owner(edges, i).name for i in ids)
    for name in ("e0", "e1", "e2"):
        assert abs(counts[name] - 1000 / 3) <= 0.15 * 1000 / 3, counts


def test_rendezvous_is_stable_and_moves_only_the_lost_edges_ids() -> None:
    edges = _edges(4)
    ids = [content_id(os.urandom(16)) for _ in range(500)]
    before = {i: owner(edges, i).name for i in ids}
    assert before == {i: owner(list(reversed(edges)), i).name for i in ids}  # order-free
    remaining = [e for e in edges if e.name != "e2"]
    after = {i: owner(remaining, i).name for i in ids}
    moved = [i for i in ids if before[i] != after[i]]
    assert moved and all(before[i] == "e2" for i in moved)
    assert all(after[i] == ranked(edges, i)[1].name for i in moved)  # to its second choice


def test_region_choice_order(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    pick = choose_region
    assert pick(cfg, param="us-east", country="FR", client_ip="10.3.0.1").reason == "param"
    c = pick(cfg, param=None, country="fr", client_ip="10.3.0.1")
    assert (c.region.name, c.reason) == ("eu-west", "country")
    c = pick(cfg, param=None, country="ZZ", client_ip="10.3.0.1")
    assert (c.region.name, c.reason) == ("ap-south", "cidr")
    c = pick(cfg, param=None, country=None, client_ip="not an ip")
    assert (c.region.name, c.reason) == ("eu-west", "default")
    with pytest.raises(BadRequest):
        pick(cfg, param="mars", country=None, client_ip=None)


def test_nearest_regions_by_great_circle(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    eu, us, ap = (cfg.region(n) for n in ("eu-west", "us-east", "ap-south"))
    assert eu and us and ap
    assert 6000 < distance_km(eu, us) < 6500  # Paris - Ashburn
    assert [r.name for r in by_distance(cfg, eu)] == ["eu-west", "us-east", "ap-south"]
    assert [r.name for r in by_distance(cfg, ap)] == ["ap-south", "eu-west", "us-east"]


def test_health_hysteresis() -> None:
    cfg = RouterConfig("127.0.0.1", 0, "http://x", "r", 1.0, 0.5, fall=2, rise=3)
    mon = HealthMonitor(tuple(_edges(1)), cfg, session=None)  # type: ignore[arg-type]
    mon.record("e0", False)
    assert mon.is_up("e0")  # one failure is not enough
    mon.record("e0", False)
    assert not mon.is_up("e0")
    mon.record("e0", True)
    mon.record("e0", True)
    assert not mon.is_up("e0")
    mon.record("e0", True)
    assert mon.is_up("e0")
