"""Variants on demand, as a user meets them: the ladder changed after the upload, and every
edge derives the new variant on its first request (once in all), verified, listed in the
manifest from then on; a variant dropped from the config answers 404, bytes untouched.

Real processes on loopback (ingest, three edges) against the suite's S3 server behind a
counting proxy.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient
from PIL import Image

from common.hashing import content_id
from common.signing import sign_path
from edge.router.app import create_app as create_router
from ingest.app import create_app
from tests import images
from tests.helpers import ADMIN, AUTH, ENV, make_config, secrets_for
from tests.test_invalidation import Net, net  # noqa: F401  (the fixture)

pytestmark = pytest.mark.timeout(240)
EDGES = (("e1", "eu"), ("e2", "eu"), ("e3", "us"))


def ladder(*variants: tuple[str, int]) -> str:
    return "\n[transcode]\n" + "".join(
        f'[[transcode.variants]]\nname = "{n}"\nwidth = {w}\n' for n, w in variants)


async def restart_with(net: Net, variants: str) -> None:  # noqa: F811
    names = list(net.edges) or [n for n, _ in EDGES]
    for svc in [*net.edges.values(), *([net.ingest] if net.ingest else [])]:
        await svc.stop()
    net.config.write_text(net.config.read_text().split("\n[transcode]\n")[0] + variants)
    await net.start_ingest()
    await asyncio.gather(*(net.start_edge(n) for n in names))


def derivations(metrics: str) -> float:
    m = re.search(r"^mediacdn_ingest_derivations_total (\S+)$", metrics, re.M)
    assert m is not None, "no mediacdn_ingest_derivations_total metric"
    return float(m.group(1))


async def test_a_variant_added_to_the_ladder_is_derived_once_for_100_requests_on_3_edges(
        net: Net) -> None:  # noqa: F811
    net.write(edges=EDGES)
    net.config.write_text(net.config.read_text() + ladder(("w640", 640), ("w320", 320)))
    await net.start_ingest()
    manifest = await net.upload(images.jpeg(images.photo(1200, 800)))
    image_id = str(manifest["id"])
    await restart_with(net, ladder(("hero", 1000), ("w640", 640), ("w320", 320)))
    before_puts = net.proxy.counts.copy()

    async def get(i: int) -> tuple[int, str, bytes]:
        url = net.url(EDGES[i % 3][0]) + f"/i/{image_id}/hero.webp"
        async with net.http.get(url) as r:
            return r.status, r.headers.get("X-Cache", ""), await r.read()

    answers = await asyncio.gather(*(get(i) for i in range(100)))
    assert [a[0] for a in answers] == [200] * 100, {a[0] for a in answers}
    bodies = {a[2] for a in answers}
    assert len(bodies) == 1
    body = bodies.pop()
    with Image.open(io.BytesIO(body)) as img:
        assert (img.format, img.size) == ("WEBP", (1000, 667))
    assert "MISS" in {a[1] for a in answers}
    assert net.ingest is not None
    async with net.http.get(net.ingest.url + "/metrics", headers=ADMIN) as r:
        assert derivations(await r.text()) == 1
    key = f"/variants/{image_id}/hero.webp"
    puts = {p: n - before_puts[(m, p)] for (m, p), n in net.proxy.counts.items() if m == "PUT"}
    assert [n for p, n in puts.items() if p.endswith(key)] == [1], puts
    async with net.http.get(net.ingest.url + f"/v1/images/{image_id}") as r:
        listed = [v for v in (await r.json())["variants"]
                  if (v["name"], v["format"]) == ("hero", "webp")]
    assert len(listed) == 1 and listed[0]["blake3"] == content_id(body)
    assert (listed[0]["width"], listed[0]["bytes"]) == (1000, len(body))
    # The derive endpoint is the edges' alone: the API key or nothing gets 401.
    for headers in ({}, AUTH):
        async with net.http.post(net.ingest.url + f"/_internal/derive/{image_id}/w320.jpg",
                                 headers=headers) as r:
            assert r.status == 401


async def test_a_variant_dropped_from_the_ladder_answers_404_and_keeps_its_bytes(
        net: Net) -> None:  # noqa: F811
    net.write(edges=EDGES)
    net.config.write_text(net.config.read_text() + ladder(("big", 640), ("w320", 320)))
    await net.start_ingest()
    manifest = await net.upload(images.jpeg(images.photo(1200, 800)))
    image_id = str(manifest["id"])
    await restart_with(net, ladder(("w320", 320)))
    for edge, _ in EDGES:
        status, _, _ = await net.get(net.url(edge) + f"/i/{image_id}/big.webp")
        assert status == 404
        status, _, _ = await net.get(net.url(edge) + f"/i/{image_id}/w320.webp")
        assert status == 200
    assert not [p for (m, p) in net.proxy.counts if m == "DELETE"]
    await restart_with(net, ladder(("big", 640), ("w320", 320)))
    status, cache, _ = await net.get(net.url("e1") + f"/i/{image_id}/big.webp")
    assert (status, cache) == (200, "MISS")
    assert net.ingest is not None
    async with net.http.get(net.ingest.url + "/metrics", headers=ADMIN) as r:
        assert derivations(await r.text()) == 0  # its bytes were still there


def allowed_widths() -> set[str]:
    """The default allow-list, spelled out independently of the code under test."""
    names = {f"w{n}" for n in range(100, 2401, 20)}
    return names | {f"w{n}@{d}x" for n in range(100, 2401, 20) for d in (1, 2, 3)}


async def problem(n: Net, url: str) -> tuple[int, str]:
    async with n.http.get(url) as r:
        await r.read()
        return r.status, r.headers.get("Content-Type", "")


async def test_widths_on_demand_obey_the_allow_list_and_random_names_write_nothing(
        net: Net) -> None:  # noqa: F811
    net.write(edges=EDGES[:2])
    await net.start_ingest()
    await asyncio.gather(*(net.start_edge(n) for n, _ in EDGES[:2]))
    manifest = await net.upload(images.jpeg(images.photo(1200, 800)))
    base = net.url("e1") + f"/i/{manifest['id']}/"
    for name, size in (("w500.webp", (500, 333)), ("w500@2x.webp", (1000, 667)),
                       ("w640@3x.jpg", (1200, 800)), ("w2400.jpg", (1200, 800))):
        async with net.http.get(base + name) as r:
            assert (r.status, r.headers["X-Cache"]) == (200, "MISS"), name
            with Image.open(io.BytesIO(await r.read())) as img:
                assert img.size == size, name  # N x D, never wider than the source
    async with net.http.get(net.url("e2") + f"/i/{manifest['id']}/w500@2x.webp") as r:
        assert r.status == 200  # the other edge reads what the first one had derived
    for name, status in (("w510.webp", 404), ("w80.webp", 404), ("w2420.webp", 404),
                         ("w640@4x.webp", 404), ("w640@0x.webp", 404),
                         ("w640@2.webp", 400), ("w640@x.webp", 400), ("w@2x.webp", 404),
                         ("w640@@2x.webp", 400), ("w640@2x.gif", 400)):
        assert await problem(net, base + name) == (status, "application/problem+json"), name
    writes = sum(n for (m, _), n in net.proxy.counts.items() if m in ("PUT", "POST"))
    rng = random.Random(10)
    alphabet = "w0123456789@x-_as."
    names: set[str] = set()
    while len(names) < 10_000:
        name = rng.choice(["w", "w", "s", ""]) + "".join(
            rng.choice(alphabet) for _ in range(rng.randint(1, 9)))
        if name.partition(".")[0] not in allowed_widths() | {"w1080", "w640", "w320", "s150"}:
            names.add(name + rng.choice([".webp", ".jpg", ""]))
    sem = asyncio.Semaphore(32)

    async def one(name: str) -> int:
        async with sem:
            url = net.url(EDGES[len(name) % 2][0]) + f"/i/{manifest['id']}/{quote(name)}"
            async with net.http.get(url) as r:
                await r.read()
                return r.status

    statuses = await asyncio.gather(*(one(n) for n in sorted(names)))
    assert max(statuses) < 500, sorted(set(statuses))
    assert set(statuses) <= {400, 404}, sorted(set(statuses))
    assert sum(n for (m, _), n in net.proxy.counts.items() if m in ("PUT", "POST")) == writes


async def test_the_manifest_gives_a_srcset_per_format_over_the_configured_widths(
        tmp_path: Path, aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]]) -> None:
    cfg = make_config(tmp_path)
    client = await aiohttp_client(create_app(cfg))
    async with client.post("/v1/images", data=images.jpeg(images.photo(800, 400)),
                           headers=AUTH) as r:
        assert r.status == 201
        manifest = await r.json()
    base = cfg.ingest.public_base_url + f"/i/{manifest['id']}/"
    widths = {(v["name"], v["format"]): v["width"] for v in manifest["variants"]}
    assert set(manifest["srcset"]) == {"webp", "jpg"}
    for fmt, value in manifest["srcset"].items():
        # w1080 of an 800 px photo is 800 px wide: the descriptor says so; s150 is a crop.
        assert value == ", ".join(f"{base}{n}.{fmt} {w}w" for n, w in
                                  (("w320", 320), ("w640", 640), ("w1080", 800)))
        for n in ("w320", "w640", "w1080"):
            assert f"{base}{n}.{fmt} {widths[(n, fmt)]}w" in value
    async with client.get(f"/v1/images/{manifest['id']}") as r:
        assert (await r.json())["srcset"] == manifest["srcset"]


NEW_KEY, OLD_KEY = "signing-key-new-0123456789", "signing-key-old-0123456789"


async def test_signed_transforms_give_the_asked_geometry_and_refuse_before_any_work(
        net: Net) -> None:  # noqa: F811
    net.write(edges=EDGES[:2])
    net.config.write_text(net.config.read_text() + """
[secrets]
signing_key_envs = ["MEDIACDN_SIGNING_KEY", "MEDIACDN_SIGNING_KEY_OLD"]
[transcode]
transform_max_width = 2000
transform_max_height = 2000
transform_rate_per_minute = 6
""")
    net.env.update(MEDIACDN_SIGNING_KEY=NEW_KEY, MEDIACDN_SIGNING_KEY_OLD=OLD_KEY)
    await net.start_ingest()
    await asyncio.gather(*(net.start_edge(n) for n, _ in EDGES[:2]))
    assert net.ingest is not None
    image_id = str((await net.upload(images.jpeg(images.photo(1200, 800))))["id"])

    async def fetch(path: str, edge: str = "e1") -> tuple[int, Mapping[str, str], bytes]:
        async with net.http.get(net.url(edge) + path) as r:
            return r.status, r.headers.copy(), await r.read()

    async def counted() -> tuple[float, int]:
        async with net.http.get(net.ingest.url + "/metrics", headers=ADMIN) as r:  # type: ignore[union-attr]
            made = derivations(await r.text())
        return made, sum(n for (m, _), n in net.proxy.counts.items() if m == "PUT")

    # Refused before any work: tampered, unsigned, a key the config does not name (403);
    # over the limits or malformed but signed (400).
    good = sign_path(NEW_KEY, image_id, "w=300,h=300,fit=cover", "webp")
    refused = {
        good.replace("w=300,h=300", "w=301,h=300"): 403,
        f"/i/{image_id}/t/unsigned/w=300.webp": 403,
        f"/i/{image_id}/t//w=300.webp": 403,
        sign_path("some-other-key-0123456789", image_id, "w=300", "webp"): 403,
        sign_path(NEW_KEY, image_id, "w=2001", "webp"): 400,
        sign_path(NEW_KEY, image_id, "w=300,h=5000,fit=cover", "jpg"): 400,
        sign_path(NEW_KEY, image_id, "h=10,w=10", "webp"): 400,
        sign_path(NEW_KEY, image_id, "w=10,fit=cover", "webp"): 400,
        sign_path(NEW_KEY, image_id, "w=10,g=fp:2:0", "webp"): 400,
    }
    before = await counted()
    for path, status in refused.items():
        got, headers, _ = await fetch(path)
        assert (got, headers["Content-Type"]) == (status, "application/problem+json"), path
    assert await counted() == before  # nothing derived, nothing written

    # Valid: the geometry asked for, decoded; ETag = blake3; immutable; old key still valid.
    cases = [(good, "WEBP", (300, 300)),
             (sign_path(OLD_KEY, image_id, "w=200,h=100,fit=cover,g=fp:0.2:0.8,q=60", "jpg"),
              "JPEG", (200, 100)),
             (sign_path(NEW_KEY, image_id, "w=500", "webp"), "WEBP", (500, 333)),
             (sign_path(NEW_KEY, image_id, "w=400,h=400,fit=contain", "webp"), "WEBP",
              (400, 400))]
    for path, fmt, size in cases:
        status, headers, body = await fetch(path)
        assert status == 200, (path, body[:200])
        assert headers["ETag"] == f'"{content_id(body)}"'
        assert "immutable" in headers["Cache-Control"]
        with Image.open(io.BytesIO(body)) as img:
            assert (img.format, img.size) == (fmt, size), path
    assert (await counted())[0] == before[0] + 4

    # One derivation for 20 concurrent first requests on two edges.
    shared = sign_path(NEW_KEY, image_id, "w=250,h=250,fit=cover,g=attention", "webp")
    answers = await asyncio.gather(*(fetch(shared, EDGES[i % 2][0]) for i in range(20)))
    assert {a[0] for a in answers} == {200} and len({a[2] for a in answers}) == 1
    made, puts = await counted()
    assert made == before[0] + 5 and puts == before[1] + 5
    # The per-image rate: the 6th derivation in a minute passes, the 7th is 429.
    status, _, _ = await fetch(sign_path(NEW_KEY, image_id, "w=120", "webp"))
    assert status == 200
    status, headers, _ = await fetch(sign_path(NEW_KEY, image_id, "w=140", "webp"))
    assert status == 429 and int(headers["Retry-After"]) > 0
    status, _, _ = await fetch(good, "e2")  # what exists is still served
    assert status == 200

    code, out, _ = await net.cli("sign", image_id, "w=300,h=300,fit=cover.webp")
    assert (code, out.strip()) == (0, good)
    code, _, err = await net.cli("sign", image_id, "w=99999.webp")
    assert code == 2 and err.count("\n") == 1


def test_the_signing_snippet_in_the_api_doc_matches_sign_path() -> None:
    api = (Path(__file__).resolve().parents[1] / "docs/api.md").read_text()
    snippet = api.split("def sign_path", 1)[1].split("```", 1)[0].split("\nurl = ", 1)[0]
    scope: dict[str, Any] = {}
    exec("import base64, hashlib, hmac\ndef sign_path" + snippet, scope)
    for spec, ext in (("w=800,h=600,fit=cover,q=70", "webp"), ("w=10,g=fp:0.5:1", "jpg")):
        assert scope["sign_path"](NEW_KEY, "a" * 64, spec, ext) == sign_path(
            NEW_KEY, "a" * 64, spec, ext)


async def test_reprocess_derives_what_a_new_ladder_adds_once_and_resumes(
        net: Net) -> None:  # noqa: F811
    net.write(edges=EDGES[:1])
    net.config.write_text(net.config.read_text() + ladder(("w640", 640), ("w320", 320)))
    await net.start_ingest()
    await net.start_edge("e1")
    ids = [str((await net.upload(images.jpeg(images.photo(1200 + 8 * i, 800))))["id"])
           for i in range(5)]
    await restart_with(net, ladder(("hero", 1000), ("w640", 640), ("w320", 320)))
    assert net.ingest is not None

    def puts() -> int:
        return sum(n for (m, p), n in net.proxy.counts.items()
                   if m == "PUT" and "/variants/" in p)

    before = puts()
    code, out, _ = await net.cli("reprocess", ids[0], ids[1], "--json")  # then "interrupted"
    assert code == 0, out
    assert puts() == before + 4
    code, out, err = await net.cli("reprocess", "--all", "--json", "--concurrency", "2")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    by_id = {r["id"]: r for r in lines if "id" in r}
    assert set(by_id) == set(ids)
    for image_id in ids:  # the first two were done already: nothing redone for them
        assert sorted(by_id[image_id]["derived"]) == (
            [] if image_id in ids[:2] else ["hero.jpg", "hero.webp"]), image_id
    assert lines[-1]["summary"]["images"] == 5 and lines[-1]["summary"]["failed"] == 0
    assert puts() == before + 10
    async with net.http.get(net.ingest.url + "/metrics", headers=ADMIN) as r:
        assert derivations(await r.text()) == 10
    async with net.http.get(net.ingest.url + f"/v1/images/{ids[4]}") as r:
        hero = [v for v in (await r.json())["variants"] if v["name"] == "hero"]
    assert sorted(v["format"] for v in hero) == ["jpg", "webp"]
    status, cache, _ = await net.get(net.url("e1") + f"/i/{ids[4]}/hero.webp")
    assert (status, cache) == (200, "MISS")
    # Usage errors: one line, exit 2.
    for argv in (("reprocess",), ("reprocess", "--all", ids[0]),
                 ("reprocess", ids[0], "--variants", "nope")):
        code, _, err = await net.cli(*argv)
        assert code == 2 and err.count("\n") == 1, (argv, err)


async def test_the_router_checks_signatures_and_knows_widths_on_demand(
        tmp_path: Path, aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]]) -> None:
    cfg = make_config(tmp_path)
    cfg = replace(cfg, secrets=secrets_for({**ENV, "MEDIACDN_SIGNING_KEY": NEW_KEY}))
    client = await aiohttp_client(create_router(cfg))
    image_id = "b" * 64
    good = sign_path(NEW_KEY, image_id, "w=300,h=200,fit=cover", "webp")
    answers = {
        good: (302, 503),  # 503 while no edge is healthy yet: what matters is it is not 403
        good.replace("w=300", "w=301"): (403,),
        f"/i/{image_id}/t/nosig/w=300.webp": (403,),
        f"/i/{image_id}/w640@2x.webp": (302, 503),
        f"/i/{image_id}/w641.webp": (404,),
    }
    for path, expected in answers.items():
        async with client.get(path, allow_redirects=False) as r:
            assert r.status in expected, (path, r.status, await r.text())
            if r.status == 302:
                assert r.headers["Location"].endswith(path)
