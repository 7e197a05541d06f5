"""The routing decision: region, then the owner among that region's healthy edges, else the
nearest region that has one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from common.errors import ServiceUnavailable
from config.schema import Config, EdgeNode, Region
from edge.rendezvous import ranked, score
from edge.router.geo import RegionChoice, by_distance, distance_km
from edge.router.health import HealthMonitor


@dataclass(frozen=True)
class Decision:
    choice: RegionChoice
    edge: EdgeNode
    served_by_region: str
    candidates: list[dict[str, Any]]

    def explain(self, image_id: str) -> dict[str, Any]:
        return {
            "region": self.choice.region.name,
            "reason": self.choice.reason,
            "served_by_region": self.served_by_region,
            "failover": self.served_by_region != self.choice.region.name,
            "edge": self.edge.name,
            "url": self.edge.url,
            "id": image_id or None,
            "candidates": self.candidates,
        }


def nearest_first(cfg: Config) -> dict[str, list[Region]]:
    """For each region, every region nearest first: computed once, not per redirect."""
    return {r.name: by_distance(cfg, r) for r in cfg.regions}


def decide(cfg: Config, health: HealthMonitor, choice: RegionChoice, image_id: str,
           nearest: dict[str, list[Region]]) -> Decision:
    candidates: list[dict[str, Any]] = []
    for region in nearest[choice.region.name]:
        order = ranked(region.edges, image_id)
        up = [e for e in order if health.is_up(e.name)]
        candidates.append({
            "region": region.name,
            "distance_km": round(distance_km(choice.region, region), 1),
            "edges": [{"name": e.name, "healthy": health.is_up(e.name),
                       "score": score(e.name, image_id)} for e in order],
        })
        if up:
            return Decision(choice, up[0], region.name, candidates)
    raise ServiceUnavailable("no healthy edge in any region", headers={"Retry-After": "2"})
