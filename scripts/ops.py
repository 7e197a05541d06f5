"""Operator commands: upload, purge, delete, stats, warm."""

from __future__ import annotations

import argparse
from collections.abc import Callable

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}
