"""Rendezvous (highest-random-weight) hashing: which edge of a region owns an id.

Every party (router, edges, CLI) computes the same owner from the same names, with no
shared state; removing an edge moves only the ids it owned.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from blake3 import blake3

from config.schema import EdgeNode

E = TypeVar("E", bound=EdgeNode)


def score(edge_name: str, image_id: str) -> int:
    return int.from_bytes(blake3(f"{edge_name}\0{image_id}".encode()).digest(8), "big")


def ranked(edges: Sequence[E], image_id: str) -> list[E]:
    """Edges in preference order for this id (owner first)."""
    return sorted(edges, key=lambda e: score(e.name, image_id), reverse=True)


def owner(edges: Sequence[E], image_id: str) -> E:
    if not edges:
        raise ValueError("no edges to choose from")
    return max(edges, key=lambda e: score(e.name, image_id))
