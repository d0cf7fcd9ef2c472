"""Static checks of the deployment files with the real tools: docker-compose, hadolint, promtool."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.conftest import require_tool
from tests.deploy.exported import DESIGN_METRICS, exported_metric_names
from tests.deploy.promql import metric_names


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def compose_config(root: Path, *extra: str) -> dict[str, Any]:
    proc = run([require_tool("docker-compose"), "-f", "docker-compose.yml", *extra, "config"], root)
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


def test_compose_gpu_stack_is_valid(root):
    config = compose_config(root)
    assert sorted(config["services"]) == ["grafana", "otel-collector", "prometheus", "server", "server-cpu"]
    assert "profiles" not in config["services"]["server"]
    assert config["services"]["server-cpu"]["profiles"] == ["cpu"]  # started only when named
    assert config["services"]["otel-collector"]["profiles"] == ["otel"]
    server = config["services"]["server"]
    devices = server["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"capabilities": ["gpu"], "count": 1, "driver": "nvidia"}]
    assert server["environment"]["ADAFOCUS_DEVICE"] == "cuda"
    assert server["secrets"] == [{"source": "operator_token"}]
    # Docker mounts the secret at /run/secrets/<name>; the server reads it there (Settings.operator_token_file).
    assert server["environment"]["ADAFOCUS_OPERATOR_TOKEN_FILE"] == "/run/secrets/operator_token"
    assert "ADAFOCUS_OPERATOR_TOKEN" not in server["environment"]


def test_compose_cpu_profile_has_no_gpu_reservation(root):
    config = compose_config(root, "--profile", "cpu")
    server = config["services"]["server-cpu"]
    assert "deploy" not in server
    assert server["environment"]["ADAFOCUS_DEVICE"] == "cpu"
    assert server["environment"]["ADAFOCUS_BACKEND"] == "auto"
    assert (server["environment"]["ADAFOCUS_MAX_BATCH"], server["environment"]["ADAFOCUS_MAX_ACTIVE"]) == ("8", "8")
    assert server["networks"]["default"]["aliases"] == ["adafocus"]
    assert config["services"]["server"]["networks"]["default"]["aliases"] == ["adafocus"]


def test_compose_mounts_the_checked_prometheus_and_grafana_files(root):
    services = compose_config(root)["services"]
    mounted = {v.split(":")[0] for s in ("prometheus", "grafana") for v in services[s]["volumes"]}
    for path in (
        "service/deploy/prometheus.yml",
        "service/deploy/alerts.yml",
        "service/deploy/grafana/provisioning",
        "service/deploy/grafana/dashboards",
    ):
        assert str(root / path) in mounted
        assert (root / path).exists()


def test_dockerfile_is_hadolint_clean(root):
    proc = run([require_tool("hadolint"), "Dockerfile"], root)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_runs_serve_as_non_root_with_a_healthcheck(root):
    lines = [line.strip() for line in (root / "Dockerfile").read_text().splitlines()]
    runtime = lines[max(i for i, line in enumerate(lines) if line.startswith("FROM ")) :]
    assert "torch==2.13.0" in (root / "Dockerfile").read_text()
    assert any(line.startswith("USER ") and not line.startswith("USER 0") for line in runtime)
    assert any(line.startswith("HEALTHCHECK ") for line in runtime)
    assert any("/healthz" in line for line in runtime)
    assert 'ENTRYPOINT ["adafocus"]' in runtime
    assert 'CMD ["serve"]' in runtime
    assert not any("OPERATOR_TOKEN=" in line for line in lines)


def test_prometheus_config_is_valid(deploy_dir):
    proc = run([require_tool("promtool"), "check", "config", "prometheus.yml"], deploy_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 rule files found" in proc.stdout


def test_alert_rules_are_valid(deploy_dir):
    proc = run([require_tool("promtool"), "check", "rules", "alerts.yml"], deploy_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_alert_rules_fire_as_specified():
    proc = run([require_tool("promtool"), "test", "rules", "alerts_test.yml"], Path(__file__).parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def dashboard_queries(deploy_dir: Path) -> dict[str, list[str]]:
    dashboard = json.loads((deploy_dir / "grafana" / "dashboards" / "adafocus.json").read_text())
    return {panel["title"]: [t["expr"] for t in panel["targets"]] for panel in dashboard["panels"]}


def test_every_dashboard_query_names_an_exported_metric(deploy_dir):
    exported = exported_metric_names()
    for title, exprs in dashboard_queries(deploy_dir).items():
        assert exprs, title
        for expr in exprs:
            names = metric_names(expr)
            assert names, (title, expr)
            assert names <= exported, (title, sorted(names - exported))


def test_dashboard_covers_every_issue_panel(deploy_dir):
    used = {name for exprs in dashboard_queries(deploy_dir).values() for e in exprs for name in metric_names(e)}
    for required in (
        "adafocus_requests_total",
        "adafocus_request_duration_seconds_bucket",
        "adafocus_queue_depth",
        "adafocus_active_requests",
        "adafocus_batch_size_sum",
        "adafocus_exit_step_bucket",
        "adafocus_gmacs_per_video_sum",
        "adafocus_budget_info",
        "adafocus_rejected_total",
        "adafocus_decode_duration_seconds_bucket",
        "adafocus_auto_budget_rank",
        "adafocus_auto_budget_arrival_rate",
        "adafocus_auto_budget_service_rate",
        "adafocus_budget_level_seconds_total",
        "adafocus_timeline_requests_total",
        "adafocus_timeline_segments_total",
        "adafocus_timeline_first_segment_seconds_bucket",
        "adafocus_timeline_segments_per_video_sum",
    ):
        assert required in used


def test_every_alert_names_an_exported_metric(deploy_dir):
    exported = exported_metric_names() | {"up"}
    rules = [r for g in yaml.safe_load((deploy_dir / "alerts.yml").read_text())["groups"] for r in g["rules"]]
    required = {
        "AdaFocusQueueNearFull", "AdaFocusHighErrorRate", "AdaFocusLatencyP99AboveSLO", "AdaFocusBudgetPinnedAtFloor"
    }
    assert {r["alert"] for r in rules} >= required
    for rule in rules:
        names = metric_names(rule["expr"])
        assert names and names <= exported, (rule["alert"], sorted(names - exported))


def test_grafana_datasource_matches_the_dashboard(deploy_dir):
    provisioning = deploy_dir / "grafana" / "provisioning"
    source = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    provider = yaml.safe_load((provisioning / "dashboards" / "adafocus.yml").read_text())["providers"][0]
    dashboard = json.loads((deploy_dir / "grafana" / "dashboards" / "adafocus.json").read_text())
    assert source["url"] == "http://prometheus:9090"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    uids = {p["datasource"]["uid"] for p in dashboard["panels"]}
    uids |= {t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]}
    assert uids == {source["uid"]}


def test_server_registry_exports_every_design_metric():
    assert set(DESIGN_METRICS) <= exported_metric_names()
