"""The routing decision: region, then the owner among that region's healthy edges, else the
nearest region that has one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from common.errors import ServiceUnavailable
from config.schema import Config, EdgeNode
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


def decide(cfg: Config, health: HealthMonitor, choice: RegionChoice, image_id: str) -> Decision:
    candidates: list[dict[str, Any]] = []
    for region in by_distance(cfg, choice.region):
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
