"""Schemathesis against the live ingest and edge, from their own /openapi.json."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.helpers import ADMIN_TOKEN, API_KEY, ROOT
from tests.topology import env, write_config

# One worker starts the services (the module fixture), under pytest-xdist too.
pytestmark = [pytest.mark.timeout(300), pytest.mark.xdist_group("schemathesis")]


def _start(argv: list[str], tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen([sys.executable, "-m", "scripts", *argv], env=env(), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().decode().split()[2]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    tmp = tmp_path_factory.mktemp("schemathesis")
    config, _ = write_config(tmp, f'kind = "fs"\npath = "{tmp / "origin"}"')
    procs = []
    urls = {}
    for name, argv in (("ingest", ["ingest"]), ("edge", ["edge", "--node", "eu-west-a"])):
        proc, url = _start([*argv, "--config", str(config)], tmp)
        procs.append(proc)
        urls[name] = url
    yield urls
    for p in procs:
        p.terminate()
        p.wait(20)


BOUNDED = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck),
                   database=None)


def _auth(case: Any) -> dict[str, str]:
    token = ADMIN_TOKEN if case.method == "DELETE" or "_admin" in case.path else API_KEY
    return {"Authorization": f"Bearer {token}"}


def _run_all(base_url: str) -> list[str]:
    """Every operation of the live service's own document, with generated cases; checks:
    no 5xx, statuses, content types and bodies as documented."""
    schema = schemathesis.openapi.from_url(base_url + "/openapi.json")
    tested = []
    for result in schema.get_all_operations():
        op = result.ok()

        @given(case=op.as_strategy())
        @BOUNDED
        def run(case: Any) -> None:
            # "Schema-valid data must be accepted" cannot hold for an image API: the schema
            # says "binary", the contract says 415 unless the bytes are an image.
            case.call_and_validate(base_url=base_url, headers=_auth(case),
                                   excluded_checks=[positive_data_acceptance])

        run()
        tested.append(f"{op.method.upper()} {op.path}")
    return tested


def test_ingest_conforms_to_its_openapi(live: dict[str, str]) -> None:
    assert "POST /v1/images" in _run_all(live["ingest"])


def test_edge_conforms_to_its_openapi(live: dict[str, str]) -> None:
    assert "GET /i/{id}/{name}" in _run_all(live["edge"])
