"""Typed keys for what the edge app holds."""

from __future__ import annotations

from aiohttp import web

from config.schema import Config, EdgeNode, TranscodeConfig
from edge.follower import Follower
from edge.frontdoor import FrontDoor
from edge.node import EdgeCache
from edge.stats import EdgeStats

CONFIG = web.AppKey("config", Config)
NODE = web.AppKey("node", EdgeNode)
TRANSCODE = web.AppKey("transcode", TranscodeConfig)
STATS = web.AppKey("stats", EdgeStats)
CACHE = web.AppKey("cache", EdgeCache)
FOLLOWER = web.AppKey("follower", Follower)  # worker 0 only
FRONT_DOOR = web.AppKey("front_door", FrontDoor)  # when edge.front_door is on
