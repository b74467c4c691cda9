"""End to end, on loopback: hitl-api -> Prometheus (the real rules) -> Alertmanager (the
real routing tree and inhibitions) -> a webhook receiver in this test.

The only changes to the shipped configs are speed: 1 s scrape and evaluation intervals,
1 s route timers, `for` of HighErrorRate/ElevatedErrorRate cut to seconds (keeping
HighErrorRate first, as in production), and every receiver replaced by a webhook to the
test (routing, grouping keys and inhibit rules untouched).
"""

from __future__ import annotations

import asyncio
import copy
import os
import sys
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from .conftest import (
    ALERTMANAGER_YML,
    LOOPBACK,
    ROOT,
    Processes,
    fast_rule_files,
    free_port,
    load_module,
    recording_rule_names,
    require_tool,
    rule_groups,
    start_alertmanager,
    with_webhook_receivers,
)

pytestmark = pytest.mark.slow
render = load_module(ROOT / "ops" / "stack" / "render.py", "stack_render_e2e")

SHORT_FOR = {"HighErrorRate": "2s", "ElevatedErrorRate": "4s"}
PG_BASE = os.environ.get("HITL_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
DEADLINE_SECONDS = 45


def rules_needing_history() -> set[str]:
    """Recording rules that compare with days ago (`offset`, the anomaly baselines) and
    those built on them: a Prometheus started a minute ago has nothing to compare with."""
    rules = [rule for group in rule_groups() for rule in group["rules"] if "record" in rule]
    needs: set[str] = set()
    changed = True
    while changed:
        changed = False
        for rule in rules:
            expr = rule["expr"]
            if rule["record"] not in needs and (" offset " in expr or any(n in expr for n in needs)):
                needs.add(rule["record"])
                changed = True
    return needs


class Receiver:
    """A webhook receiver: records every notification, by receiver name."""

    def __init__(self) -> None:
        self.notifications: list[dict[str, Any]] = []
        self.app = web.Application()
        self.app.router.add_post("/{receiver}", self.receive)

    async def receive(self, request: web.Request) -> web.Response:
        payload = await request.json()
        payload["_path"] = request.match_info["receiver"]
        self.notifications.append(payload)
        return web.Response(status=200)

    def alerts(self, alertname: str) -> list[tuple[str, dict[str, Any]]]:
        return [
            (n["_path"], alert)
            for n in self.notifications
            for alert in n["alerts"]
            if alert["labels"].get("alertname") == alertname
        ]


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    hook = Receiver()
    runner = web.AppRunner(hook.app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, LOOPBACK, port)
    await site.start()
    try:
        yield hook, f"http://{LOOPBACK}:{port}"
    finally:
        await runner.cleanup()


def _run_cli(env: dict[str, str], *args: str) -> str:
    import subprocess

    result = subprocess.run(
        [sys.executable, "-m", "service", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.fixture
def service_env(tmp_path: Path) -> Any:
    """Settings for a hitl-api process with its own database (dropped afterwards)."""
    require_tool("prometheus")
    require_tool("prometheus-alertmanager")
    run = uuid.uuid4().hex[:10]
    database_url = f"{PG_BASE}/hitl_ops_e2e_{run}"
    port = free_port()
    env = {
        **os.environ,
        "HITL_HOST": LOOPBACK,
        "HITL_PORT": str(port),
        "HITL_DATABASE_URL": database_url,
        "HITL_REDIS_KEY_PREFIX": f"hitl-ops-e2e-{run}:",
        "HITL_API_KEYS_FILE": str(tmp_path / "api-keys.json"),
        "HITL_ENABLE_TEST_ROUTES": "true",
        "HITL_LOG_FORMAT": "json",
        "OTEL_TRACES_EXPORTER": "none",
    }
    _run_cli(env, "createdb")
    try:
        _run_cli(env, "migrate")
        key = _run_cli(env, "keys", "add", "ops-e2e", "--roles", "producer,reviewer,viewer")
        yield env, f"http://{LOOPBACK}:{port}", key
    finally:
        from service.storage.migrate import drop_database

        asyncio.run(drop_database(database_url))


async def _get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def _drive_traffic(session: aiohttp.ClientSession, api: str, key: str, stop: asyncio.Event) -> None:
    """Real business traffic once, then a steady stream of failures until stopped."""
    from service.api.openapi import EXAMPLE_SUBMISSION

    headers = {"Authorization": f"Bearer {key}"}
    for _ in range(3):
        body = {**copy.deepcopy(EXAMPLE_SUBMISSION), "apv_id": f"apv-{uuid.uuid4().hex[:12]}"}
        async with session.post(f"{api}/api/reviews", json=body, headers=headers) as response:
            assert response.status == 201, await response.text()
            review = await response.json()
    async with session.post(
        f"{api}/api/reviews/{review['id']}/decision", json={"decision": "approve"}, headers=headers
    ) as response:
        assert response.status == 200, await response.text()
    async with session.get(f"{api}/api/reviews/{review['id']}", headers=headers) as response:
        assert response.status == 200
    while not stop.is_set():
        for _ in range(20):
            async with session.get(f"{api}/api/_test/fail") as response:
                assert response.status == 500
        await asyncio.sleep(0.1)


async def test_error_burst_pages_through_the_real_routing_tree(
    processes: Processes, tmp_path: Path, receiver: tuple[Receiver, str], service_env: Any
) -> None:
    """A burst of 5xx fires HighErrorRate, which reaches the PagerDuty receiver with its
    labels; ElevatedErrorRate fires too but is inhibited and never delivered; and every
    recording rule has data."""
    hook, hook_url = receiver
    env, api, key = service_env

    # Alertmanager with the real tree, receivers pointed at this test.
    am_config = with_webhook_receivers(yaml.safe_load(ALERTMANAGER_YML.read_text()), hook_url, fast=True)
    am_dir = tmp_path / "am"
    am_dir.mkdir()
    am = await asyncio.to_thread(start_alertmanager, processes, am_config, am_dir)

    await asyncio.to_thread(
        processes.start, "hitl-api", [sys.executable, "-m", "service", "serve"],
        env=env, ready_url=f"{api}/api/health/ready", timeout=30,
    )

    prom_dir = tmp_path / "prometheus"
    prom_dir.mkdir()
    prom_port = free_port()
    config = render.prometheus_config(
        {"hitl-api": [api.removeprefix("http://")], "prometheus": [f"{LOOPBACK}:{prom_port}"]},
        am.removeprefix("http://"),
        rule_files=fast_rule_files(prom_dir, SHORT_FOR),
        scrape_interval="1s",
        evaluation_interval="1s",
    )
    (prom_dir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    prom = f"http://{LOOPBACK}:{prom_port}"
    await asyncio.to_thread(
        processes.start, "prometheus",
        [require_tool("prometheus"), f"--config.file={prom_dir / 'prometheus.yml'}",
         f"--storage.tsdb.path={prom_dir / 'data'}", f"--web.listen-address={LOOPBACK}:{prom_port}",
         "--rules.alert.resend-delay=1s"],
        ready_url=f"{prom}/-/ready",
    )

    stop = asyncio.Event()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        traffic = asyncio.create_task(_drive_traffic(session, api, key, stop))
        try:
            deadline = time.monotonic() + DEADLINE_SECONDS
            while not hook.alerts("HighErrorRate") and time.monotonic() < deadline:
                assert not traffic.done() or traffic.exception() is None, traffic.exception()
                await asyncio.sleep(0.25)
            delivered = hook.alerts("HighErrorRate")
            assert delivered, (
                f"HighErrorRate not delivered in {DEADLINE_SECONDS}s; received: "
                f"{[a['labels']['alertname'] for n in hook.notifications for a in n['alerts']]}\n"
                f"prometheus log:\n{processes.log('prometheus')[-2000:]}"
            )
            path, alert = delivered[0]
            assert path == "pagerduty-critical"
            assert alert["status"] == "firing"
            labels = alert["labels"]
            assert {k: labels.get(k) for k in ("severity", "team", "service", "family", "category", "job")} == {
                "severity": "critical", "team": "adaptive-immune", "service": "hitl-api",
                "family": "error_rate", "category": "http", "job": "hitl-api",
            }
            # External labels say which Prometheus the alert came from.
            assert labels["monitor"] == "hitl"
            assert alert["annotations"]["runbook_url"].endswith("#higherrorrate")
            assert "%" in alert["annotations"]["description"]

            # ElevatedErrorRate fires as well, but HighErrorRate (same family, same
            # service) inhibits it: it is suppressed in Alertmanager and never delivered.
            query = urllib.parse.quote('alertname="ElevatedErrorRate"')
            elevated: list[dict[str, Any]] = []
            while time.monotonic() < deadline:
                elevated = await _get_json(session, f"{am}/api/v2/alerts?filter={query}")
                if elevated:
                    break
                await asyncio.sleep(0.25)
            assert elevated, "ElevatedErrorRate never reached Alertmanager"
            assert elevated[0]["status"]["state"] == "suppressed"
            assert elevated[0]["status"]["inhibitedBy"]
            await asyncio.sleep(3)  # > group_wait: a delivery would have happened by now
            assert not hook.alerts("ElevatedErrorRate"), "an inhibited alert was delivered"
        finally:
            stop.set()
            await traffic

        # Every rule evaluates without error (the anomaly baselines included, which have
        # no data yet), and every recording rule not waiting for days of history
        # produces a series on real data.
        groups = (await _get_json(session, f"{prom}/api/v1/rules"))["data"]["groups"]
        unhealthy = {
            rule["name"]: rule.get("lastError") for group in groups for rule in group["rules"]
            if rule["health"] != "ok"
        }
        assert not unhealthy, unhealthy
        history = rules_needing_history()
        assert "hitl:review_submissions:rate1h_zscore" in history
        empty = []
        for name in sorted(recording_rule_names() - history):
            result = await _get_json(session, f"{prom}/api/v1/query?query={urllib.parse.quote(name)}")
            if not result["data"]["result"]:
                empty.append(name)
        assert not empty, f"recording rules without data: {empty}"

        # The series the dashboards rely on exist in the live service.
        selector = urllib.parse.quote('{job="hitl-api"}')
        exported = await _get_json(session, f"{prom}/api/v1/label/__name__/values?match[]={selector}")
        assert {"http_requests_total", "slo_requests_total", "hitl_build_info", "service_up",
                "db_connections_active", "cache_operations_total"} <= set(exported["data"])
