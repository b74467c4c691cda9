"""ops/kubernetes: the kustomize base and the production overlay build, validate against
the Kubernetes API schemas, and say what the service needs.

Offline: `kubectl kustomize` renders each build (no cluster), kubernetes-validate checks
every built-in object against the API's JSON schemas of KUBERNETES_VERSION (strict:
unknown fields fail), the prometheus-operator objects against the structural schemas
of tests/ops/prometheus_operator_schema.py, the PrometheusRule's groups with promtool.
The rest reads the service itself (routes, settings, the Dockerfile) so the manifests
cannot drift from it silently.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from service.api import health
from service.config import Settings
from service.server import STRAGGLER_SECONDS

from .conftest import OPS, ROOT, load_module, require_tool
from .prometheus_operator_schema import SCHEMAS

K8S = OPS / "kubernetes"
BUILDS = {"base": K8S / "base", "production": K8S / "overlays" / "production"}
GENERATOR = K8S / "generate_rules.py"
DEPLOY = K8S / "deploy.sh"
gen = load_module(GENERATOR, "k8s_generate_rules")

# The API version every built-in object is validated against: kubectl's on this
# machine (v1.32), a version the three big managed offerings still support.
KUBERNETES_VERSION = "1.32"
EXPECTED_KINDS = {
    "ServiceAccount",
    "ConfigMap",
    "Deployment",
    "Service",
    "PodDisruptionBudget",
    "HorizontalPodAutoscaler",
    "Job",
    "NetworkPolicy",
    "ServiceMonitor",
    "PrometheusRule",
}
# What the service's rules select on (ops/prometheus/rules/*.yml: {job="hitl-api"}).
JOB = "hitl-api"
# The Secrets the manifests name; ops/kubernetes/README.md says how to create each.
SECRETS = {"hitl-database", "hitl-redis", "hitl-webhook", "hitl-api-keys"}
# PostgreSQL's default max_connections (100) less superuser_reserved_connections (3) and
# room for the migration Job, an operator's psql and the exporter.
POSTGRES_CONNECTION_BUDGET = 90
# Closing the database pool and Redis after the straggler (service/server.py, step 4).
CLEANUP_MARGIN_SECONDS = 3.0
SECRET_LOOKING = re.compile(r"PASSWORD|TOKEN|SECRET|DATABASE_URL|REDIS_URL|WEBHOOK_URL|_KEY$")


def kustomize(path: Path) -> list[dict[str, Any]]:
    kubectl = require_tool("kubectl")
    result = subprocess.run(
        [kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module", params=sorted(BUILDS))
def build(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, kustomize(BUILDS[request.param])


def one(objects: list[dict[str, Any]], kind: str, component: str | None = None) -> dict[str, Any]:
    found = [
        o
        for o in objects
        if o["kind"] == kind
        and (component is None or o["metadata"]["labels"]["app.kubernetes.io/component"] == component)
    ]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def pod_specs(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for o in objects:
        if o["kind"] in {"Deployment", "Job"}:
            yield o["kind"], o["spec"]["template"]["spec"]


def api_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    containers = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def settings_of(objects: list[dict[str, Any]]) -> Settings:
    """The service's settings as a replica reads them: the ConfigMap parsed by the
    service's own parser (a malformed value fails here as it would at start-up)."""
    return Settings.from_env(one(objects, "ConfigMap")["data"])


def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels is used here"
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


# -- builds and schemas ----------------------------------------------------------------


def test_each_build_renders_every_object(build: tuple[str, list[dict[str, Any]]]) -> None:
    name, objects = build
    kinds = [o["kind"] for o in objects]
    assert set(kinds) == EXPECTED_KINDS, name
    assert len(kinds) == len(set(kinds)), f"{name}: a kind rendered twice: {kinds}"


def test_builtin_objects_validate_against_the_kubernetes_api_schema(
    build: tuple[str, list[dict[str, Any]]],
) -> None:
    name, objects = build
    checked = 0
    for obj in objects:
        if obj["kind"] in SCHEMAS:
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name} {obj['kind']}/{obj['metadata']['name']} at {list(exc.path)}: {exc.message}")
        checked += 1
    assert checked == len(EXPECTED_KINDS) - len(SCHEMAS)


def test_the_validator_refuses_a_misspelt_field() -> None:
    """The schema check can fail: strict mode refuses an unknown field and a wrong type."""
    deployment = one(kustomize(BUILDS["base"]), "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbes"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinessProbes"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    del container["readinessProbes"]
    deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "30"
    with pytest.raises(kubernetes_validate.ValidationError, match="not of type"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_prometheus_operator_objects_validate_against_their_structural_schema(
    build: tuple[str, list[dict[str, Any]]],
) -> None:
    name, objects = build
    for kind, schema in SCHEMAS.items():
        obj = one(objects, kind)
        errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(obj), key=str)
        assert not errors, f"{name} {kind}: " + "; ".join(
            f"{list(e.path)}: {e.message}" for e in errors[:5]
        )


def test_the_structural_schemas_refuse_what_the_operator_would() -> None:
    objects = kustomize(BUILDS["base"])
    monitor = one(objects, "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["intervall"] = "10s"
    rule = one(objects, "PrometheusRule")
    rule["spec"]["groups"][0]["rules"][0]["for"] = "5 minutes"
    for obj in (monitor, rule):
        assert list(jsonschema.Draft202012Validator(SCHEMAS[obj["kind"]]).iter_errors(obj))


# -- the PrometheusRule is the rule files ------------------------------------------------


def test_prometheusrule_is_generated_from_the_current_rule_files() -> None:
    """Regenerated in memory and compared: fails when a rule file changed and `make
    rules` was not run, or when someone edited the generated file."""
    committed = (ROOT / gen.OUTPUT).read_text()
    assert committed == gen.render(ROOT), "stale: run `make rules`"


def test_prometheusrule_holds_every_group_of_the_rule_files_unchanged() -> None:
    generated = yaml.safe_load((ROOT / gen.OUTPUT).read_text())["spec"]["groups"]
    expected = []
    for path in sorted((OPS / "prometheus" / "rules").glob("*.yml")):
        if path.name not in gen.NOT_FOR_THE_OPERATOR:
            expected.extend(yaml.safe_load(path.read_text())["groups"])
    assert generated == expected
    assert {p.name for p in (OPS / "prometheus" / "rules").glob("*.yml")} >= gen.NOT_FOR_THE_OPERATOR
    alerts = [r["alert"] for g in generated for r in g["rules"] if "alert" in r]
    assert "ServiceDown" in alerts and len(alerts) >= 15


def test_check_mode_catches_a_drifted_rule_file(tmp_path: Path) -> None:
    rules = tmp_path / gen.RULES_DIR
    rules.mkdir(parents=True)
    for path in (OPS / "prometheus" / "rules").glob("*.yml"):
        (rules / path.name).write_text(path.read_text())
    out = tmp_path / gen.OUTPUT
    out.parent.mkdir(parents=True)
    out.write_text((ROOT / gen.OUTPUT).read_text())
    assert gen.main(["--check", "--root", str(tmp_path)]) == 0
    alerts = rules / "hitl.alerts.yml"
    alerts.write_text(alerts.read_text().replace("for: 5m", "for: 6m", 1))
    assert gen.main(["--check", "--root", str(tmp_path)]) == 1
    assert gen.main(["--root", str(tmp_path)]) == 0
    assert gen.main(["--check", "--root", str(tmp_path)]) == 0


def test_duplicate_group_names_are_refused(tmp_path: Path) -> None:
    rules = tmp_path / gen.RULES_DIR
    rules.mkdir(parents=True)
    group = "groups:\n  - name: same\n    rules:\n      - record: a:b\n        expr: vector(1)\n"
    (rules / "a.yml").write_text(group)
    (rules / "b.yml").write_text(group)
    with pytest.raises(gen.RulesError, match="same"):
        gen.render(tmp_path)


def test_prometheusrule_groups_pass_promtool(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    spec = one(kustomize(BUILDS["production"]), "PrometheusRule")["spec"]
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump(spec, sort_keys=False))
    result = subprocess.run(
        [promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_make_rules_regenerates_the_prometheusrule() -> None:
    makefile = (ROOT / "Makefile").read_text()
    target = makefile.split("\nrules:", 1)[1].split("\n\n", 1)[0]
    assert "ops/slo/generate.py" in target and "ops/kubernetes/generate_rules.py" in target
    assert target.index("ops/slo/generate.py") < target.index("ops/kubernetes/generate_rules.py")


# -- what the service needs ------------------------------------------------------------


def test_probes_point_at_the_services_routes_and_port(build: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = build
    container = api_container(objects)
    routes = {route.path for route in health.routes}  # type: ignore[attr-defined]
    assert container["readinessProbe"]["httpGet"]["path"] == "/api/health/ready" in routes
    assert container["livenessProbe"]["httpGet"]["path"] == "/api/health" in routes
    assert container["startupProbe"]["httpGet"]["path"] == "/api/health" in routes
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    settings = settings_of(objects)
    assert settings.host == "0.0.0.0"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert ports[container[probe]["httpGet"]["port"]] == settings.port


def test_startup_probe_outlasts_the_database_connect_deadline(
    build: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = build
    probe = api_container(objects)["startupProbe"]
    budget = probe["periodSeconds"] * probe["failureThreshold"]
    assert budget > settings_of(objects).db_connect_deadline_seconds * 2


def test_termination_grace_outlasts_drain_and_grace(build: tuple[str, list[dict[str, Any]]]) -> None:
    name, objects = build
    settings = settings_of(objects)
    needed = (
        settings.shutdown_drain_seconds
        + settings.shutdown_grace_seconds
        + STRAGGLER_SECONDS
        + CLEANUP_MARGIN_SECONDS
    )
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > needed, name
    assert "preStop" not in api_container(objects).get("lifecycle", {}), "the drain is the preStop"


def test_pods_run_as_the_dockerfiles_non_root_user_on_a_read_only_root(
    build: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = build
    dockerfile = (ROOT / "Dockerfile").read_text()
    uid = int(re.search(r"useradd [^\n]*--uid (\d+)", dockerfile)[1])  # type: ignore[index]
    assert re.findall(r"^USER (\S+)$", dockerfile, re.M) == ["hitl"] and uid != 0
    for kind, pod in pod_specs(objects):
        assert pod["securityContext"]["runAsNonRoot"] is True, kind
        assert pod["securityContext"]["runAsUser"] == uid, kind
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, kind
        assert pod["automountServiceAccountToken"] is False, kind
        for container in pod["containers"] + pod.get("initContainers", []):
            sc = container["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] == uid, kind
            assert sc["readOnlyRootFilesystem"] is True, kind
            assert sc["allowPrivilegeEscalation"] is False, kind
            assert sc["capabilities"] == {"drop": ["ALL"]}, kind
            # The only writable place is an emptyDir on /tmp; the keys are read-only.
            volumes = {v["name"]: v for v in pod["volumes"]}
            for mount in container["volumeMounts"]:
                writable = not mount.get("readOnly", False)
                assert not writable or "emptyDir" in volumes[mount["name"]], (kind, mount)
            assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"]), kind


def test_every_container_has_requests_and_limits(build: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = build
    for kind, pod in pod_specs(objects):
        for container in pod["containers"]:
            resources = container["resources"]
            for part in ("requests", "limits"):
                assert set(resources[part]) == {"cpu", "memory"}, (kind, part)
    resources = api_container(objects)["resources"]
    # One asyncio process: a limit above one core buys nothing, one below it throttles.
    assert resources["limits"]["cpu"] in {"1", "1000m"}


def test_secrets_only_by_reference(build: tuple[str, list[dict[str, Any]]]) -> None:
    name, objects = build
    assert not [o for o in objects if o["kind"] == "Secret"], "no Secret object in the repo"
    config = one(objects, "ConfigMap")["data"]
    assert not [k for k in config if SECRET_LOOKING.search(k)], config
    referenced = set()
    for _, pod in pod_specs(objects):
        for container in pod["containers"]:
            for env in container.get("env", []):
                if SECRET_LOOKING.search(env["name"]):
                    assert "value" not in env, (name, env["name"])
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    referenced.add(ref["name"])
        referenced |= {v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
    assert referenced == SECRETS
    readme = (K8S / "README.md").read_text()
    for secret in SECRETS:
        assert re.search(rf"create secret generic {secret}\b", readme), secret


def test_no_secret_manifest_in_the_tree() -> None:
    for path in K8S.rglob("*"):
        if path.is_file() and path.suffix in {".yaml", ".yml"}:
            assert not re.search(r"^kind:\s*Secret\s*$", path.read_text(), re.M), path


def test_configmap_names_only_documented_settings(build: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = build
    readme = (ROOT / "README.md").read_text()
    for key in one(objects, "ConfigMap")["data"]:
        if key.startswith("HITL_"):
            assert f"`{key}`" in readme, f"{key}: not a documented setting (a typo?)"


def test_labels_and_selectors_agree(build: tuple[str, list[dict[str, Any]]]) -> None:
    name, objects = build
    deployment = one(objects, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]
    assert matches(selector, pod_labels)
    job_labels = one(objects, "Job")["spec"]["template"]["metadata"]["labels"]

    service = one(objects, "Service")
    assert service["spec"]["selector"] == selector["matchLabels"]
    pdb = one(objects, "PodDisruptionBudget")
    netpol = one(objects, "NetworkPolicy")
    for what, sel in (("PDB", pdb["spec"]["selector"]), ("NetworkPolicy", netpol["spec"]["podSelector"])):
        assert matches(sel, pod_labels), (name, what)
        # Never the migration Job's pod: it must not count against the budget.
        assert not matches(sel, job_labels), (name, what)
    assert not matches({"matchLabels": service["spec"]["selector"]}, job_labels)
    for constraint in deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]:
        assert matches(constraint["labelSelector"], pod_labels)

    hpa = one(objects, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])

    monitor = one(objects, "ServiceMonitor")
    assert matches(monitor["spec"]["selector"], service["metadata"]["labels"])
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= service_ports
    # The operator's job label: the Service's label named by jobLabel (else its name).
    job = service["metadata"]["labels"].get(monitor["spec"].get("jobLabel", ""), service["metadata"]["name"])
    assert job == JOB, f"{name}: series would carry job={job!r}, the rules select {JOB!r}"
    config_refs = {e["configMapRef"]["name"] for e in api_container(objects)["envFrom"]}
    assert config_refs == {one(objects, "ConfigMap")["metadata"]["name"]}
    namespaces = {o["metadata"].get("namespace") for o in objects}
    assert len(namespaces) == 1, namespaces


def test_servicemonitor_scrapes_as_prometheus_yml_does() -> None:
    config = yaml.safe_load((OPS / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == JOB)
    endpoint = one(kustomize(BUILDS["base"]), "ServiceMonitor")["spec"]["endpoints"][0]
    assert endpoint["path"] == job.get("metrics_path", "/metrics") == "/metrics"
    assert endpoint["interval"] == job.get("scrape_interval", config["global"]["scrape_interval"])


def test_replicas_autoscaling_and_disruption_budget(build: tuple[str, list[dict[str, Any]]]) -> None:
    name, objects = build
    deployment = one(objects, "Deployment")
    hpa = one(objects, "HorizontalPodAutoscaler")["spec"]
    assert hpa["minReplicas"] >= 3 and hpa["maxReplicas"] > hpa["minReplicas"]
    # A manifest count other than the HPA's minimum would be reset by every apply.
    assert deployment["spec"].get("replicas", hpa["minReplicas"]) == hpa["minReplicas"], name
    assert {m["type"] for m in hpa["metrics"]} == {"Resource"}
    pdb = one(objects, "PodDisruptionBudget")["spec"]
    assert pdb.get("maxUnavailable") == 1 or pdb.get("minAvailable", 0) >= 2
    rollout = deployment["spec"]["strategy"]["rollingUpdate"]
    assert rollout["maxUnavailable"] == 0


def test_database_connections_fit_postgres(build: tuple[str, list[dict[str, Any]]]) -> None:
    """Every replica the HPA may start, plus the rollout's surge pod and the migration
    Job, each with a full pool, within PostgreSQL's connections."""
    name, objects = build
    deployment = one(objects, "Deployment")
    pods = one(objects, "HorizontalPodAutoscaler")["spec"]["maxReplicas"]
    pods += deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
    connections = pods * settings_of(objects).db_pool_max + 1
    assert connections <= POSTGRES_CONNECTION_BUDGET, name


def test_production_overlay_pins_an_image_and_changes_the_config() -> None:
    base, production = (kustomize(BUILDS[b]) for b in ("base", "production"))
    image = api_container(production)["image"]
    assert re.fullmatch(r"[\w./-]+/hitl-api:[\w.-]+", image) and not image.endswith(":latest")
    job_image = one(production, "Job")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert job_image == image, "the migration runs the code that is rolled out"
    assert one(production, "ConfigMap")["metadata"]["name"] != one(base, "ConfigMap")["metadata"]["name"]
    assert settings_of(production).telemetry != settings_of(base).telemetry
    assert one(production, "ServiceMonitor")["metadata"]["labels"]["release"]


# -- deploy.sh: migrate, then roll out ---------------------------------------------------

FAKE_KUBECTL = """#!/bin/sh
echo "$*" >> "$KUBECTL_LOG"
case "$1" in
  kustomize) exec "$REAL_KUBECTL" "$@" ;;
  wait) [ -z "$FAIL_WAIT" ] || exit 1 ;;
esac
"""


def run_deploy(tmp_path: Path, fail_wait: bool) -> tuple[int, list[str]]:
    fake = tmp_path / "kubectl"
    fake.write_text(FAKE_KUBECTL)
    fake.chmod(0o755)
    log = tmp_path / "calls.log"
    env = {
        **os.environ,
        "KUBECTL": str(fake),
        "KUBECTL_LOG": str(log),
        "REAL_KUBECTL": require_tool("kubectl"),
        "FAIL_WAIT": "1" if fail_wait else "",
    }
    result = subprocess.run(
        ["bash", str(DEPLOY), str(BUILDS["production"])],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    return result.returncode, log.read_text().splitlines()


def test_deploy_waits_for_the_migration_before_the_rollout(tmp_path: Path) -> None:
    code, calls = run_deploy(tmp_path, fail_wait=False)
    assert code == 0
    verbs = [c.split()[0] for c in calls]
    assert verbs == ["kustomize", "delete", "apply", "wait", "apply", "rollout"], calls
    assert "job hitl-migrate --namespace hitl" in calls[1]
    assert "--selector app.kubernetes.io/component=migration" in calls[2]
    assert "job/hitl-migrate" in calls[3] and "condition=complete" in calls[3]
    assert "--selector" not in calls[4]


def test_deploy_stops_when_the_migration_fails(tmp_path: Path) -> None:
    code, calls = run_deploy(tmp_path, fail_wait=True)
    assert code != 0
    assert [c.split()[0] for c in calls] == ["kustomize", "delete", "apply", "wait"], calls


def test_generator_runs_as_a_script() -> None:
    result = subprocess.run(
        [sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True, timeout=60, cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
