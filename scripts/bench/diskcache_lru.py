"""What diskcache's LRU bookkeeping costs per hit, and what the edge's disk tier pays instead.

1,000 values of 60 KB; random gets; one process, then two processes at once.
    lru-get      Cache(eviction_policy="least-recently-used").get: a write transaction per get
    lrs-get      least-recently-stored .get: one SELECT
    disk-tier    edge.disk.DiskTier.get: the fast-path SELECT + blake3 check + a set add
                 (recency is written once a second, in one transaction)

    .venv/bin/python -m scripts.bench.diskcache_lru
"""

from __future__ import annotations

import multiprocessing
import os
import random
import sys
import tempfile
import time
from pathlib import Path

GETS = 5000


def _fill(directory: str, policy: str) -> list[str]:
    import diskcache

    from common.hashing import content_id
    from edge.disk import DiskTier
    from edge.entry import Entry

    keys = [f"{i:064x}/w640.webp" for i in range(1000)]
    if policy == "disk-tier":
        tier = DiskTier(Path(directory), 1 << 30)
        for k in keys:
            data = os.urandom(60 * 1024)
            tier.put(Entry(k, data, content_id(data), "image/webp", time.time()))
        tier.close()
    else:
        cache = diskcache.Cache(directory, size_limit=1 << 30, eviction_policy=policy)
        for k in keys:
            cache.set(k, os.urandom(60 * 1024))
        cache.close()
    return keys


def _run(directory: str, policy: str, keys: list[str], out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    import diskcache

    from edge.disk import DiskTier

    rnd = random.Random(os.getpid())
    if policy == "disk-tier":
        tier = DiskTier(Path(directory), 1 << 30)
        get = tier.get
    else:
        cache = diskcache.Cache(directory, size_limit=1 << 30, eviction_policy=policy)
        get = cache.get
    lat = []
    t0 = time.perf_counter()
    for _ in range(GETS):
        s = time.perf_counter()
        get(rnd.choice(keys))
        lat.append(time.perf_counter() - s)
        if policy == "disk-tier" and len(lat) % 1000 == 0:
            tier.flush_recency()  # what the node does once a second
    total = time.perf_counter() - t0
    lat.sort()
    out.put((GETS / total, lat[len(lat) // 2] * 1e6, lat[int(len(lat) * 0.99)] * 1e6))


def main() -> int:
    policies = {"lru-get": "least-recently-used", "lrs-get": "least-recently-stored",
                "disk-tier": "disk-tier"}
    ctx = multiprocessing.get_context("spawn")
    print(f"{'':<10} {'procs':>5} {'gets/s':>10} {'p50 us':>8} {'p99 us':>8}")
    for name, policy in policies.items():
        with tempfile.TemporaryDirectory() as d:
            keys = _fill(d, policy)
            for procs in (1, 2):
                q = ctx.Queue()
                ps = [ctx.Process(target=_run, args=(d, policy, keys, q)) for _ in range(procs)]
                for p in ps:
                    p.start()
                res = [q.get() for _ in ps]
                for p in ps:
                    p.join()
                rate = sum(r[0] for r in res)
                p50 = max(r[1] for r in res)
                p99 = max(r[2] for r in res)
                print(f"{name:<10} {procs:>5} {rate:>10,.0f} {p50:>8.0f} {p99:>8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
