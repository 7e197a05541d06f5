"""The Kubernetes manifests under deploy/kubernetes and the Prometheus alert rules under
deploy/prometheus: valid against the Kubernetes API schemas, consistent with the config they
carry (every StatefulSet pod is an edge of its region), and alerts proven by `promtool test
rules`."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from config import load_config
from tests.helpers import ADMIN_TOKEN, API_KEY, ROOT

K8S = ROOT / "deploy" / "kubernetes"
PROM = ROOT / "deploy" / "prometheus"
K8S_VERSION = "1.30.0"  # the oldest Kubernetes minor still maintained upstream when written
ENV = {"MEDIACDN_API_KEY": API_KEY, "MEDIACDN_ADMIN_TOKEN": ADMIN_TOKEN,
       "AWS_ACCESS_KEY_ID": "k" * 16, "AWS_SECRET_ACCESS_KEY": "s" * 32}


def _resources() -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        out += [(path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return out


def _of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in _resources() if doc["kind"] == kind]


def _workloads() -> list[dict[str, Any]]:
    return _of_kind("Deployment") + _of_kind("StatefulSet")


@pytest.mark.parametrize("version", [K8S_VERSION, kubernetes_validate.latest_version()])
def test_every_manifest_validates_strictly(version: str) -> None:
    resources = _resources()
    assert {d["kind"] for _, d in resources} >= {
        "Namespace", "ConfigMap", "Deployment", "StatefulSet", "Service",
        "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    for path, doc in resources:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{path.name}: {doc['kind']}/{doc['metadata']['name']}: "
                                 f"{exc.message} at {list(exc.path)}") from None


def test_kustomization_lists_every_manifest() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kust["resources"]) == files


SECRETS = "/run/secrets/mediacdn/"  # where the workloads mount the Secret `mediacdn`


def _configmap_toml(tmp_path: Path) -> Path:
    """The ConfigMap's config, its key files under `tmp_path` in place of the Secret's
    mount (what the kubelet puts there: one file per key of the Secret)."""
    (cm,) = _of_kind("ConfigMap")
    keys = tmp_path / "secret"
    keys.mkdir(exist_ok=True)
    (keys / "api-key").write_text(API_KEY)
    (keys / "admin-token").write_text(ADMIN_TOKEN)
    path = tmp_path / "mediacdn.toml"
    path.write_text(cm["data"]["mediacdn.toml"].replace(SECRETS, f"{keys}/"))
    return path


def test_configmap_toml_loads_and_matches_the_statefulsets(tmp_path: Path) -> None:
    cfg = load_config(_configmap_toml(tmp_path), ENV)
    assert cfg.origin.kind == "s3"
    assert cfg.secrets.api_key == API_KEY and cfg.origin.access_key == ENV["AWS_ACCESS_KEY_ID"]
    services = {d["metadata"]["name"]: d for d in _of_kind("Service")}
    sets = {s["metadata"]["name"]: s for s in _of_kind("StatefulSet")}
    assert set(sets) == {f"edge-{r.name}" for r in cfg.regions}, "one StatefulSet per region"
    for region in cfg.regions:
        sts = sets[f"edge-{region.name}"]
        pods = [f"{sts['metadata']['name']}-{i}" for i in range(sts["spec"]["replicas"])]
        # `mediacdn edge --node $(POD_NAME)`: each pod must be an edge of its own region.
        assert [e.name for e in region.edges] == pods
        (container,) = sts["spec"]["template"]["spec"]["containers"]
        assert container["args"] == ["edge", "--node", "$(POD_NAME)"]
        port = container["ports"][0]["containerPort"]
        mount = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}["cache"]
        assert [t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]] == ["cache"]
        for edge in region.edges:
            assert (edge.host, edge.port) == (edge.name, port)  # the pod's own hostname
            assert edge.cache_dir.is_relative_to(mount)
            public = services[edge.name]["spec"]
            assert public["selector"] == {"statefulset.kubernetes.io/pod-name": edge.name}
            # /readyz fails while the origin is away; cached objects must stay reachable.
            assert public["publishNotReadyAddresses"] is True
        assert services[sts["spec"]["serviceName"]]["spec"]["clusterIP"] == "None"
    for name, port in (("ingest", cfg.ingest.port), ("router", cfg.router.port)):
        (dep,) = [d for d in _of_kind("Deployment") if d["metadata"]["name"] == name]
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        assert container["ports"][0]["containerPort"] == port
    assert cfg.ingest.host == cfg.router.host == "0.0.0.0"


def _env_names(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in container.get("env", [])}


def test_workloads_probe_run_as_non_root_and_take_secrets_from_a_secret(tmp_path: Path) -> None:
    cfg = load_config(_configmap_toml(tmp_path), ENV)
    api, admin = (cfg.secrets.first(kind) for kind in ("api_keys", "admin_tokens"))
    assert api is not None and admin is not None
    # Keys come as files of the mounted Secret (new ones are seen on SIGHUP, no restart);
    # the S3 credentials as variables.
    assert api.value == API_KEY and admin.value == ADMIN_TOKEN
    for key in (api, admin):
        kind, _, path = key.source.partition(" ")
        assert kind == "file" and path.startswith(str(tmp_path / "secret")), key.source
    needs_keys = {"ingest": True, "edge": True, "router": False}
    s3 = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert _workloads()
    for w in _workloads():
        name = w["metadata"]["name"]
        pod = w["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c in pod["containers"]:
            assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
            assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
            env = _env_names(c)
            assert env["MEDIACDN_CONFIG"]["value"].startswith(
                {m["mountPath"] for m in c["volumeMounts"] if m["name"] == "config"}.pop())
            secret_env = {n for n, e in env.items() if "secretKeyRef" in e.get("valueFrom", {})}
            service = c["args"][0]
            assert secret_env == (s3 if service != "router" else set()), f"{name}: {secret_env}"
            for var in secret_env:
                assert "value" not in env[var], "a secret in a manifest"
            mounts = {m["mountPath"].rstrip("/") + "/": m for m in c["volumeMounts"]}
            if not needs_keys[service]:
                assert SECRETS not in mounts, f"{name} needs no keys"
                continue
            mount = mounts[SECRETS]
            assert mount["readOnly"] is True and "subPath" not in mount  # updated in place
            secret = volumes[mount["name"]]["secret"]
            # The whole Secret: a key added to it appears without a new manifest.
            assert secret["secretName"] == "mediacdn" and "items" not in secret
            # Readable by the image's user through its group, by nobody else.
            assert secret["defaultMode"] == 0o440
            assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]


def test_ingest_scales_and_keeps_one_pod_through_disruptions() -> None:
    (hpa,) = _of_kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "ingest"}
    assert hpa["spec"]["minReplicas"] >= 2
    pdbs = {p["metadata"]["name"]: p for p in _of_kind("PodDisruptionBudget")}
    (ingest,) = [d for d in _of_kind("Deployment") if d["metadata"]["name"] == "ingest"]
    labels = ingest["spec"]["template"]["metadata"]["labels"]
    selector = pdbs["ingest"]["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items() and pdbs["ingest"]["spec"]["minAvailable"] >= 1


# Prometheus alert rules -------------------------------------------------------------------


def _promtool() -> str:
    found = shutil.which("promtool")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for argv in (["apt-get", "update", "-qq"],
                     ["apt-get", "install", "-y", "-qq", "-o", "DPkg::Lock::Timeout=300",
                      "--no-install-recommends", "prometheus"]):
            subprocess.run(argv, env=env, capture_output=True, timeout=600, check=False)
        found = shutil.which("promtool")
    if not found:
        pytest.skip("promtool not found: install Debian's `prometheus` package (needs root "
                    "with apt) to check the alert rules")
    return found


def test_alert_rules_pass_promtool_check_and_their_unit_tests() -> None:
    promtool = _promtool()
    check = subprocess.run([promtool, "check", "rules", "alerts.yml"], cwd=PROM,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run([promtool, "test", "rules", "alerts.test.yml"], cwd=PROM,
                          capture_output=True, text=True, timeout=120)
    assert test.returncode == 0, test.stdout + test.stderr
    config = subprocess.run([promtool, "check", "config", "prometheus.yml"], cwd=PROM,
                            capture_output=True, text=True, timeout=60)
    assert config.returncode == 0, config.stdout + config.stderr


def test_every_alert_has_a_unit_test_that_fires_it() -> None:
    rules = yaml.safe_load((PROM / "alerts.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((PROM / "alerts.test.yml").read_text())
    fired = {c["alertname"] for t in tests["tests"] for c in t.get("alert_rule_test", [])
             if c.get("exp_alerts")}
    assert alerts and alerts == fired, f"alerts never shown to fire: {alerts - fired}"
    for g in rules["groups"]:
        for r in g["rules"]:
            assert r["labels"]["severity"] in ("page", "ticket")
            assert r["annotations"]["summary"] and r["annotations"]["runbook"]
