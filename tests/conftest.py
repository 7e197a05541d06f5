from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from config.schema import OriginConfig
from origin import Origin, open_origin
from tests.proxy import CountingProxy
from tests.s3server import S3Server, suite_server


@pytest.fixture(autouse=True)
def _isolate_aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # No ambient credentials or profiles may leak into a test (aiobotocore's suite does this).
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    server = suite_server()
    print(f"\nS3 test server: {server.kind} at {server.endpoint}")
    yield server
    server.stop()


def s3_origin_config(server: S3Server, **over: object) -> OriginConfig:
    fields: dict[str, object] = dict(
        kind="s3",
        path=Path("/nonexistent"),
        bucket=f"t-{uuid.uuid4().hex[:20]}",
        endpoint_url=server.endpoint,
        region="us-east-1",
        access_key=server.access_key,
        secret_key=server.secret_key,
        create_bucket=True,
        connect_timeout=2.0,
        read_timeout=5.0,
        max_attempts=2,
        max_pool_connections=16,
    )
    fields.update(over)
    return OriginConfig(**fields)  # type: ignore[arg-type]


def fs_origin_config(path: Path) -> OriginConfig:
    return OriginConfig("fs", path, "unused", None, "us-east-1", None, None, False,
                        1.0, 1.0, 1, 1)


@pytest.fixture(params=["fs", "s3"])
def origin_cfg(request: pytest.FixtureRequest, tmp_path: Path) -> OriginConfig:
    if request.param == "fs":
        return fs_origin_config(tmp_path / "origin")
    return s3_origin_config(request.getfixturevalue("s3_server"))


@pytest.fixture
async def origin(origin_cfg: OriginConfig) -> AsyncIterator[Origin]:
    async with open_origin(origin_cfg) as o:
        yield o


@pytest.fixture
async def proxy(s3_server: S3Server) -> AsyncIterator[CountingProxy]:
    """The suite's S3 server behind a counting, stoppable reverse proxy."""
    p = CountingProxy(s3_server.endpoint)
    await p.start()
    yield p
    await p.close()
