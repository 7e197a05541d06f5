"""Property-based tests of the pure parsers: names, negotiation, ranges, config."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.errors import BadRequest, ConfigError, NotFound, RangeNotSatisfiable
from config.loader import parse_config
from edge.paths import KNOWN_EXTS, negotiate, resolve
from origin.base import resolve_range
from origin.keys import is_valid_key
from tests.helpers import make_config

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = tomllib.loads((ROOT / "config/local.toml").read_text())
CFG = make_config(Path("/tmp/unused-mediacdn-props"))


@given(st.text(max_size=100), st.text(max_size=60), st.text(max_size=200))
def test_resolve_only_yields_valid_cache_keys(image_id: str, name: str, accept: str) -> None:
    try:
        target = resolve(image_id, name, accept, CFG.transcode)
    except (BadRequest, NotFound):
        return
    assert target.ext in CFG.transcode.formats
    assert CFG.transcode.variant(target.variant) is not None
    assert is_valid_key(f"variants/{target.cache_key}")
    assert ".." not in target.cache_key and "\x00" not in target.cache_key


@given(st.lists(st.sampled_from(["image/avif", "image/webp", "image/jpeg", "*/*", "image/*",
                                 "text/html", "image/png"]), max_size=6),
       st.lists(st.sampled_from(["", ";q=0", ";q=0.5", ";q=1"]), min_size=6, max_size=6))
def test_negotiation_always_picks_an_enabled_format(types: list[str], qs: list[str]) -> None:
    accept = ", ".join(t + q for t, q in zip(types, qs, strict=False))
    for formats in (("webp", "jpg"), ("avif", "webp", "jpg"), ("jpg",)):
        chosen = negotiate(accept, formats)
        assert chosen in formats and chosen in KNOWN_EXTS
        if "image/webp" in types and "webp" in formats and "jpg" in formats:
            i = types.index("image/webp")
            if qs[i] != ";q=0" and "image/avif" not in types:
                assert chosen == "webp"


@given(st.integers(0, 10_000), st.one_of(st.none(), st.integers(-20_000, 20_000)),
       st.one_of(st.none(), st.integers(0, 30_000)))
def test_ranges_stay_inside_the_object(size: int, start: int | None, stop: int | None) -> None:
    rng = None if start is None and stop is None else slice(start, stop)
    try:
        a, b = resolve_range(rng, size)
    except RangeNotSatisfiable as exc:
        assert exc.headers["Content-Range"] == f"bytes */{size}"
        return
    assert 0 <= a <= b <= size
    if rng is None:
        assert (a, b) == (0, size)


SCALARS = st.one_of(st.integers(-10, 70_000), st.text(max_size=12), st.booleans(),
                    st.floats(allow_nan=False, width=16), st.lists(st.integers(), max_size=2))


@settings(max_examples=300)
@given(st.sampled_from(["origin", "ingest", "transcode", "edge", "router", "secrets"]),
       st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=20), SCALARS)
def test_config_loader_accepts_or_names_a_key(section: str, key: str, value: Any) -> None:
    raw = copy.deepcopy(DEFAULT)
    raw.setdefault(section, {})[key] = value
    try:
        parse_config(raw, {}, Path("t.toml"))
    except ConfigError as exc:
        assert exc.key and "\n" not in str(exc)
        # the key named is a config key (a clash may name the other side of it)
        assert exc.key.split(".")[0].split("[")[0] in {
            "origin", "ingest", "transcode", "edge", "edges", "router", "secrets", "regions"}
    # any other exception type fails the test: a config must never crash the loader


@pytest.mark.parametrize("key", ["variants/../x", "a//b", "A/b", "/abs", "x/./y", ""])
def test_bad_origin_keys(key: str) -> None:
    assert not is_valid_key(key)
