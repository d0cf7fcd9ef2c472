"""The Kubernetes manifests (service/deploy/k8s), rendered offline with `kubectl kustomize` (no cluster needed) and
validated against the Kubernetes OpenAPI schemas bundled in kubernetes-validate (strict: unknown fields fail)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from model.bundle import load_bundle
from service.budget.store import parse_setting
from service.settings import Settings
from tests.deploy.conftest import require_tool
from tests.deploy.exported import exported_metric_names

K8S_VERSION = "1.32.0"  # the oldest Kubernetes release still maintained when this was written


@pytest.fixture(scope="module")
def rendered(deploy_dir: Path) -> dict[str, dict[str, Any]]:
    """The rendered manifests by kind."""
    proc = subprocess.run(
        [require_tool("kubectl"), "kustomize", str(deploy_dir / "k8s")], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    by_kind = {d["kind"]: d for d in docs}
    assert len(by_kind) == len(docs)
    return by_kind


def test_every_manifest_is_valid_kubernetes(rendered: dict[str, dict[str, Any]]) -> None:
    assert sorted(rendered) == [
        "ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service"
    ]
    for doc in rendered.values():
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises ValidationError with the path


def test_a_broken_manifest_is_caught(rendered: dict[str, dict[str, Any]]) -> None:
    broken = json.loads(json.dumps(rendered["Deployment"]))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pathh"] = "/readyz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def container(rendered: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (server,) = rendered["Deployment"]["spec"]["template"]["spec"]["containers"]
    return server  # type: ignore[no-any-return]


def test_the_budget_configmap_is_mounted_as_a_directory_and_holds_a_valid_setting(rendered: dict[str, Any]) -> None:
    server = container(rendered)
    env = {e["name"]: e.get("value") for e in server["env"]}
    budget_file = Path(env["ADAFOCUS_BUDGET_FILE"])
    (mount,) = [m for m in server["volumeMounts"] if m["name"] == "budget"]
    assert "subPath" not in mount  # a subPath mount never sees a ConfigMap update
    assert Path(mount["mountPath"]) == budget_file.parent and mount["readOnly"] is True
    (volume,) = [v for v in rendered["Deployment"]["spec"]["template"]["spec"]["volumes"] if v["name"] == "budget"]
    configmap = rendered["ConfigMap"]
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    setting = parse_setting(configmap["data"][budget_file.name], fallback_version=1)
    assert setting.update.level in {level.name for level in load_bundle().budgets.levels}  # the shipped bundle's


def test_every_setting_the_pods_get_is_a_server_setting(rendered: dict[str, Any]) -> None:
    fields = {f"ADAFOCUS_{name.upper()}" for name in Settings.model_fields}
    assert {e["name"] for e in container(rendered)["env"]} <= fields


def test_probes_use_readyz_and_healthz_on_the_server_port(rendered: dict[str, Any]) -> None:
    server = container(rendered)
    (port,) = server["ports"]
    assert port["containerPort"] == Settings.model_fields["port"].default
    assert server["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    assert server["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert server["startupProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    grace = rendered["Deployment"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    drain = float(next(e["value"] for e in server["env"] if e["name"] == "ADAFOCUS_DRAIN_TIMEOUT_S"))
    assert grace > drain  # the drain finishes before the kubelet kills the pod


def test_the_autoscaler_scales_the_deployment_on_an_exported_metric(rendered: dict[str, Any]) -> None:
    hpa = rendered["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == rendered["Deployment"]["metadata"]["name"]
    assert {m["pods"]["metric"]["name"] for m in hpa["metrics"]} <= exported_metric_names()
    selector = rendered["Service"]["spec"]["selector"]
    assert selector.items() <= rendered["Deployment"]["spec"]["template"]["metadata"]["labels"].items()


def test_dev_shm_is_a_memory_volume_as_large_as_composes(rendered: dict[str, Any], root: Path) -> None:
    """The decoders' shared blocks live in /dev/shm, which a container runtime sizes at 64 MiB unless told."""
    (mount,) = [m for m in container(rendered)["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    (volume,) = [v for v in rendered["Deployment"]["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    assert volume == {"name": mount["name"], "emptyDir": {"medium": "Memory", "sizeLimit": "256Mi"}}
    compose = yaml.safe_load((root / "docker-compose.yml").read_text())
    servers = [s for s in compose["services"].values() if s.get("image") == "adafocus-serve:latest"]
    assert len(servers) == 2 and {s["shm_size"] for s in servers} == {"256mb"}  # Docker's "mb" is MiB
