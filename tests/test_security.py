"""Who gets in: tokens on every protected route, CORS, header limits, hostile paths."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from common.hashing import content_id
from config import Config
from edge.app import create_app as create_edge
from ingest.app import create_app as create_ingest
from tests.helpers import ADMIN, ADMIN_TOKEN, AUTH, make_config, secrets_for

Client = TestClient[Any, Any]
MakeClient = Callable[..., Awaitable[Client]]
ID = content_id(b"x")
NO = [{}, {"Authorization": "Bearer "}, {"Authorization": "Bearer nope"},
      {"Authorization": "Token " + ADMIN_TOKEN}, {"Authorization": ADMIN_TOKEN},
      {"Authorization": f"Bearer {ADMIN_TOKEN}x"}]


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return make_config(tmp_path)


@pytest.mark.parametrize("headers", [*NO, ADMIN], ids=lambda h: str(h)[:30])
async def test_upload_and_hash_check_need_the_api_key(aiohttp_client: MakeClient, cfg: Config,
                                                      headers: dict[str, str]) -> None:
    client = await aiohttp_client(create_ingest(cfg))
    async with client.post("/v1/images", data=b"\xff\xd8\xff", headers=headers) as r:
        assert r.status == 401 and r.content_type == "application/problem+json"
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    async with client.head(f"/v1/images/{ID}", headers=headers) as r:
        assert r.status == 401


@pytest.mark.parametrize("headers", [*NO, AUTH], ids=lambda h: str(h)[:30])
async def test_delete_needs_the_admin_token(aiohttp_client: MakeClient, cfg: Config,
                                            headers: dict[str, str]) -> None:
    client = await aiohttp_client(create_ingest(cfg))
    async with client.delete(f"/v1/images/{ID}", headers=headers) as r:
        assert r.status == 401


@pytest.mark.parametrize("headers", [*NO, AUTH], ids=lambda h: str(h)[:30])
async def test_edge_admin_needs_the_admin_token(aiohttp_client: MakeClient, cfg: Config,
                                                headers: dict[str, str]) -> None:
    client = await aiohttp_client(create_edge(cfg, cfg.edges[0]))
    async with client.post("/_admin/purge", json={"all": True}, headers=headers) as r:
        assert r.status == 401
    async with client.get("/_admin/stats", headers=headers) as r:
        assert r.status == 401


async def test_tokens_are_not_interchangeable_between_deployments(
    aiohttp_client: MakeClient, tmp_path: Path
) -> None:
    other = replace(make_config(tmp_path / "b"), secrets=secrets_for({
        "MEDIACDN_API_KEY": "another-deployments-api-key",
        "MEDIACDN_ADMIN_TOKEN": "another-deployments-admin-token"}))
    client = await aiohttp_client(create_ingest(other))
    async with client.post("/v1/images", data=b"x", headers=AUTH) as r:
        assert r.status == 401


async def test_cors_default_allows_get_from_any_origin_without_credentials(
    aiohttp_client: MakeClient, cfg: Config
) -> None:
    client = await aiohttp_client(create_edge(cfg, cfg.edges[0]))
    async with client.get(f"/i/{ID}/w320.webp", headers={"Origin": "https://a.example"}) as r:
        assert r.status == 404  # even errors are readable cross-origin
        assert r.headers["Access-Control-Allow-Origin"] == "*"
        assert "Access-Control-Allow-Credentials" not in r.headers
    async with client.options(f"/i/{ID}/w320.webp", headers={
            "Origin": "https://a.example", "Access-Control-Request-Method": "GET"}) as r:
        assert r.status == 204
        assert r.headers["Access-Control-Allow-Methods"] == "GET, HEAD"
        assert "Access-Control-Allow-Credentials" not in r.headers
    async with client.post(f"/i/{ID}/w320.webp") as r:
        assert r.status == 405 and r.headers["Allow"] == "GET, HEAD"


async def test_cors_can_be_one_origin_or_off(aiohttp_client: MakeClient, cfg: Config) -> None:
    one = replace(cfg, edge=replace(cfg.edge, cors_allow_origin="https://shop.example"))
    client = await aiohttp_client(create_edge(one, one.edges[0]))
    async with client.get(f"/i/{ID}/w320.webp") as r:
        assert r.headers["Access-Control-Allow-Origin"] == "https://shop.example"
        assert "Origin" in r.headers["Vary"]
    off = replace(cfg, edge=replace(cfg.edge, cors_allow_origin=""))
    client = await aiohttp_client(create_edge(off, off.edges[0]))
    async with client.get(f"/i/{ID}/w320.webp") as r:
        assert "Access-Control-Allow-Origin" not in r.headers
    async with client.options(f"/i/{ID}/w320.webp") as r:
        assert r.status == 405


async def test_oversized_request_line_and_headers_are_refused(aiohttp_client: MakeClient,
                                                              cfg: Config) -> None:
    client = await aiohttp_client(create_edge(cfg, cfg.edges[0]))
    async with client.get("/i/" + "a" * 20_000 + "/w320.webp") as r:
        assert 400 <= r.status < 500
    async with client.get(f"/i/{ID}/w320.webp", headers={"X-Big": "b" * 20_000}) as r:
        assert 400 <= r.status < 500
    many = {f"X-H{i}": "v" for i in range(300)}
    async with client.get(f"/i/{ID}/w320.webp", headers=many) as r:
        assert 400 <= r.status < 500


SEGMENT = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="/?#"),
                  max_size=80)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(image_id=st.one_of(SEGMENT, st.just(ID)), name=SEGMENT)
@example(image_id="\n", name="")  # found by this test: a text/plain 404 from aiohttp
async def test_any_path_gets_a_problem_never_a_500(
    aiohttp_client: MakeClient, tmp_path: Path, image_id: str, name: str
) -> None:
    import urllib.parse

    cfg = make_config(tmp_path)
    client = await aiohttp_client(create_edge(cfg, cfg.edges[0]))
    path = f"/i/{urllib.parse.quote(image_id, safe='')}/{urllib.parse.quote(name, safe='')}"
    # A key built from unvalidated input would be refused by the origin's own key check
    # and surface as a 500: every answer here must be the contract's 4xx problem.
    async with client.get(path) as r:
        assert r.status in (400, 404, 405), (path, r.status)
        assert r.content_type == "application/problem+json", (path, r.status, await r.text())
    await client.close()


async def test_no_client_supplied_url_is_ever_fetched(aiohttp_client: MakeClient,
                                                      tmp_path: Path) -> None:
    """SSRF: upstreams come from the config only (origin, the region's owner edge)."""
    import asyncio

    from edge.router.app import create_app as create_router
    hits: list[str] = []

    async def trap(request: Any) -> Any:
        from aiohttp import web

        hits.append(request.path)
        return web.Response(text="secret")

    from aiohttp import web

    trap_app = web.Application()
    trap_app.router.add_route("*", "/{tail:.*}", trap)
    trap_client = await aiohttp_client(trap_app)
    trap_url = str(trap_client.make_url("/latest/meta-data"))

    cfg = make_config(tmp_path)
    edge = await aiohttp_client(create_edge(cfg, cfg.edges[0]))
    host, port = edge.server.host, edge.server.port
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {trap_url} HTTP/1.1\r\nHost: {trap_url.split('/')[2]}\r\n"
                 "Connection: close\r\n\r\n".encode())
    status_line = (await reader.readline()).decode()
    writer.close()
    assert status_line.split()[1] in ("400", "404")
    for headers in ({"X-MediaCDN-Peer": trap_url}, {"Host": trap_url.split("/")[2]},
                    {"X-Forwarded-Host": trap_url.split("/")[2]}, {"Referer": trap_url}):
        async with edge.get(f"/i/{ID}/w320.webp", headers=headers) as r:
            assert r.status == 404
    router = await aiohttp_client(create_router(cfg))
    for query in (f"region={trap_url}", f"id={trap_url}", f"country={trap_url}"):
        async with router.get(f"/v1/route?{query}") as r:
            assert r.status in (200, 400, 503)  # 503: no edge runs in this test
    assert hits == []  # nothing anywhere followed a URL the client gave
