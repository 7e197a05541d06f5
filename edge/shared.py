"""What the worker processes of one edge node share besides the disk tier and the purge
journal (`edge.journal`):

- Stats snapshots: each worker writes its counters to a file once a second; the stats and
  metrics endpoints add up every worker's latest snapshot.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from edge.stats import EdgeStats

COUNTERS = ("hits", "fast_hits", "misses", "bytes_served", "origin_fetches", "peer_fetches",
            "errors", "verify_failures", "disk_corrupt", "disk_write_errors", "negative_hits",
            "purged", "front_door_hits", "front_door_handoffs")


class StatsBoard:
    """Per-worker snapshots under `directory`, summed on read."""

    def __init__(self, directory: Path, worker: int, workers: int) -> None:
        self.directory = directory
        self.worker = worker
        self.path = directory / f"worker-{worker}.json"
        try:
            directory.mkdir(parents=True, exist_ok=True)
            for f in directory.glob("worker-*.json"):  # left by a run with more workers
                index = f.stem.removeprefix("worker-")
                if not index.isdigit() or int(index) >= workers:
                    f.unlink(missing_ok=True)
        except OSError:
            pass  # unusable cache directory: publish() fails, housekeeping logs it

    def publish(self, stats: EdgeStats, extra: dict[str, int]) -> None:
        data: dict[str, Any] = {k: getattr(stats, k) for k in COUNTERS}
        data.update(extra)
        data["responses"] = [[s, c, n] for (s, c), n in stats.responses.items()]
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.path)

    def others(self) -> list[dict[str, Any]]:
        out = []
        for f in self.directory.glob("worker-*.json"):
            if f != self.path:
                try:
                    out.append(json.loads(f.read_text()))
                except (OSError, ValueError):
                    continue
        return out
