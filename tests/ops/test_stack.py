"""`make stack` (ops/stack/run.sh): the loopback monitoring stack starts, scrapes the
exporters, loads the real rules, and stops every process it started."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import yaml

from tests.conftest import http_get

from .conftest import (
    ROOT,
    Processes,
    free_port,
    load_module,
    require_tool,
    wait_until_ready,
)

render = load_module(ROOT / "ops" / "stack" / "render.py", "stack_render")


def test_rendered_prometheus_config_targets_only_loopback() -> None:
    """Every target of the rendered config is 127.0.0.1; jobs and rules are kept."""
    config = render.prometheus_config(
        {"hitl-api": ["127.0.0.1:8000"], "postgres": ["127.0.0.1:9187"]}, "127.0.0.1:9093"
    )
    targets = [t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert targets and all(t.startswith("127.0.0.1:") for t in targets)
    assert {j["job_name"] for j in config["scrape_configs"]} == {"hitl-api", "postgres"}
    assert not any("dns_sd_configs" in j for j in config["scrape_configs"])
    assert all(Path(p).is_absolute() for p in config["rule_files"])


def test_render_refuses_a_non_loopback_target() -> None:
    """A target that is not 127.0.0.1 is a mistake, not a configuration."""
    try:
        render.prometheus_config({"hitl-api": ["10.0.0.1:8000"]}, "127.0.0.1:9093")
    except ValueError as exc:
        assert "loopback" in str(exc)
    else:
        raise AssertionError("non-loopback target accepted")


def test_rendered_alertmanager_config_reads_local_secrets(tmp_path: Path) -> None:
    """Secret files move from /run/secrets to the given directory; routes stay."""
    config = render.alertmanager_config(tmp_path)
    original = yaml.safe_load((ROOT / "ops" / "alertmanager" / "alertmanager.yml").read_text())
    assert config["route"] == original["route"] and config["inhibit_rules"] == original["inhibit_rules"]
    assert "/run/secrets" not in json.dumps(config)
    assert str(tmp_path) in json.dumps(config)


def test_make_stack_runs_and_stops_cleanly(processes: Processes, tmp_path: Path) -> None:
    """run.sh starts Prometheus (rules loaded, exporters scraped up), Alertmanager and the
    exporters on the given ports; SIGTERM stops all of them."""
    for tool in ("prometheus", "prometheus-alertmanager", "prometheus-postgres-exporter", "prometheus-redis-exporter"):
        require_tool(tool)
    ports = {name: free_port() for name in ("PROMETHEUS", "ALERTMANAGER", "POSTGRES_EXPORTER", "REDIS_EXPORTER")}
    env = {**os.environ, "STACK_DIR": str(tmp_path / "stack"), "HITL_PORT": str(free_port()),
           "STACK_SCRAPE_INTERVAL": "1s",
           **{f"STACK_{k}_PORT": str(v) for k, v in ports.items()}}
    prom = f"http://127.0.0.1:{ports['PROMETHEUS']}"
    stack = processes.start("stack", ["bash", "ops/stack/run.sh"], env=env, ready_url=f"{prom}/-/ready", timeout=30)
    # run.sh starts them one after the other: Prometheus can be ready while the next
    # one still binds its port (a CI run here found Alertmanager not listening yet).
    log = processes.directory / "stack.log"
    wait_until_ready(f"http://127.0.0.1:{ports['ALERTMANAGER']}/-/ready", stack, log)
    wait_until_ready(f"http://127.0.0.1:{ports['POSTGRES_EXPORTER']}/metrics", stack, log)
    wait_until_ready(f"http://127.0.0.1:{ports['REDIS_EXPORTER']}/metrics", stack, log)

    rules = json.loads(http_get(f"{prom}/api/v1/rules"))["data"]["groups"]
    assert {"hitl-critical", "hitl-warning", "hitl-deployment", "slo-burn-rate-page", "hitl-anomaly"} <= {
        g["name"] for g in rules
    }
    # The exporters are scraped and up (at 1 s here instead of the compose 30 s).
    deadline = time.monotonic() + 20
    health: dict[str, str] = {}
    while time.monotonic() < deadline:
        targets = json.loads(http_get(f"{prom}/api/v1/targets"))["data"]["activeTargets"]
        health = {t["labels"]["job"]: t["health"] for t in targets}
        if health.get("postgres") == "up" and health.get("redis") == "up" and health.get("alertmanager") == "up":
            break
        time.sleep(0.5)
    assert health.get("postgres") == "up" and health.get("redis") == "up", health
    assert all(t["scrapeUrl"].startswith("http://127.0.0.1:") for t in targets)

    stack.send_signal(signal.SIGTERM)
    stack.wait(timeout=15)
    # Every port is free again: nothing outlived the script.
    time.sleep(0.5)
    for port in ports.values():
        result = subprocess.run(["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"], capture_output=True, timeout=5)
        assert result.returncode != 0, f"port {port} still open"
