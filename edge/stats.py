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
    responses: Counter[tuple[int, str]] = field(default_factory=Counter)


class _Collector(Collector):
    def __init__(self, stats: EdgeStats, gauges: Callable[[], dict[str, float]],
                 node: str) -> None:
        self.stats, self.gauges, self.node = stats, gauges, node

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        s = self.stats
        req = CounterMetricFamily("mediacdn_edge_requests", "Media answers",
                                  labels=["status", "cache"])
        responses = s.responses.copy()
        responses[(200, "HIT")] += s.fast_hits
        for (status, cache), n in sorted(responses.items()):
            req.add_metric([str(status), cache], n)
        yield req
        counters: tuple[tuple[str, int, str], ...] = (
            ("hits", s.hits + s.fast_hits, "Requests served from cache"),
            ("misses", s.misses, "Requests that needed an upstream fetch"),
            ("bytes_served", s.bytes_served, "Body bytes sent"),
            ("origin_fetches", s.origin_fetches, "GETs sent to the origin"),
            ("peer_fetches", s.peer_fetches, "Fills from the owner edge of the region"),
            ("errors", s.errors, "Answers with status >= 500"),
            ("verify_failures", s.verify_failures, "Upstream bytes that failed blake3"),
            ("disk_corrupt", s.disk_corrupt, "Cached entries that failed blake3 on read"),
            ("disk_write_errors", s.disk_write_errors, "Fills that could not be cached"),
            ("negative_hits", s.negative_hits, "404s answered from the negative cache"),
            ("purged", s.purged, "Entries removed by purges"),
        )
        for name, count, doc in counters:
            yield CounterMetricFamily(f"mediacdn_edge_{name}", doc, value=count)
        for gauge, value in self.gauges().items():
            yield GaugeMetricFamily(f"mediacdn_edge_{gauge}", gauge.replace("_", " "),
                                    value=value)


def register(registry: CollectorRegistry, stats: EdgeStats,
             gauges: Callable[[], dict[str, float]], node: str) -> Histogram:
    registry.register(_Collector(stats, gauges, node))
    return Histogram("mediacdn_edge_origin_fetch_seconds", "Upstream fetch latency",
                     registry=registry,
                     buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
