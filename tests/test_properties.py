"""Property-based tests of the pure parsers: names, negotiation, ranges, config."""

from __future__ import annotations

import copy
import re
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
SECTIONS = ("origin", "ingest", "transcode", "edge", "router", "secrets")
# The loader's functions and the table each reads: the keys are taken from its source, so a
# new key is tested the day it is added.
READERS = {"_secrets": "secrets", "_origin": "origin", "_ingest": "ingest",
           "_transcode": "transcode", "_edge_settings": "edge", "_cors": "edge",
           "_router": "router"}


def _known_keys() -> list[tuple[str, str]]:
    source = (ROOT / "config/loader.py").read_text()
    found: set[tuple[str, str]] = set()
    for chunk in source.split("\ndef ")[1:]:
        section = READERS.get(chunk.split("(", 1)[0])
        if section:
            for m in re.finditer(r'(?:t\.\w+|_env_name)\((?:t, )?"(\w+)"', chunk):
                found.add((section, m.group(1)))
    return sorted(found)


KNOWN = _known_keys()


def test_the_known_keys_cover_every_section() -> None:
    for section in SECTIONS:
        assert sum(s == section for s, _ in KNOWN) >= 2, section
    assert ("edge", "origin_timeout") in KNOWN and ("origin", "max_attempts") in KNOWN


def _parse_with(section: str, key: str, value: Any) -> ConfigError | None:
    raw = copy.deepcopy(DEFAULT)
    raw.setdefault(section, {})[key] = value
    try:
        parse_config(raw, {}, Path("t.toml"))
    except ConfigError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(f"{exc.key}: ")
        return exc
    # any other exception type fails the test: a config must never crash the loader
    return None


@settings(max_examples=400)
@given(st.sampled_from(KNOWN), SCALARS)
def test_a_bad_value_for_a_real_key_is_refused_naming_that_key(
        where: tuple[str, str], value: Any) -> None:
    section, key = where
    exc = _parse_with(section, key, value)
    if exc is None:
        return  # the value happened to be valid for this key
    full = f"{section}.{key}"
    if key in ("port", "host"):  # a clash may name the other side of it
        assert exc.key == full or exc.key.endswith(".port"), exc
    elif key == "ondemand_width_min":  # valid alone, above the max: the pair is named
        assert exc.key in (full, "transcode.ondemand_width_max") and full in str(exc), exc
    else:
        assert exc.key == full or exc.key.startswith((full + "[", full + ".")), exc


@settings(max_examples=50)
@given(st.sampled_from(SECTIONS),
       st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=20), SCALARS)
def test_an_unknown_key_is_refused_naming_it(section: str, key: str, value: Any) -> None:
    if (section, key) in KNOWN:
        return
    exc = _parse_with(section, key, value)
    assert exc is not None and exc.key == f"{section}.{key}", exc


@pytest.mark.parametrize("key", ["variants/../x", "a//b", "A/b", "/abs", "x/./y", ""])
def test_bad_origin_keys(key: str) -> None:
    assert not is_valid_key(key)
