"""Prometheus config and rules: promtool-clean, every seed alert present with its
threshold, labels and annotations, and every alert covered by a promtool unit test."""

from __future__ import annotations

import re
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from .conftest import (
    DASHBOARDS_DIR,
    OPS,
    PROMTOOL_TESTS_DIR,
    RULES_DIR,
    RUNBOOKS_MD,
    alert_rules,
    require_tool,
)

# The seed's alerts: severity, `for` and the threshold as it appears in the expression.
SEED_ALERTS = {
    "HighErrorRate": ("critical", "5m", "> 0.01"),
    "HighLatency": ("critical", "5m", "> 1"),
    "ServiceDown": ("critical", "1m", "== 0"),
    "DatabaseConnectionPoolExhaustion": ("critical", "5m", "> 0.9"),
    "LowAvailability": ("critical", "1m", "< 0.95"),
    "ElevatedErrorRate": ("warning", "10m", "> 0.005"),
    "ElevatedLatency": ("warning", "10m", "> 0.5"),
    "ErrorBudgetBurningFast": ("warning", "1h", "> 2"),
    "HighDatabaseErrors": ("warning", "5m", "> 1"),
    "LowCacheHitRatio": ("warning", "15m", "< 0.5"),
    "HighCacheEvictionRate": ("warning", "10m", "> 10"),
    "SlowReviewDecisions": ("info", "15m", "> 60"),
    "HighRejectionRate": ("info", "30m", "> 0.5"),
    "HighAPVValidationFailures": ("info", "10m", "> 0.2"),
    # The two breaches compare against the recorded objective (99.9 % / 95 % from slo.yml).
    "AvailabilitySLOBreach": ("critical", "5m", "slo:objective:ratio"),
    "LatencySLOBreach": ("critical", "5m", "slo:objective:ratio"),
    "ErrorBudgetLow": ("warning", "5m", "< 0.1"),
    "DeploymentErrorRateSpike": ("critical", "1m", "> 0.05"),
}
# Seed "Alert Evaluation Intervals": critical 30s, warning 1m, deployment 30s.
INTERVAL_BY_SEVERITY = {"critical": "30s", "warning": "1m", "info": "1m"}


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub generates for headings (lowercase, punctuation dropped)."""
    anchors = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", markdown, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def test_promtool_check_config_is_clean() -> None:
    """prometheus.yml and every rule file it loads pass `promtool check config`."""
    promtool = require_tool("promtool")
    result = subprocess.run(
        [promtool, "check", "config", str(OPS / "prometheus" / "prometheus.yml")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize("rule_file", sorted(p.name for p in RULES_DIR.glob("*.yml")))
def test_promtool_check_rules_is_clean(rule_file: str) -> None:
    """Each rule file passes `promtool check rules`, lint included (no duplicate rules)."""
    promtool = require_tool("promtool")
    result = subprocess.run(
        [promtool, "check", "rules", str(RULES_DIR / rule_file)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "lint error" not in result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    """Every promtool unit test file passes (run in parallel: they are independent)."""
    promtool = require_tool("promtool")
    files = sorted(PROMTOOL_TESTS_DIR.glob("*.test.yml"))
    assert files
    running = {
        f.name: subprocess.Popen(
            [promtool, "test", "rules", f.name], cwd=PROMTOOL_TESTS_DIR,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for f in files
    }
    failures = {}
    for name, process in running.items():
        try:
            output, _ = process.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
            failures[name] = "timed out\n" + output
            continue
        if process.returncode != 0:
            failures[name] = output[-4000:]
    assert not failures, "\n".join(f"--- {k}\n{v}" for k, v in failures.items())


def test_every_seed_alert_exists_with_its_threshold_severity_and_for() -> None:
    """All 18 alerts of the seed exist under their names, with the seed's thresholds."""
    rules = defaultdict(list)
    for rule in alert_rules():
        rules[rule["alert"]].append(rule)
    for name, (severity, for_, threshold) in SEED_ALERTS.items():
        assert name in rules, f"seed alert {name} is missing"
        (rule,) = rules[name]
        assert rule["labels"]["severity"] == severity, name
        assert rule["for"] == for_, name
        assert threshold in rule["expr"], f"{name}: threshold {threshold!r} not in {rule['expr']!r}"


def test_replica_down_is_named_and_only_the_whole_service_down_pages() -> None:
    """With several replicas (issue 12): InstanceDown keeps `instance` (a per-target
    expression, no aggregation) and names it, as a warning; ServiceDown aggregates over
    every instance and alone pages."""
    rules = {rule["alert"]: rule for rule in alert_rules()}
    instance_down, service_down = rules["InstanceDown"], rules["ServiceDown"]
    assert instance_down["labels"]["severity"] == "warning"
    assert instance_down["labels"]["service"] == service_down["labels"]["service"]
    assert not re.search(r"\b(sum|max|min|avg|count)\b", instance_down["expr"])
    assert "$labels.instance" in instance_down["annotations"]["summary"]
    assert "$labels.instance" in instance_down["annotations"]["description"]
    assert service_down["labels"]["severity"] == "critical"
    assert "sum by (job)" in service_down["expr"] and "instance" not in service_down["expr"]


def test_every_alert_has_labels_and_annotations() -> None:
    """for, severity, team, summary, description with the value, runbook and dashboard links."""
    runbook_anchors = github_anchors(RUNBOOKS_MD.read_text())
    dashboard_uids = {
        yaml.safe_load(p.read_text())["uid"] for p in DASHBOARDS_DIR.glob("*.json")
    }
    for rule in alert_rules():
        name = rule["alert"]
        assert rule.get("for"), f"{name}: no `for`"
        labels, annotations = rule.get("labels", {}), rule.get("annotations", {})
        assert labels.get("severity") in {"critical", "warning", "info"}, name
        assert labels.get("team") == "adaptive-immune", name
        assert labels.get("category"), name
        assert annotations.get("summary"), name
        assert "$value" in annotations.get("description", ""), f"{name}: description lacks {{{{ $value }}}}"
        url = annotations.get("runbook_url", "")
        assert url.startswith("https://github.com/adaptive-immune/hitl/blob/main/docs/runbooks.md#"), name
        anchor = url.rsplit("#", 1)[1]
        assert anchor == name.lower(), f"{name}: runbook anchor {anchor}"
        assert anchor in runbook_anchors, f"{name}: docs/runbooks.md has no #{anchor}"
        dashboard = annotations.get("dashboard_url", "")
        match = re.match(r"^http://localhost:3000/d/([\w-]+)/", dashboard)
        assert match and match.group(1) in dashboard_uids, f"{name}: dashboard_url {dashboard!r}"


def test_groups_are_evaluated_at_the_seed_intervals() -> None:
    """critical alerts every 30s, warning and info every 1m, deployment alerts every 30s,
    each in a group of its own severity."""
    for rule in alert_rules():
        severity, category = rule["labels"]["severity"], rule["labels"]["category"]
        expected = "30s" if category == "deployment" else INTERVAL_BY_SEVERITY[severity]
        assert rule["_interval"] == expected, f"{rule['alert']} in {rule['_group']} every {rule['_interval']}"
        if category == "deployment":
            assert rule["_group"] == "hitl-deployment"
    groups = defaultdict(set)
    for rule in alert_rules():
        groups[rule["_group"]].add(rule["labels"]["severity"])
    assert all(len(severities) == 1 for severities in groups.values()), groups


def test_inhibition_labels_are_present() -> None:
    """The labels Alertmanager's inhibitions match on exist: service everywhere, family on
    the critical/warning pairs, slo and burn_window on burn-rate alerts."""
    families = defaultdict(set)
    for rule in alert_rules():
        labels = rule["labels"]
        # service comes either as a static label or from the slo:* recording rules.
        assert "service" in labels or "slo:" in rule["expr"], rule["alert"]
        if "family" in labels:
            families[labels["family"]].add(labels["severity"])
        if rule["_file"] == "slo.rules.yml":
            assert labels["burn_window"], rule["alert"]
    assert families == {
        "error_rate": {"critical", "warning"},
        "latency": {"critical", "warning"},
        "database": {"critical", "warning"},
    }


def _promtool_expectations() -> dict[tuple[str, str], set[str]]:
    """(alertname, burn_window or '') -> {"fires", "silent"} across every test file."""
    seen: dict[tuple[str, str], set[str]] = defaultdict(set)
    for path in PROMTOOL_TESTS_DIR.glob("*.test.yml"):
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                name = case["alertname"]
                if not case.get("exp_alerts"):
                    seen[(name, "")].add("silent")
                for alert in case.get("exp_alerts") or []:
                    seen[(name, "")].add("fires")
                    window = alert["exp_labels"].get("burn_window", "")
                    seen[(name, window)].add("fires")
                    assert "exp_annotations" in alert, f"{path.name}: {name} annotations unchecked"
    return seen


def test_every_alert_has_a_promtool_test_that_fires_and_one_that_stays_silent() -> None:
    """No alert goes untested: each one fires in some promtool test and stays silent in
    another; each burn-rate window fires in its own."""
    seen = _promtool_expectations()
    for rule in alert_rules():
        name = rule["alert"]
        assert seen[(name, "")] == {"fires", "silent"}, f"{name}: promtool tests show {seen[(name, '')]}"
        window = rule["labels"].get("burn_window")
        if window:
            assert "fires" in seen[(name, window)], f"{name} burn_window={window} never fires in a test"


def test_rule_files_loaded_by_prometheus_are_all_present() -> None:
    """prometheus.yml's rule_files glob picks up every rule file (nothing silently unloaded)."""
    config = yaml.safe_load((OPS / "prometheus" / "prometheus.yml").read_text())
    loaded = {p for pattern in config["rule_files"] for p in (OPS / "prometheus").glob(pattern)}
    assert loaded == set(RULES_DIR.glob("*.yml"))


def test_prometheus_config_scrapes_the_stack_at_the_seed_intervals() -> None:
    """hitl-api every 10 s through DNS discovery (so --scale works), everything else 30 s,
    external labels set, Alertmanager wired."""
    config = yaml.safe_load((OPS / "prometheus" / "prometheus.yml").read_text())
    assert config["global"]["scrape_interval"] == "30s"
    assert config["global"]["external_labels"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    api = jobs["hitl-api"]
    assert api["scrape_interval"] == "10s"
    assert api["dns_sd_configs"][0]["names"] == ["hitl-api"]
    assert {"postgres", "redis", "node", "cadvisor", "prometheus", "alertmanager", "grafana"} <= set(jobs)
    for name, job in jobs.items():
        if name != "hitl-api":
            assert job.get("scrape_interval", "30s") == "30s", name
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [
        "alertmanager:9093", "alertmanager-b:9093",
    ]


def test_promtool_test_files_load_every_rule_file_they_need(tmp_path: Path) -> None:
    """The hand-written promtool tests load the real rule files (not copies)."""
    for path in PROMTOOL_TESTS_DIR.glob("*.test.yml"):
        for rule_file in yaml.safe_load(path.read_text())["rule_files"]:
            assert (PROMTOOL_TESTS_DIR / rule_file).resolve().parent == RULES_DIR, path.name
