"""The docs and operator artefacts against the running code: every config key the loader
accepts is in docs/config.md, every metric a running service exports is in docs/metrics.md,
the dashboard and alerts name only exported metrics, every OpenAPI route is in docs/api.md,
every alert has a runbook, and links between the docs resolve."""

from __future__ import annotations

import json
import re
import select
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from scripts import gen_config_doc
from tests.helpers import ROOT
from tests.topology import MEDIACDN, env, write_config

# One worker starts the services (the module fixture), under pytest-xdist too.
pytestmark = pytest.mark.xdist_group("docs")
DOCS = ROOT / "docs"
SERVICES = {"ingest": ["ingest"], "edge": ["edge", "--node", "eu-west-a"], "router": ["router"]}
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count",
                                                             "_created"), "gauge": ("",)}


def _announced(proc: subprocess.Popen[str], timeout: float = 30) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"{proc.args} did not announce itself in {timeout} s"
    line = proc.stdout.readline().split()
    assert len(line) == 3, f"{proc.args} announced {line}"
    return line[2]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """ingest, one edge and the router, each its own `mediacdn` process, on free ports."""
    tmp = tmp_path_factory.mktemp("live")
    path, _ = write_config(tmp, f'kind = "fs"\npath = "{tmp / "origin"}"')
    procs: dict[str, subprocess.Popen[str]] = {}
    try:
        for name, argv in SERVICES.items():
            procs[name] = subprocess.Popen(
                [*MEDIACDN, *argv, "--config", str(path)], env=env(), cwd=ROOT, text=True,
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        yield {name: _announced(p) for name, p in procs.items()}
    finally:
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        for p in procs.values():
            p.wait(20)


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as r:
        body: bytes = r.read()
        return body


def _wait_ready(url: str, limit: float = 15) -> None:
    deadline = time.monotonic() + limit
    while True:
        try:
            _get(url + "/readyz")
            return
        except urllib.error.HTTPError:
            assert time.monotonic() < deadline, f"{url} not ready in {limit} s"
            time.sleep(0.1)


@pytest.fixture(scope="module")
def exported(live: dict[str, str]) -> dict[str, str]:
    """Metric family -> type, as the running services export them."""
    families: dict[str, str] = {}
    for url in live.values():
        for f in text_string_to_metric_families(_get(url + "/metrics").decode()):
            families[f.name] = f.type
    # The text format shows a counter's or histogram's `_created` sample as a gauge family
    # of its own: part of its parent, not a metric to document.
    return {n: t for n, t in families.items()
            if not (n.endswith("_created") and n.removesuffix("_created") in families)}


def _sample_names(exported: dict[str, str]) -> set[str]:
    return {name + s for name, kind in exported.items() for s in SUFFIXES.get(kind, ("",))}


def _doc_rows(text: str) -> dict[str, str]:
    """`| \\`name\\` | type | ...` rows of a markdown table: name -> type."""
    return {m[1]: m[2].strip() for m in re.finditer(r"^\| `([a-z_:]+)` \| ([a-z]+) \|", text,
                                                     re.M)}


def test_metrics_doc_lists_every_exported_metric_with_its_type(exported: dict[str, str]) -> None:
    assert any(n.startswith("mediacdn_edge_") for n in exported)
    assert any(n.startswith("mediacdn_ingest_") for n in exported)
    assert any(n.startswith("mediacdn_router_") for n in exported)
    documented = _doc_rows((DOCS / "metrics.md").read_text())
    missing = sorted(set(exported) - set(documented))
    assert not missing, f"exported but not in docs/metrics.md: {missing}"
    stale = sorted(set(documented) - set(exported))
    assert not stale, f"in docs/metrics.md but exported by no service: {stale}"
    wrong = {n: (documented[n], t) for n, t in exported.items() if documented[n] != t}
    assert not wrong, f"documented type != exported type: {wrong}"


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bmediacdn_[a-z0-9_]+", expr))


def test_dashboard_and_alerts_use_only_exported_metrics(exported: dict[str, str]) -> None:
    samples = _sample_names(exported)
    dash = json.loads((ROOT / "deploy/grafana/mediacdn.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    assert len(exprs) > 10
    used: set[str] = set()
    for expr in exprs:
        names = _metric_names(expr)
        assert names or re.search(r"\bup\b", expr), f"no metric in {expr!r}"
        unknown = names - samples
        assert not unknown, f"{expr!r} uses metrics no service exports: {unknown}"
        used |= {n for n in exported if any(u.startswith(n) for u in names)}
    # The dashboard and the alerts together look at most of what is exported.
    assert len(used) >= 0.8 * len(exported), sorted(set(exported) - used)


def test_config_reference_documents_every_key_the_loader_accepts() -> None:
    text = (DOCS / "config.md").read_text()
    sections = re.split(r"^## ", text, flags=re.M)
    keys = gen_config_doc.accepted_keys()
    assert len(keys) > 50
    for key in keys:
        if key.kind == "table":
            continue
        head, _, name = key.path.rpartition(".")
        title = gen_config_doc.SECTIONS.get(head)
        assert title, f"{key.path}: no section for [{head}] in scripts/gen_config_doc.py"
        (section,) = [s for s in sections if s.startswith(title)]
        assert f"| `{name}` |" in section, f"{key.path} is not in docs/config.md"
    assert gen_config_doc.main(["--check"]) == 0, "docs/config.md is stale: regenerate it"


def test_every_service_serves_an_openapi_document_and_docs_api_covers_it(
        live: dict[str, str]) -> None:
    api = (DOCS / "api.md").read_text()
    for name, url in live.items():
        doc: dict[str, Any] = json.loads(_get(url + "/openapi.json"))
        assert doc["openapi"].startswith("3.1"), name
        assert {"/healthz", "/readyz", "/metrics"} <= set(doc["paths"]), name
        for path, ops in doc["paths"].items():
            for method in ops:
                if method in ("get", "head", "post", "put", "delete"):
                    assert f"{method.upper()} {path}" in api, (
                        f"{name}: {method.upper()} {path} is not in docs/api.md")
    _wait_ready(live["router"])  # it has seen the edge healthy
    route = json.loads(_get(live["router"] + "/v1/route?country=FR&id=" + "a" * 64))
    router_doc = json.loads(_get(live["router"] + "/openapi.json"))
    schema = router_doc["components"]["schemas"]["Route"]
    assert set(schema["required"]) <= set(route) <= set(schema["properties"])


def test_every_alert_has_a_runbook_section_in_operations() -> None:
    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    ops = (DOCS / "operations.md").read_text()
    headings = {h.strip().lower() for h in re.findall(r"^#+ (.+)$", ops, re.M)}
    for g in rules["groups"]:
        for r in g["rules"]:
            anchor = r["annotations"]["runbook"].partition("#")[2]
            assert r["annotations"]["runbook"].startswith("docs/operations.md#")
            assert anchor == r["alert"].lower() and anchor in headings, r["alert"]


def _links(path: Path) -> Iterator[str]:
    for target in re.findall(r"\]\(([^)]+)\)", path.read_text()):
        if not re.match(r"[a-z]+:", target) and not target.startswith("#"):
            yield target.partition("#")[0]


def test_readme_links_the_api_doc_and_every_relative_link_resolves() -> None:
    assert "(docs/api.md)" in (ROOT / "README.md").read_text()
    for md in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        for target in _links(md):
            assert (md.parent / target).exists(), f"{md.name}: broken link {target}"
