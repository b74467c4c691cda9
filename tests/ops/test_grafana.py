"""Grafana: provisioning and dashboards as data, every PromQL checked by a real Prometheus
and against the series that actually exist (service, exporters, recording rules)."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import DASHBOARDS_DIR, OPS, recording_rule_names

PROVISIONING = OPS / "grafana" / "provisioning"
DASHBOARDS = {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS_DIR.glob("*.json"))}

# Series hitl-api exports (telemetry/metrics.py; the seed's names). Histograms expand to
# _bucket/_sum/_count below.
SERVICE_COUNTERS_AND_GAUGES = {
    "http_requests_total", "review_created_total", "review_decision_total", "apv_validation_total",
    "db_connections_active", "db_connections_idle", "db_connections_max", "db_query_errors_total",
    "cache_operations_total", "cache_hit_ratio", "cache_evictions_total", "app_errors_total",
    "app_exceptions_total", "service_up", "slo_requests_total", "slo_requests_good", "slo_requests_bad",
    "hitl_build_info", "hitl_webhook_outbox_depth", "hitl_webhook_deliveries_total",
    "hitl_tracing_spans_dropped_total", "hitl_webhook_outbox_oldest_pending_seconds",
    "hitl_cache_circuit_state", "hitl_cache_circuit_opened_total", "hitl_http_connections_open",
    "hitl_http_connections_refused_total", "hitl_http_requests_unparsable_total",
    "review_queue_pending", "review_queue_oldest_pending_seconds",
    "hitl_live_connections_open", "hitl_live_events_published_total", "hitl_live_events_delivered_total",
}
SERVICE_HISTOGRAMS = {
    "http_request_duration_seconds", "http_request_size_bytes", "http_response_size_bytes",
    "review_decision_duration_seconds", "apv_validation_duration_seconds", "db_query_duration_seconds",
    "hitl_webhook_delivery_lag_seconds",
}
# Prometheus' own per-target series.
SCRAPE_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
KNOWN_SERIES = (
    SERVICE_COUNTERS_AND_GAUGES
    | {f"{h}{s}" for h in SERVICE_HISTOGRAMS for s in ("_bucket", "_sum", "_count")}
    | SCRAPE_SERIES
    | recording_rule_names()
)

# The seed's panels (section 5) -> the panel title that implements each.
SEED_PANELS = {
    "hitl-overview.json": {
        "Service Status": "Service Status", "Request Rate": "Request Rate", "Error Rate": "Error Rate",
        "P95 Latency": "P95 Latency", "30d Availability": "30d Availability",
        "Request Rate by Endpoint": "Request Rate by Endpoint", "Latency Percentiles": "Latency Percentiles",
        "Review Operations": "Review Operations", "Database Connections": "Database Connections",
    },
    "hitl-slo.json": {
        "Availability SLO Gauge": "Availability SLO (30d)", "Latency SLO Gauge": "Latency SLO (7d)",
        "Error Budget Consumed": "Error Budget Consumed", "Error Budget Burn Rate": "Error Budget Burn Rate (1h)",
        "Availability Trend": "Availability Trend", "Error Budget Burn Rate Trend": "Error Budget Burn Rate Trend",
        "Latency Percentiles": "Latency Percentiles", "Error Rate Breakdown": "Error Rate Breakdown",
        "SLO Summary Table": "SLO Summary",
    },
}
# Panels that must draw their SLO / alert thresholds as lines, and the levels they draw.
THRESHOLD_LINES = {
    ("hitl-overview.json", "Latency Percentiles"): {0.5, 1},
    ("hitl-overview.json", "Error Rate (5xx)"): {0.005, 0.01},
    ("hitl-overview.json", "Oldest Open Review"): {3600, 7200},
    ("hitl-overview.json", "Anomaly Z-Scores"): {-3, 3},
    ("hitl-slo.json", "Latency Percentiles"): {0.5},
    ("hitl-slo.json", "Error Rate Breakdown"): {0.001},
    ("hitl-slo.json", "Availability Trend"): {0.999},
    ("hitl-slo.json", "Error Budget Burn Rate Trend"): {1, 6, 14.4},
}
# What a Grafana variable stands for when the query is sent to Prometheus.
SUBSTITUTIONS = {
    "$__rate_interval": "1m", "$__interval": "30s", "$__range": "1h",
    "$instance": ".*", "$slo": ".+",
}


def provisioned_datasources() -> dict[str, str]:
    config = yaml.safe_load((PROVISIONING / "datasources" / "datasources.yml").read_text())
    return {d["uid"]: d["type"] for d in config["datasources"]}


def walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)


def expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target, annotation and variable query."""
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for annotation in dashboard["annotations"]["list"]:
        if "expr" in annotation:
            found.append((f"annotation {annotation['name']!r}", annotation["expr"]))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["query"]["query"])
            assert match, variable["query"]
            found.append((f"variable ${variable['name']}", match.group(1)))
    return found


def substitute(expr: str) -> str:
    for variable, value in sorted(SUBSTITUTIONS.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


_KEYWORDS = {"and", "or", "unless", "bool", "by", "without", "on", "ignoring", "group_left",
             "group_right", "offset", "inf", "nan", "atan2"}


def metric_names(expr: str) -> set[str]:
    """Series names a (formatted) PromQL expression selects."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)                  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)                             # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)                            # ranges, subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\boffset\s+\w+", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)\s*(\()?", text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _KEYWORDS or re.fullmatch(r"\d+\w*", name):
            continue
        names.add(name)
    return names


def format_query(api: str, expr: str) -> str:
    data = urllib.parse.urlencode({"query": expr}).encode()
    try:
        with urllib.request.urlopen(f"{api}/api/v1/format_query", data=data, timeout=5) as response:  # loopback
            return str(json.load(response)["data"])
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"Prometheus rejects {expr!r}: {exc.read().decode()}") from exc


def test_dashboards_are_valid_json_with_unique_panel_ids() -> None:
    """Both dashboards parse, have a uid and title, and no panel id repeats."""
    assert set(DASHBOARDS) == {"hitl-overview.json", "hitl-slo.json"}
    for name, dashboard in DASHBOARDS.items():
        assert dashboard["uid"] == name.removesuffix(".json") and dashboard["title"]
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids)), name


def test_dashboards_have_every_seed_panel() -> None:
    """Every panel the seed lists for each dashboard is there."""
    for name, panels in SEED_PANELS.items():
        titles = {p["title"] for p in DASHBOARDS[name]["panels"]}
        missing = {seed for seed, title in panels.items() if title not in titles}
        assert not missing, f"{name} lacks {missing}"


def test_refresh_rates_are_the_seeds() -> None:
    """Overview refreshes every 10 s, the SLO dashboard every 30 s."""
    assert DASHBOARDS["hitl-overview.json"]["refresh"] == "10s"
    assert DASHBOARDS["hitl-slo.json"]["refresh"] == "30s"


def test_dashboards_have_datasource_and_instance_variables() -> None:
    """A Prometheus datasource variable and a multi-value instance variable over hitl-api."""
    for name, dashboard in DASHBOARDS.items():
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        assert variables["instance"]["type"] == "query" and variables["instance"]["multi"], name
        assert 'job="hitl-api"' in variables["instance"]["query"]["query"]


def test_raw_service_queries_filter_by_the_instance_variable() -> None:
    """Dashboards use the instance variable rather than hard-coded instances."""
    for name, dashboard in DASHBOARDS.items():
        for where, expr in expressions(dashboard):
            if 'job="hitl-api"' in expr and where.startswith("panel"):
                assert 'instance=~"$instance"' in expr, (name, where)
            assert "instance=\"" not in expr, (name, where)


def test_every_datasource_reference_resolves() -> None:
    """Each datasource is the datasource variable or a provisioned uid of the right type."""
    provisioned = provisioned_datasources()
    for name, dashboard in DASHBOARDS.items():
        for node in walk(dashboard):
            ds = node.get("datasource")
            if not isinstance(ds, dict):
                continue
            if ds.get("uid") == "${datasource}":
                assert ds["type"] == "prometheus", (name, ds)
            elif ds.get("type") != "grafana":
                assert provisioned.get(ds["uid"]) == ds["type"], (name, ds)


def test_latency_and_error_panels_draw_their_thresholds() -> None:
    """SLO and alert levels appear as threshold lines on the graphs."""
    for (name, title), levels in THRESHOLD_LINES.items():
        (panel,) = [p for p in DASHBOARDS[name]["panels"] if p["title"] == title]
        defaults = panel["fieldConfig"]["defaults"]
        assert defaults["custom"]["thresholdsStyle"]["mode"] in {"line", "dashed", "line+area", "dashed+area"}
        steps = {s["value"] for s in defaults["thresholds"]["steps"] if s["value"] is not None}
        assert levels <= steps, (name, title, steps)


def test_datasource_provisioning_links_traces_and_logs() -> None:
    """Prometheus, Jaeger (trace -> logs in Loki) and Loki (trace_id -> Jaeger)."""
    config = yaml.safe_load((PROVISIONING / "datasources" / "datasources.yml").read_text())
    by_uid = {d["uid"]: d for d in config["datasources"]}
    assert by_uid["prometheus"]["type"] == "prometheus" and by_uid["prometheus"]["isDefault"]
    assert by_uid["jaeger"]["jsonData"]["tracesToLogsV2"]["datasourceUid"] == "loki"
    (derived,) = by_uid["loki"]["jsonData"]["derivedFields"]
    assert derived["datasourceUid"] == "jaeger"
    line = '{"event": "request", "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7"}'
    match = re.search(derived["matcherRegex"], line)
    assert match and match.group(1) == "4bf92f3577b34da6a3ce929d0e0e4736"
    # `$$` keeps Grafana's provisioning from expanding ${__value.raw} as an env variable.
    assert derived["url"] == "$${__value.raw}"


def test_dashboard_provider_puts_dashboards_in_the_seed_folder() -> None:
    """Dashboards provisioned from files into the "Adaptive Immune System" folder."""
    config = yaml.safe_load((PROVISIONING / "dashboards" / "dashboards.yml").read_text())
    (provider,) = config["providers"]
    assert provider["folder"] == "Adaptive Immune System"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


@pytest.mark.parametrize("dashboard_file", sorted(DASHBOARDS))
def test_every_promql_is_valid_and_uses_only_existing_series(prometheus_api: str, dashboard_file: str) -> None:
    """Prometheus' own parser accepts every expression (variables substituted), and every
    series it names is exported by hitl-api, Prometheus or a recording rule."""
    problems = []
    for where, expr in expressions(DASHBOARDS[dashboard_file]):
        formatted = format_query(prometheus_api, substitute(expr))
        unknown = metric_names(formatted) - KNOWN_SERIES
        if unknown:
            problems.append(f"{where}: unknown series {sorted(unknown)} in {formatted}")
    assert not problems, "\n".join(problems)


def test_metric_name_extraction() -> None:
    """The extractor the check above relies on finds names, not functions or labels."""
    expr = ('sum by (le) (rate(a_bucket{job="x",le=~"1|b"}[5m])) / on (job) group_left () '
            'b:rec:rate5m offset 30m and histogram_quantile(0.9, c) > 1 unless vector(1)')
    assert metric_names(expr) == {"a_bucket", "b:rec:rate5m", "c"}


def test_alert_dashboard_links_point_at_existing_dashboards(tmp_path: Path) -> None:
    """The uid/slug in every alert's dashboard_url is one of these dashboards'."""
    from .conftest import alert_rules

    uids = {d["uid"] for d in DASHBOARDS.values()}
    for rule in alert_rules():
        uid = rule["annotations"]["dashboard_url"].split("/d/", 1)[1].split("/", 1)[0]
        assert uid in uids, rule["alert"]
