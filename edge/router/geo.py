"""Which region serves a client: ?region=, then X-Client-Country, then the client address
in the config's CIDRs, then the default; and the regions nearest to it for failover."""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass

from common.errors import BadRequest
from config.schema import Config, Region

EARTH_KM = 6371.0


@dataclass(frozen=True)
class RegionChoice:
    region: Region
    reason: str  # "param", "country", "cidr" or "default"


def choose_region(cfg: Config, *, param: str | None, country: str | None,
                  client_ip: str | None) -> RegionChoice:
    if param:
        region = cfg.region(param)
        if region is None:
            raise BadRequest(f"unknown region {param[:40]!r}; known: "
                             + ", ".join(r.name for r in cfg.regions))
        return RegionChoice(region, "param")
    if country:
        code = country.strip().upper()
        for r in cfg.regions:
            if code in r.countries:
                return RegionChoice(r, "country")
    if client_ip:
        try:
            addr = ipaddress.ip_address(client_ip)
        except ValueError:
            addr = None
        if addr is not None:
            best: tuple[int, Region] | None = None
            for r in cfg.regions:  # the most specific matching network wins
                for net in r.cidrs:
                    if addr.version == net.version and addr in net and (
                            best is None or net.prefixlen > best[0]):
                        best = (net.prefixlen, r)
            if best is not None:
                return RegionChoice(best[1], "cidr")
    default = cfg.region(cfg.router.default_region)
    assert default is not None  # the loader checked it
    return RegionChoice(default, "default")


def distance_km(a: Region, b: Region) -> float:
    """Great-circle distance (haversine)."""
    lat1, lon1, lat2, lon2 = map(math.radians, (a.lat, a.lon, b.lat, b.lon))
    h = (math.sin((lat2 - lat1) / 2) ** 2
         + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2)
    return 2 * EARTH_KM * math.asin(math.sqrt(h))


def by_distance(cfg: Config, origin: Region) -> list[Region]:
    """`origin` first, then every other region nearest first."""
    others = sorted((r for r in cfg.regions if r.name != origin.name),
                    key=lambda r: (distance_km(origin, r), r.name))
    return [origin, *others]
