"""The node's counters: plain integers on the hot path, exported to Prometheus at scrape time."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector


@dataclass
class EdgeStats:
    hits: int = 0
    fast_hits: int = 0  # plain 200 hits from the memory tier (the hot path counts only these)
    misses: int = 0
    bytes_served: int = 0
    origin_fetches: int = 0
    peer_fetches: int = 0
    errors: int = 0
    verify_failures: int = 0
    disk_corrupt: int = 0
    disk_write_errors: int = 0
    negative_hits: int = 0
    purged: int = 0
    front_door_hits: int = 0  # of the fast hits, those the front door answered
    front_door_handoffs: int = 0  # connections the front door handed to aiohttp
    responses: Counter[tuple[int, str]] = field(default_factory=Counter)


Totals = Callable[[], dict[str, int]]
Responses = Callable[[], Counter[tuple[int, str]]]

DOCS = {
    "hits": "Requests served from cache",
    "misses": "Requests that needed an upstream fetch",
    "bytes_served": "Body bytes sent",
    "origin_fetches": "GETs sent to the origin",
    "peer_fetches": "Fills from the owner edge of the region",
    "errors": "Answers with status >= 500",
    "verify_failures": "Upstream bytes that failed blake3",
    "disk_corrupt": "Cached entries that failed blake3 on read",
    "disk_write_errors": "Fills that could not be cached",
    "negative_hits": "404s answered from the negative cache",
    "purged": "Entries removed by purges",
    "front_door_hits": "Plain hits answered by the front door, before aiohttp",
    "front_door_handoffs": "Connections the front door handed to aiohttp",
    "disk_evictions": "Entries evicted from the disk tier (LRU)",
    "memory_evictions": "Entries evicted from the hot tier",
    "collapsed_waiters": "Requests that waited on another request's fill",
}
GAUGES = {"memory_entries": "Entries in the hot tier", "memory_bytes": "Bytes in the hot tier",
          "disk_unavailable": "1 when the cache directory is unusable (serving uncached)"}


DiskUsage = Callable[[], tuple[int, int]]


class _Collector(Collector):
    """Counters of every worker of the node, added up when Prometheus scrapes (in a
    thread: it reads the workers' snapshots and the disk tier's size)."""

    def __init__(self, totals: Totals, responses: Responses, disk: DiskUsage) -> None:
        self.totals, self.responses, self.disk = totals, responses, disk

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        t = self.totals()
        t["hits"] += t.pop("fast_hits", 0)
        req = CounterMetricFamily("mediacdn_edge_requests", "Media answers",
                                  labels=["status", "cache"])
        for (status, cache), n in sorted(self.responses().items()):
            req.add_metric([str(status), cache], n)
        yield req
        for name, doc in DOCS.items():
            yield CounterMetricFamily(f"mediacdn_edge_{name}", doc, value=t.get(name, 0))
        for name, doc in GAUGES.items():
            yield GaugeMetricFamily(f"mediacdn_edge_{name}", doc, value=t.get(name, 0))
        entries, volume = self.disk()
        yield GaugeMetricFamily("mediacdn_edge_cache_entries", "Entries in the disk tier",
                                value=entries)
        yield GaugeMetricFamily("mediacdn_edge_cache_bytes", "Bytes used by the disk tier",
                                value=volume)


def register(registry: CollectorRegistry, totals: Totals, responses: Responses,
             disk: DiskUsage) -> Histogram:
    registry.register(_Collector(totals, responses, disk))
    return Histogram("mediacdn_edge_origin_fetch_seconds", "Upstream fetch latency "
                     "(this worker)", registry=registry,
                     buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
