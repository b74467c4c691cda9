"""`make stack REPLICAS=3` (ops/stack/run.sh): the rendered HAProxy config and file_sd
targets, and the script itself starting three replicas, HAProxy and Prometheus, then
stopping every one of them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from service.storage.migrate import drop_database
from tests.conftest import (
    PG_BASE,
    RUN_ID,
    delete_run_keys,
    free_port,
    http_get,
    require_tool,
    wait_until_ready,
)
from tests.ops.conftest import ROOT, Processes

from .conftest import render, require_haproxy

pytestmark = pytest.mark.slow


def test_rendered_haproxy_config_is_valid_and_checks_readiness(tmp_path: Path) -> None:
    """`haproxy -c` accepts the rendered template; every replica is a checked server on
    loopback, readiness is the health check, and L7 retries are for GET/HEAD only."""
    haproxy = require_haproxy()
    text = render.haproxy_config(8000, [8101, 8102, 8103], 8404, tmp_path / "haproxy.sock")
    path = tmp_path / "haproxy.cfg"
    path.write_text(text)
    result = subprocess.run([haproxy, "-c", "-f", str(path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    servers = [line.split() for line in text.splitlines() if line.strip().startswith("server ")]
    assert [s[1:3] for s in servers] == [
        ["api-1", "127.0.0.1:8101"], ["api-2", "127.0.0.1:8102"], ["api-3", "127.0.0.1:8103"]
    ]
    assert "http-check send meth GET uri /api/health/ready" in text
    assert "http-check expect status 200" in text
    assert "http-request disable-l7-retry unless { method GET HEAD }" in text
    assert "bind 127.0.0.1:8000" in text and "bind 127.0.0.1:8404" in text


def test_render_refuses_two_replicas_on_one_port(tmp_path: Path) -> None:
    """One port per replica is what gives each its own `instance` label."""
    with pytest.raises(ValueError, match="distinct"):
        render.haproxy_config(8000, [8101, 8101], 8404, tmp_path / "s")


def test_prometheus_discovers_replicas_from_the_file_sd_file(tmp_path: Path) -> None:
    """With replicas, the hitl-api job reads the target file; the other jobs keep their
    static loopback targets; the file lists one target per replica."""
    render.write_replica_files(tmp_path, 8000, [8101, 8102, 8103], 8404)
    targets = json.loads((tmp_path / "hitl-api-targets.json").read_text())
    assert targets == [{"targets": ["127.0.0.1:8101", "127.0.0.1:8102", "127.0.0.1:8103"], "labels": {}}]
    config = render.use_file_sd(
        render.prometheus_config(
            {"hitl-api": ["127.0.0.1:8000"], "postgres": ["127.0.0.1:9187"]}, "127.0.0.1:9093"
        ),
        "hitl-api",
        tmp_path / "hitl-api-targets.json",
    )
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["hitl-api"]["file_sd_configs"] == [
        {"files": [str(tmp_path / "hitl-api-targets.json")], "refresh_interval": "5s"}
    ]
    assert "static_configs" not in jobs["hitl-api"]
    assert jobs["postgres"]["static_configs"] == [{"targets": ["127.0.0.1:9187"]}]
    promtool = require_tool("promtool")
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [promtool, "check", "config", "--syntax-only", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_render_writes_absolute_paths_for_a_relative_stack_dir(tmp_path: Path) -> None:
    """STACK_DIR defaults to the relative .local/stack, but Prometheus resolves a file_sd
    path against its config's own directory: the rendered path must be absolute."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "ops" / "stack" / "render.py"), "--out", "rel/stack",
         "--replica-ports", "8101", "8102"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load((tmp_path / "rel" / "stack" / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "hitl-api"]
    assert job["file_sd_configs"][0]["files"] == [str(tmp_path / "rel" / "stack" / "hitl-api-targets.json")]
    assert [j["job_name"] for j in config["scrape_configs"]][-1] == "haproxy"


def test_make_stack_with_three_replicas_runs_and_stops_cleanly(tmp_path: Path) -> None:
    """run.sh REPLICAS=3 migrates once, starts three replicas on the configured ports,
    HAProxy on HITL_PORT (all three UP) and Prometheus scraping each from the file_sd
    file; SIGTERM stops every process it started."""
    require_haproxy()
    for tool in ("prometheus", "prometheus-alertmanager", "prometheus-postgres-exporter",
                 "prometheus-redis-exporter"):
        require_tool(tool)
    ports = {name: free_port() for name in
             ("PROMETHEUS", "ALERTMANAGER", "POSTGRES_EXPORTER", "REDIS_EXPORTER", "HAPROXY_STATS")}
    replica_ports = [free_port() for _ in range(3)]
    hitl_port = free_port()
    database_url = f"{PG_BASE}/hitl_ha_stack_{RUN_ID}_{uuid.uuid4().hex[:6]}"
    env = {
        **os.environ,
        "REPLICAS": "3",
        "STACK_DIR": str(tmp_path / "stack"),
        "STACK_SCRAPE_INTERVAL": "1s",
        "STACK_REPLICA_PORTS": " ".join(map(str, replica_ports)),
        "HITL_PORT": str(hitl_port),
        "HITL_DATABASE_URL": database_url,
        "HITL_REDIS_KEY_PREFIX": f"hitl-test:{RUN_ID}:ha-stack:",
        "HITL_API_KEYS_FILE": str(tmp_path / "keys" / "api-keys.json"),
        "HITL_SHUTDOWN_DRAIN_SECONDS": "0.5",
        "OTEL_SDK_DISABLED": "true",
        **{f"STACK_{k}_PORT": str(v) for k, v in ports.items()},
    }
    (tmp_path / "keys").mkdir()
    processes = Processes(tmp_path)
    prometheus = f"http://127.0.0.1:{ports['PROMETHEUS']}"
    try:
        stack = processes.start("stack", ["bash", "ops/stack/run.sh"], env=env,
                                ready_url=f"{prometheus}/-/ready", timeout=60)
        log = tmp_path / "stack.log"
        wait_until_ready(f"http://127.0.0.1:{hitl_port}/api/health/ready", stack, log, timeout=60)

        deadline = time.monotonic() + 30
        health: dict[str, str] = {}
        while time.monotonic() < deadline:
            targets = json.loads(http_get(f"{prometheus}/api/v1/targets"))["data"]["activeTargets"]
            health = {t["labels"]["instance"]: t["health"] for t in targets if t["labels"]["job"] == "hitl-api"}
            if len(health) == 3 and set(health.values()) == {"up"}:
                break
            time.sleep(0.5)
        assert health == {f"127.0.0.1:{port}": "up" for port in replica_ports}, health
        stats = http_get(f"http://127.0.0.1:{ports['HAPROXY_STATS']}/stats;csv").decode()
        assert stats.count(",UP,") >= 3, stats
        # HAProxy's own exporter is scraped too.
        metrics = http_get(f"http://127.0.0.1:{ports['HAPROXY_STATS']}/metrics").decode()
        assert "haproxy_backend_active_servers" in metrics

        stack.send_signal(signal.SIGTERM)
        stack.wait(timeout=30)
        time.sleep(0.5)
        for port in [hitl_port, *replica_ports, *ports.values()]:
            result = subprocess.run(["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"],
                                    capture_output=True, timeout=5)
            assert result.returncode != 0, f"port {port} still open:\n{processes.log('stack')[-2000:]}"
    finally:
        processes.stop_all()
        asyncio.run(drop_database(database_url))
        asyncio.run(delete_run_keys())
