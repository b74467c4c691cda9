"""docker-compose.yml: valid for docker-compose and the compose-spec schema, the whole
seed stack with healthchecks, volumes, one network, read-only provisioning and no
committed credentials."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

from .conftest import ROOT, require_tool

COMPOSE = ROOT / "docker-compose.yml"
SPEC = yaml.safe_load(COMPOSE.read_text())
ENV = {"GRAFANA_ADMIN_PASSWORD": "test-only", "POSTGRES_PASSWORD": "test-only"}
# Services that run a server another container depends on get a healthcheck.
HEALTHCHECKED = {"hitl-api", "postgres", "redis", "prometheus", "alertmanager", "grafana", "jaeger", "loki"}


def compose(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    binary = require_tool("docker-compose")
    base = {k: v for k, v in os.environ.items() if k not in ENV}
    return subprocess.run(
        [binary, "-f", str(COMPOSE), *args], capture_output=True, text=True, timeout=60,
        cwd=ROOT, env={**base, **(env or {})},
    )


def test_docker_compose_config_is_valid() -> None:
    """`docker-compose config -q` accepts the file."""
    result = compose("config", "-q", env=ENV)
    assert result.returncode == 0, result.stderr


def test_compose_file_matches_the_compose_spec_schema() -> None:
    """check-jsonschema with the vendored compose-spec schema accepts the file."""
    binary = Path(ROOT / ".venv" / "bin" / "check-jsonschema")
    if not binary.exists():
        binary = Path(require_tool("check-jsonschema"))
    result = subprocess.run(
        [str(binary), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_default_credentials_are_committed() -> None:
    """Without GRAFANA_ADMIN_PASSWORD (or POSTGRES_PASSWORD) compose refuses to start."""
    for missing in ENV:
        result = compose("config", "-q", env={k: v for k, v in ENV.items() if k != missing})
        assert result.returncode != 0 and missing in result.stderr, missing
    assert SPEC["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"].startswith(
        "${GRAFANA_ADMIN_PASSWORD:?"
    )


def test_the_stack_has_every_service() -> None:
    """The service, its stores and the seed's monitoring stack, plus logs."""
    assert set(SPEC["services"]) >= {
        "hitl-api", "postgres", "redis", "prometheus", "grafana", "alertmanager", "jaeger",
        "loki", "promtail", "postgres-exporter", "redis-exporter", "node-exporter", "cadvisor",
    }


def test_services_have_healthchecks_network_and_persistent_volumes() -> None:
    """Healthchecks where others wait on a service, one dedicated network, named volumes
    for every store."""
    for name, service in SPEC["services"].items():
        assert service["networks"] == ["hitl"], name
        if name in HEALTHCHECKED:
            assert service["healthcheck"]["test"], name
    named = set(SPEC["volumes"])
    for name, path in (("postgres", "/var/lib/postgresql/data"), ("prometheus", "/prometheus"),
                       ("grafana", "/var/lib/grafana"), ("alertmanager", "/alertmanager"), ("loki", "/loki")):
        mounts = [v.split(":") for v in SPEC["services"][name]["volumes"]]
        assert any(src in named and dst == path for src, dst, *_ in mounts), name


def test_hitl_api_scales_and_is_built_from_the_repo() -> None:
    """hitl-api is built from the Dockerfile, has no fixed container name (so --scale
    works) and waits for its migrations and stores."""
    api = SPEC["services"]["hitl-api"]
    assert api["build"] == "." and "container_name" not in api
    assert api["depends_on"]["hitl-migrate"]["condition"] == "service_completed_successfully"
    assert api["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert (ROOT / "Dockerfile").exists()


def test_prometheus_retention_and_config_are_the_seeds() -> None:
    """30 d / 10 GB retention on the command line; configs mounted read-only."""
    prometheus = SPEC["services"]["prometheus"]
    assert "--storage.tsdb.retention.time=30d" in prometheus["command"]
    assert "--storage.tsdb.retention.size=10GB" in prometheus["command"]
    assert "./ops/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--data.retention=120h" in SPEC["services"]["alertmanager"]["command"]


def test_grafana_provisioning_is_mounted_read_only() -> None:
    """Datasources and dashboards come from the repo, read-only."""
    volumes = SPEC["services"]["grafana"]["volumes"]
    assert "./ops/grafana/provisioning:/etc/grafana/provisioning:ro" in volumes
    assert "./ops/grafana/dashboards:/var/lib/grafana/dashboards:ro" in volumes


def test_jaeger_receives_otlp_and_the_service_sends_there() -> None:
    """Jaeger all-in-one with OTLP enabled; hitl-api exports spans to it."""
    assert SPEC["services"]["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    assert SPEC["services"]["hitl-api"]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4317"


def test_published_ports_bind_loopback_only() -> None:
    """Nothing of the stack is published beyond the workstation."""
    for name, service in SPEC["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)


def test_log_shipper_reads_container_logs_into_loki() -> None:
    """Promtail discovers the containers and pushes to Loki; trace_id stays out of labels."""
    promtail = yaml.safe_load((ROOT / "ops" / "promtail" / "promtail.yml").read_text())
    assert promtail["clients"][0]["url"] == "http://loki:3100/loki/api/v1/push"
    assert promtail["scrape_configs"][0]["docker_sd_configs"]
    assert "trace_id" not in (ROOT / "ops" / "promtail" / "promtail.yml").read_text().split("pipeline_stages")[1].split("labels:")[1]
    loki = yaml.safe_load((ROOT / "ops" / "loki" / "loki.yml").read_text())
    assert loki["server"]["http_listen_port"] == 3100
