"""Alertmanager: valid config, the seed's routes (checked with amtool), inhibitions
proven on a running Alertmanager, and no secret in the repository."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import (
    ALERTMANAGER_YML,
    OPS,
    ROOT,
    Processes,
    alert_rules,
    free_port,
    require_tool,
    start_alertmanager,
    with_webhook_receivers,
)

CONFIG = yaml.safe_load(ALERTMANAGER_YML.read_text())
SECRETS_DIR = OPS / "alertmanager" / "secrets"

# label set -> receivers, as the seed says: critical -> PagerDuty + Slack,
# warning -> Slack, info -> email, SLO -> PagerDuty + Slack, deployment -> its Slack channel.
ROUTES = [
    ({"alertname": "HighErrorRate", "severity": "critical", "category": "http"}, "pagerduty-critical"),
    ({"alertname": "ServiceDown", "severity": "critical", "category": "availability"}, "pagerduty-critical"),
    # One replica of several down: Slack, not a page (issue 12).
    ({"alertname": "InstanceDown", "severity": "warning", "category": "availability"}, "slack-warnings"),
    ({"alertname": "ElevatedErrorRate", "severity": "warning", "category": "http"}, "slack-warnings"),
    ({"alertname": "LowCacheHitRatio", "severity": "warning", "category": "cache"}, "slack-warnings"),
    ({"alertname": "SlowReviewDecisions", "severity": "info", "category": "business"}, "email-info"),
    ({"alertname": "ReviewSubmissionRateAnomaly", "severity": "warning", "category": "anomaly"}, "slack-warnings"),
    ({"alertname": "AvailabilitySLOBreach", "severity": "critical", "category": "slo"}, "slo-pagerduty-slack"),
    ({"alertname": "ErrorBudgetLow", "severity": "warning", "category": "slo"}, "slo-pagerduty-slack"),
    ({"alertname": "AvailabilityErrorBudgetBurn", "severity": "critical", "category": "slo", "burn_window": "1h"},
     "slo-pagerduty-slack"),
    ({"alertname": "LatencyErrorBudgetBurn", "severity": "warning", "category": "slo", "burn_window": "3d"},
     "slo-pagerduty-slack"),
    ({"alertname": "DeploymentErrorRateSpike", "severity": "critical", "category": "deployment"}, "slack-deployments"),
    # Anything unlabelled still reaches a human.
    ({"alertname": "SomethingNew"}, "slack-warnings"),
]


def amtool_route(labels: dict[str, str]) -> str:
    amtool = require_tool("amtool")
    result = subprocess.run(
        [amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER_YML}",
         *(f"{k}={v}" for k, v in labels.items())],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_amtool_check_config_is_clean() -> None:
    """`amtool check-config` accepts the config and its templates."""
    amtool = require_tool("amtool")
    result = subprocess.run([amtool, "check-config", str(ALERTMANAGER_YML)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize(("labels", "receiver"), ROUTES, ids=[r[0]["alertname"] + "-" + r[1] for r in ROUTES])
def test_route(labels: dict[str, str], receiver: str) -> None:
    """`amtool config routes test` sends this label set to the expected receiver."""
    assert amtool_route(labels) == receiver


def test_every_alert_prometheus_can_fire_reaches_the_receiver_of_its_kind() -> None:
    """Each real alert, with its real labels, lands where its category and severity say."""
    expected_by_severity = {"critical": "pagerduty-critical", "warning": "slack-warnings", "info": "email-info"}
    for rule in alert_rules():
        labels = {"alertname": rule["alert"], **rule["labels"]}
        category = labels["category"]
        expected = {"deployment": "slack-deployments", "slo": "slo-pagerduty-slack"}.get(
            category, expected_by_severity[labels["severity"]]
        )
        assert amtool_route(labels) == expected, labels


def test_receivers_read_every_secret_from_a_mounted_file() -> None:
    """No webhook URL, routing key or password inline; each *_file is a compose secret
    with a documented .example beside it."""
    inline = {"api_url", "routing_key", "service_key", "auth_password", "slack_api_url", "smtp_auth_password", "url"}
    files: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                assert key not in inline, f"secret field {key} inline"
                if key.endswith("_file"):
                    files.add(value)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(CONFIG)
    assert files
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for path in files:
        assert path.startswith("/run/secrets/"), path
        name = path.removeprefix("/run/secrets/")
        assert (SECRETS_DIR / f"{name}.example").is_file(), name
        assert name in compose["secrets"], name
        assert name in compose["services"]["alertmanager"]["secrets"], name


def test_templates_render() -> None:
    """The message templates render with amtool (syntax errors would only show at send time)."""
    amtool = require_tool("amtool")
    result = subprocess.run(
        [amtool, "template", "render", f"--template.glob={OPS / 'alertmanager' / 'templates'}/*.tmpl",
         '--template.text={{ template "hitl.title" . }}|{{ template "hitl.text" . }}|{{ template "hitl.email.html" . }}'],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "Runbook:" in result.stdout and "<h3>" in result.stdout


def _rule_labels(alertname: str, **overrides: str) -> dict[str, str]:
    """The labels Prometheus would send for this alert (static rule labels first)."""
    candidates = [r for r in alert_rules() if r["alert"] == alertname]
    if "burn_window" in overrides:
        candidates = [r for r in candidates if r["labels"]["burn_window"] == overrides["burn_window"]]
    rule = candidates[0]
    return {"alertname": alertname, **rule["labels"], **overrides}


# (scenario, alerts posted together) and what must be suppressed. Each scenario uses its
# own `service`, so scenarios cannot inhibit each other.
INHIBITION_SCENARIOS: list[tuple[str, list[dict[str, str]], set[str]]] = [
    ("critical silences the warning of its family only", [
        _rule_labels("HighErrorRate", service="svc-family"),
        _rule_labels("ElevatedErrorRate", service="svc-family"),
        _rule_labels("HighDatabaseErrors", service="svc-family"),
    ], {"ElevatedErrorRate"}),
    ("HighErrorRate silences HighLatency", [
        _rule_labels("HighErrorRate", service="svc-latency"),
        _rule_labels("HighLatency", service="svc-latency"),
    ], {"HighLatency"}),
    ("ServiceDown silences everything else of its service", [
        _rule_labels("ServiceDown", service="svc-down"),
        _rule_labels("HighErrorRate", service="svc-down"),
        _rule_labels("LowCacheHitRatio", service="svc-down"),
        _rule_labels("LowCacheHitRatio", service="svc-other"),
    ], {"HighErrorRate", "LowCacheHitRatio@svc-down"}),
    ("ServiceDown silences the InstanceDown warning of every replica", [
        _rule_labels("ServiceDown", service="svc-replicas"),
        _rule_labels("InstanceDown", service="svc-replicas", instance="127.0.0.1:8101"),
        _rule_labels("InstanceDown", service="svc-replicas", instance="127.0.0.1:8102"),
    ], {"InstanceDown@svc-replicas"}),
    ("InstanceDown alone is delivered and silences nothing", [
        _rule_labels("InstanceDown", service="svc-one-down", instance="127.0.0.1:8103"),
        _rule_labels("LowCacheHitRatio", service="svc-one-down"),
    ], set()),
    ("a critical alert without a family silences nothing", [
        _rule_labels("LowAvailability", service="svc-nofamily"),
        _rule_labels("LowCacheHitRatio", service="svc-nofamily"),
    ], set()),
    ("a fast burn silences the slower burns of the same SLO", [
        _rule_labels("AvailabilityErrorBudgetBurn", service="svc-burn", slo="availability", burn_window="1h"),
        _rule_labels("AvailabilityErrorBudgetBurn", service="svc-burn", slo="availability", burn_window="6h"),
        _rule_labels("AvailabilityErrorBudgetBurn", service="svc-burn", slo="availability", burn_window="3d"),
        _rule_labels("LatencyErrorBudgetBurn", service="svc-burn", slo="latency", burn_window="1d"),
    ], {"AvailabilityErrorBudgetBurn@6h", "AvailabilityErrorBudgetBurn@3d"}),
]


def _key(labels: dict[str, str], suppressed: set[str]) -> str:
    """How a scenario names an alert: alertname, or alertname@service / @burn_window."""
    for qualifier in (labels.get("service", ""), labels.get("burn_window", "")):
        if f"{labels['alertname']}@{qualifier}" in suppressed:
            return f"{labels['alertname']}@{qualifier}"
    return labels["alertname"]


def test_inhibitions_on_a_running_alertmanager(processes: Processes, tmp_path: Path) -> None:
    """Posted to a real Alertmanager with the real inhibit rules, exactly the expected
    alerts are suppressed, each by an alert that is itself active."""
    config = with_webhook_receivers(CONFIG, f"http://127.0.0.1:{free_port()}")
    url = start_alertmanager(processes, config, tmp_path)
    posted = [labels for _, alerts, _ in INHIBITION_SCENARIOS for labels in alerts]
    body = json.dumps([{"labels": labels, "annotations": {"summary": "test"}} for labels in posted]).encode()
    request = urllib.request.Request(f"{url}/api/v2/alerts", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:  # loopback
        assert response.status == 200

    # Inhibition is computed as alerts are listed; give the API a moment to ingest them.
    deadline = time.monotonic() + 10
    while True:
        with urllib.request.urlopen(f"{url}/api/v2/alerts", timeout=5) as response:
            alerts = json.load(response)
        if len(alerts) == len(posted) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(alerts) == len(posted)

    for scenario, scenario_alerts, suppressed in INHIBITION_SCENARIOS:
        services = {a["service"] for a in scenario_alerts}
        got = {
            _key(a["labels"], suppressed): a["status"]
            for a in alerts if a["labels"]["service"] in services
        }
        states = {name: status["state"] for name, status in got.items()}
        assert {n for n, s in states.items() if s == "suppressed"} == suppressed, (scenario, states)
        for name, status in got.items():
            if name in suppressed:
                assert status["inhibitedBy"], (scenario, name)
        # Alerts sharing a key (InstanceDown of several replicas) each checked too.
        for alert in alerts:
            if alert["labels"]["service"] in services:
                key = _key(alert["labels"], suppressed)
                assert (alert["status"]["state"] == "suppressed") == (key in suppressed), (
                    scenario, alert["labels"])
