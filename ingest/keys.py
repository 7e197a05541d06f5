"""Typed keys for what the ingest app holds."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from prometheus_client import Counter, Histogram

from config.schema import Config
from ingest.peers import Peers
from ingest.purgehub import PurgeHub
from origin import Origin
from transcode.pool import WorkerPool


@dataclass(frozen=True)
class IngestMetrics:
    uploads: Counter
    bytes_in: Counter
    transcode_seconds: Histogram
    derivations: Counter


CONFIG = web.AppKey("config", Config)
ORIGIN = web.AppKey("origin", Origin)
POOL = web.AppKey("pool", WorkerPool)
METRICS = web.AppKey("metrics", IngestMetrics)
HUB = web.AppKey("hub", PurgeHub)
PEERS = web.AppKey("peers", Peers)  # set only when `ingest.peers` names other replicas
