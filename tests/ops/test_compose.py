"""docker-compose.yml: valid for docker-compose and the compose-spec schema, the whole
seed stack with healthchecks, start order, volumes, one network, read-only
provisioning, the seed's container names and commands, and no committed credentials
(every variable documented, empty, in .env.example)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import ROOT, require_tool

COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
SPEC = yaml.safe_load(COMPOSE.read_text())
SERVICES: dict[str, dict[str, Any]] = SPEC["services"]
ENV = {"GRAFANA_ADMIN_PASSWORD": "test-only", "POSTGRES_PASSWORD": "test-only"}

# The seed's runbook and troubleshooting steps name these containers
# (`docker exec hitl-prometheus ...`, `docker logs hitl-grafana`, ...).
SEED_CONTAINERS = {
    "prometheus": "hitl-prometheus", "grafana": "hitl-grafana",
    "alertmanager": "hitl-alertmanager", "jaeger": "hitl-jaeger",
}
# Services without a fixed container name, and why.
UNNAMED = {"hitl-api": "`docker compose up --scale hitl-api=N` needs N container names"}
# Services without a healthcheck, and why.
NO_HEALTHCHECK = {"hitl-migrate": "one-shot job: applies migrations and exits; hitl-api waits "
                                  "for service_completed_successfully"}
# (service, dependency): the service must not start before the dependency answers.
STARTS_AFTER_HEALTHY = {
    ("prometheus", "alertmanager"),
    ("grafana", "prometheus"), ("grafana", "loki"), ("grafana", "jaeger"),
    ("promtail", "loki"),
    ("hitl-migrate", "postgres"),
    ("hitl-api", "postgres"), ("hitl-api", "redis"),
    ("postgres-exporter", "postgres"), ("redis-exporter", "redis"),
    # HA monitoring: each Prometheus replica after its own Alertmanager; Grafana after
    # its long-term datasource.
    ("prometheus-b", "alertmanager-b"), ("grafana", "victoriametrics"),
}
# The seed's validation commands (TESTING & VALIDATION), verbatim.
SEED_COMMANDS = (
    "docker exec hitl-prometheus promtool check config /etc/prometheus/prometheus.yml",
    "docker exec hitl-prometheus promtool check rules /etc/prometheus/alerts.yml",
    "docker exec hitl-alertmanager amtool check-config /etc/alertmanager/alertmanager.yml",
    "docker exec hitl-alertmanager amtool config routes test --config.file=/etc/alertmanager/alertmanager.yml",
)
# Documents whose `docker <verb> <container>` commands must name a real container.
DOCS = [ROOT / "README.md", ROOT / "ops" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY$|CREDENTIAL", re.I)


@pytest.fixture(scope="module")
def empty_env_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty --env-file, so a developer's own .env cannot make the tests pass or fail."""
    path = tmp_path_factory.mktemp("compose-env") / "empty.env"
    path.write_text("")
    return path


def compose(*args: str, env: dict[str, str] | None = None, env_file: Path) -> subprocess.CompletedProcess[str]:
    binary = require_tool("docker-compose")
    base = {k: v for k, v in os.environ.items() if k not in ENV}
    return subprocess.run(
        [binary, "-f", str(COMPOSE), "--env-file", str(env_file), *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env={**base, **(env or {})},
    )


def strings(node: Any) -> Iterator[str]:
    """Every string of the loaded compose file (keys and values; comments are gone)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from strings(key)
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)


def compose_variables() -> set[str]:
    """Names of every ${VAR...} / $VAR compose interpolates ($$ is a literal $)."""
    pattern = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)|([A-Za-z_][A-Za-z0-9_]*))")
    found: set[str] = set()
    for text in strings(SPEC):
        for match in pattern.finditer(text.replace("$$", "")):
            found.add(match.group(1) or match.group(2))
    return found


def env_example() -> dict[str, str]:
    """The assignments of .env.example (comments and blank lines skipped)."""
    values: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f".env.example: not NAME=value: {line!r}"
            values[name.strip()] = value.strip()
    return values


def service_of_container(container: str) -> str:
    names = {s.get("container_name"): name for name, s in SERVICES.items() if "container_name" in s}
    assert container in names, f"no container named {container} in docker-compose.yml"
    return names[container]


def repo_path(service: str, container_path: str) -> Path:
    """The repository file a service sees at container_path, through the longest of its
    bind mounts from the repository (./...) that covers the path."""
    best: tuple[str, str] | None = None
    for volume in SERVICES[service].get("volumes", []):
        source, target, *_ = volume.split(":")
        if not source.startswith("./"):
            continue
        covers = container_path == target or container_path.startswith(target.rstrip("/") + "/")
        if covers and (best is None or len(target) > len(best[1])):
            best = (source, target)
    assert best, f"{container_path} is not mounted into {service} from the repository"
    source, target = best
    mount_root = (ROOT / source).resolve()
    path = ROOT / source / os.path.relpath(container_path, target)
    # Inside the container a symlink can only reach what is mounted.
    assert path.resolve().is_relative_to(mount_root), f"{path} leaves the mount {source}"
    return path


def test_docker_compose_config_is_valid(empty_env_file: Path) -> None:
    """`docker-compose config -q` accepts the file."""
    result = compose("config", "-q", env=ENV, env_file=empty_env_file)
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


def test_no_default_credentials_are_committed(empty_env_file: Path) -> None:
    """Without GRAFANA_ADMIN_PASSWORD (or POSTGRES_PASSWORD) compose refuses to start."""
    for missing in ENV:
        result = compose("config", "-q", env={k: v for k, v in ENV.items() if k != missing},
                         env_file=empty_env_file)
        assert result.returncode != 0 and missing in result.stderr, missing
    assert SPEC["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"].startswith(
        "${GRAFANA_ADMIN_PASSWORD:?"
    )


def test_the_stack_has_every_service() -> None:
    """The service, its stores and the seed's monitoring stack, plus logs."""
    assert set(SPEC["services"]) >= {
        "hitl-api", "postgres", "redis", "prometheus", "grafana", "alertmanager", "jaeger",
        "loki", "promtail", "postgres-exporter", "redis-exporter", "node-exporter", "cadvisor",
        "prometheus-b", "alertmanager-b", "victoriametrics",
    }


def test_services_have_one_network_and_persistent_volumes() -> None:
    """One dedicated network, named volumes for every store."""
    for name, service in SPEC["services"].items():
        assert service["networks"] == ["hitl"], name
    named = set(SPEC["volumes"])
    for name, path in (("postgres", "/var/lib/postgresql/data"), ("prometheus", "/prometheus"),
                       ("grafana", "/var/lib/grafana"), ("alertmanager", "/alertmanager"), ("loki", "/loki"),
                       ("prometheus-b", "/prometheus"), ("alertmanager-b", "/alertmanager"),
                       ("victoriametrics", "/storage")):
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


def test_seed_containers_have_the_seeds_names_and_the_rest_hitl_service() -> None:
    """`docker exec hitl-prometheus ...` and `docker logs hitl-grafana` work as the seed
    writes them; every other container is `hitl-<service>`, except those that scale."""
    for name, container in SEED_CONTAINERS.items():
        assert SERVICES[name].get("container_name") == container, name
    for name, service in SERVICES.items():
        if name in UNNAMED:
            assert "container_name" not in service, f"{name}: {UNNAMED[name]}"
        else:
            assert service.get("container_name") == "hitl-" + name.removeprefix("hitl-"), name
    names = [s["container_name"] for s in SERVICES.values() if "container_name" in s]
    assert len(names) == len(set(names))


def test_every_long_running_service_has_a_healthcheck() -> None:
    """A container that keeps running answers a healthcheck; the exceptions are named,
    with their reason, and are one-shot (restart "no")."""
    for name, service in SERVICES.items():
        if name in NO_HEALTHCHECK:
            assert "healthcheck" not in service and service.get("restart") == "no", NO_HEALTHCHECK[name]
            continue
        assert service.get("restart") == "unless-stopped", name
        check = service.get("healthcheck")
        assert check and not check.get("disable"), f"{name}: no healthcheck"
        test = check["test"]
        assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name
        assert check["interval"] and check["timeout"] and check["retries"], name


def test_healthchecks_probe_the_port_prometheus_scrapes() -> None:
    """A service Prometheus scrapes as <service>:<port> is probed on that port, so a
    typo in either shows up here rather than as an unhealthy container."""
    config = yaml.safe_load((ROOT / "ops" / "prometheus" / "prometheus.yml").read_text())
    targets = [t for job in config["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]]
    probed = 0
    for target in targets:
        host, port = target.split(":")
        if host in SERVICES:
            assert f"127.0.0.1:{port}" in " ".join(SERVICES[host]["healthcheck"]["test"]), target
            probed += 1
    assert probed >= 8  # exporters, cAdvisor, Alertmanager, Grafana, Loki, Jaeger


def test_start_order_waits_for_health_where_it_matters() -> None:
    """depends_on uses the long form everywhere (each condition is a choice), waits for
    service_healthy where the order matters, and only on services with a healthcheck."""
    for name, service in SERVICES.items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: depends_on without conditions"
        for dependency, how in depends_on.items():
            assert how["condition"] in ("service_started", "service_healthy", "service_completed_successfully")
            if how["condition"] == "service_healthy":
                assert "healthcheck" in SERVICES[dependency], (name, dependency)
    for name, dependency in sorted(STARTS_AFTER_HEALTHY):
        assert SERVICES[name]["depends_on"][dependency]["condition"] == "service_healthy", (name, dependency)


def test_every_variable_compose_reads_is_in_env_example() -> None:
    """.env.example lists every ${VAR} of docker-compose.yml and nothing else."""
    used = compose_variables()
    assert used >= set(ENV)  # the parser finds what we know is there
    assert set(env_example()) == used


def test_env_example_holds_no_credentials(empty_env_file: Path) -> None:
    """Secrets are empty in .env.example, and a copy left unfilled stops compose with a
    message naming each one; filled, the same file is accepted."""
    example = env_example()
    secrets = {name for name in example if SECRET_NAME.search(name)}
    assert secrets >= set(ENV)
    for name in secrets:
        assert example[name] == "", f".env.example: {name} must be empty (no default credentials)"
    unfilled = compose("config", "-q", env_file=ENV_EXAMPLE)
    assert unfilled.returncode != 0
    assert any(f"set {name} in .env" in unfilled.stderr for name in secrets), unfilled.stderr
    filled = empty_env_file.with_name("filled.env")
    filled.write_text("".join(f"{name}={ENV.get(name, value) or 'test-only'}\n" for name, value in example.items()))
    result = compose("config", "-q", env_file=filled)
    assert result.returncode == 0, result.stderr


def test_env_file_is_git_ignored() -> None:
    """The filled .env never gets committed."""
    git = require_tool("git")
    result = subprocess.run([git, "check-ignore", "-q", ".env"], cwd=ROOT, capture_output=True, timeout=30)
    assert result.returncode == 0, ".env is not in .gitignore"
    result = subprocess.run([git, "check-ignore", "-q", ".env.example"], cwd=ROOT, capture_output=True, timeout=30)
    assert result.returncode == 1, ".env.example must not be ignored"


@pytest.mark.parametrize("command", SEED_COMMANDS)
def test_the_seeds_validation_commands_pass_on_the_mounted_files(command: str) -> None:
    """Each `docker exec <container> <tool> <args>` of the seed, run with the local tool on
    the repository files its container paths are mounted from (read off the compose
    volumes of the container's service)."""
    docker, exec_, container, tool, *args = shlex.split(command)
    assert (docker, exec_) == ("docker", "exec")
    service = service_of_container(container)

    def local(arg: str) -> str:
        flag, eq, value = arg.rpartition("=") if arg.startswith("--") else ("", "", arg)
        return flag + eq + str(repo_path(service, value)) if value.startswith("/") else arg

    argv = [require_tool(tool), *map(local, args)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, f"{argv}:\n{result.stdout}{result.stderr}"
    assert "FAILED" not in result.stdout + result.stderr
    if args[:2] == ["check", "rules"]:
        # The seed's alerts.yml is the alert rules: 15+ of them, every one an alert.
        rules = yaml.safe_load(repo_path(service, args[2]).read_text())["groups"]
        alerts = [rule for group in rules for rule in group["rules"]]
        assert len(alerts) >= 15 and all("alert" in rule for rule in alerts)


def test_seed_paths_are_loaded_once() -> None:
    """alerts.yml sits beside prometheus.yml for the seed's command, outside rule_files'
    globs, so Prometheus does not load the same rules twice."""
    config_path = repo_path("prometheus", "/etc/prometheus/prometheus.yml")
    config = yaml.safe_load(config_path.read_text())
    loaded = [p.resolve() for pattern in config["rule_files"] for p in config_path.parent.glob(pattern)]
    assert len(loaded) == len(set(loaded))
    assert repo_path("prometheus", "/etc/prometheus/alerts.yml").resolve() in loaded


def test_docs_docker_commands_name_containers_that_exist() -> None:
    """Every `docker exec|logs|stop|restart|... <name>` in the docs names a container of
    docker-compose.yml; hitl-api (no fixed name) is reached with `docker compose`."""
    names = {s["container_name"] for s in SERVICES.values() if "container_name" in s}
    verbs = r"(?:exec|logs|stop|start|restart|kill|inspect|top|stats|attach|rm|cp|port|pause|unpause)"
    command = re.compile(rf"\bdocker\s+{verbs}\s+((?:-\S+\s+(?:\d+\s+)?)*)([A-Za-z0-9][\w.-]*)")
    seen = 0
    for doc in DOCS:
        for match in command.finditer(doc.read_text()):
            name = match.group(2).split(":")[0]  # docker cp hitl-x:/path
            assert name in names, f"{doc.relative_to(ROOT)}: `{match.group(0)}` names no container"
            seen += 1
    assert seen, "no docker command in the docs: the README section is missing"
    networks = {network.get("name", key) for key, network in SPEC["networks"].items()}
    for doc in DOCS:
        for match in re.finditer(r"\bdocker\s+network\s+inspect\s+([A-Za-z0-9][\w-]*)", doc.read_text()):
            assert match.group(1) in networks, f"{doc.relative_to(ROOT)}: `{match.group(0)}` names no network"


# ---------------------------------------------------------------- HA monitoring
# The Prometheus HA pair, the Alertmanager cluster and VictoriaMetrics (issue 12). Their
# behaviour (one notification, failover, shared silences, deduplicated long-term series)
# is proved with the real processes in tests/ha/test_monitoring_ha.py; these hold the
# compose file to the same shape.

PROMETHEUS_YML = ROOT / "ops" / "prometheus" / "prometheus.yml"


def _flags(service: str) -> dict[str, str]:
    command = SERVICES[service]["command"]
    return dict(arg.partition("=")[::2] for arg in command)


def test_prometheus_replicas_differ_only_in_the_replica_label_and_identity() -> None:
    """prometheus-b is prometheus with replica B: the same image, config mount and flags
    but for its external URL, and the replica label its one config file expands from
    PROMETHEUS_REPLICA (A / B)."""
    a, b = SERVICES["prometheus"], SERVICES["prometheus-b"]
    identity = {"container_name", "environment", "volumes", "ports", "depends_on", "command"}
    assert {k: v for k, v in a.items() if k not in identity} == {k: v for k, v in b.items() if k not in identity}
    fa, fb = _flags("prometheus"), _flags("prometheus-b")
    assert fa.pop("--web.external-url") != fb.pop("--web.external-url")
    assert fa == fb and fa["--enable-feature"] == "expand-external-labels"
    assert (a["environment"], b["environment"]) == ({"PROMETHEUS_REPLICA": "A"}, {"PROMETHEUS_REPLICA": "B"})
    assert a["volumes"][0] == b["volumes"][0] == "./ops/prometheus:/etc/prometheus:ro"
    assert a["volumes"][1] != b["volumes"][1]
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    assert config["global"]["external_labels"]["replica"] == "${PROMETHEUS_REPLICA}"


def test_both_prometheus_alert_to_both_alertmanagers_without_the_replica_label() -> None:
    """Every alert goes to both Alertmanagers, without `replica` (so the two replicas'
    copies are one alert), and both Alertmanagers are services of this file."""
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    (alertmanagers,) = config["alerting"]["alertmanagers"]
    targets = alertmanagers["static_configs"][0]["targets"]
    assert sorted(t.split(":")[0] for t in targets) == ["alertmanager", "alertmanager-b"]
    assert {"action": "labeldrop", "regex": "replica"} in config["alerting"]["alert_relabel_configs"]


def test_alertmanagers_gossip_with_each_other() -> None:
    """Each Alertmanager listens for gossip and names the other as its peer, on the port
    the other listens on; both run the same config and secrets."""
    for name, peer in (("alertmanager", "alertmanager-b"), ("alertmanager-b", "alertmanager")):
        flags, peer_flags = _flags(name), _flags(peer)
        listen_port = peer_flags["--cluster.listen-address"].rsplit(":", 1)[1]
        assert flags["--cluster.peer"] == f"{peer}:{listen_port}", name
    a, b = SERVICES["alertmanager"], SERVICES["alertmanager-b"]
    assert a["image"] == b["image"] and a["secrets"] == b["secrets"]
    assert a["volumes"][:2] == b["volumes"][:2] and a["volumes"][2] != b["volumes"][2]
    assert _flags("alertmanager-b")["--data.retention"] == "120h"


def test_victoriametrics_deduplicates_the_pairs_remote_writes() -> None:
    """Both replicas remote-write to the victoriametrics service without `replica`; it
    keeps one sample per hitl-api scrape interval and a year of history."""
    vm = SERVICES["victoriametrics"]
    assert vm["image"].startswith("victoriametrics/victoria-metrics:v")
    flags = _flags("victoriametrics")
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    (api,) = [job for job in config["scrape_configs"] if job["job_name"] == "hitl-api"]
    assert flags["-dedup.minScrapeInterval"] == api["scrape_interval"]
    assert flags["-retentionPeriod"] == "1y"
    port = flags["-httpListenAddr"].rsplit(":", 1)[1]
    (write,) = config["remote_write"]
    assert write["url"] == f"http://victoriametrics:{port}/api/v1/write"
    assert {"action": "labeldrop", "regex": "replica"} in write["write_relabel_configs"]
    assert f"127.0.0.1:{port}" in " ".join(vm["healthcheck"]["test"])
