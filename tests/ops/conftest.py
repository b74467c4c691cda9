"""Fixtures for the ops tests: the real tools, real processes on free loopback ports.

A tool the tests need and cannot find skips the test on a workstation and fails it
under CI=true (ops/local/install-tools.sh is supposed to have installed it there).
Every process started here is killed in the fixture's teardown.
"""

from __future__ import annotations

import copy
import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.conftest import free_port, require_tool, wait_until_ready

__all__ = ["free_port", "require_tool"]  # the ops tests import them from here

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"
RULES_DIR = OPS / "prometheus" / "rules"
PROMTOOL_TESTS_DIR = OPS / "prometheus" / "tests"
ALERTMANAGER_YML = OPS / "alertmanager" / "alertmanager.yml"
DASHBOARDS_DIR = OPS / "grafana" / "dashboards"
RUNBOOKS_MD = ROOT / "docs" / "runbooks.md"
LOOPBACK = "127.0.0.1"


def load_module(path: Path, name: str) -> ModuleType:
    """Import a script of ops/ (not a package) by path."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


def rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = []
    for path in sorted(RULES_DIR.glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            group["_file"] = path.name
            groups.append(group)
    return groups


def alert_rules() -> list[dict[str, Any]]:
    return [
        {**rule, "_group": group["name"], "_interval": group.get("interval"), "_file": group["_file"]}
        for group in rule_groups()
        for rule in group["rules"]
        if "alert" in rule
    ]


def recording_rule_names() -> set[str]:
    return {rule["record"] for group in rule_groups() for rule in group["rules"] if "record" in rule}


class Processes:
    """Background processes of one test; all killed at teardown, newest first."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._running: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str], *, env: dict[str, str] | None = None,
              ready_url: str | None = None, timeout: float = 20.0) -> subprocess.Popen[bytes]:
        log = self.directory / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True
            )
        self._running.append((name, process))
        if ready_url:
            wait_until_ready(ready_url, process, log, timeout)
        return process

    def log(self, name: str) -> str:
        path = self.directory / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop_all(self) -> None:
        for _, process in reversed(self._running):
            if process.poll() is None:
                process.terminate()
        for _, process in reversed(self._running):
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        self._running.clear()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.stop_all()


@pytest.fixture(scope="session")
def prometheus_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An empty Prometheus on a free loopback port, for its PromQL parser."""
    binary = require_tool("prometheus")
    directory = tmp_path_factory.mktemp("prometheus-parser")
    config = directory / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 1m\nscrape_configs: []\n")
    port = free_port()
    procs = Processes(directory)
    try:
        procs.start(
            "prometheus",
            [binary, f"--config.file={config}", f"--storage.tsdb.path={directory / 'data'}",
             f"--web.listen-address={LOOPBACK}:{port}"],
            ready_url=f"http://{LOOPBACK}:{port}/-/ready",
        )
        yield f"http://{LOOPBACK}:{port}"
    finally:
        procs.stop_all()


def with_webhook_receivers(config: dict[str, Any], base_url: str, *, fast: bool = False) -> dict[str, Any]:
    """The routing tree and inhibitions untouched, every receiver's integrations replaced
    by one webhook to ``base_url/<receiver name>`` (nothing leaves the machine).

    ``fast`` shortens the route timers to seconds for tests that wait for a delivery.
    """
    config = copy.deepcopy(config)
    config["global"] = {"resolve_timeout": config.get("global", {}).get("resolve_timeout", "5m")}
    config["receivers"] = [
        {"name": receiver["name"],
         "webhook_configs": [{"url": f"{base_url}/{receiver['name']}", "send_resolved": False}]}
        for receiver in config["receivers"]
    ]
    if fast:
        def shorten(route: dict[str, Any]) -> None:
            for key, value in (("group_wait", "1s"), ("group_interval", "2s"), ("repeat_interval", "1h")):
                if key in route or route is config["route"]:
                    route[key] = value
            for child in route.get("routes", []):
                shorten(child)

        shorten(config["route"])
    return config


def start_alertmanager(processes: Processes, config: dict[str, Any], directory: Path) -> str:
    """Alertmanager on a free loopback port, gossip off; returns its base URL."""
    binary = require_tool("prometheus-alertmanager")
    path = directory / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    processes.start(
        "alertmanager",
        [binary, f"--config.file={path}", f"--storage.path={directory / 'am-data'}",
         f"--web.listen-address={LOOPBACK}:{port}", "--cluster.listen-address="],
        ready_url=f"http://{LOOPBACK}:{port}/-/ready",
    )
    return f"http://{LOOPBACK}:{port}"


def fast_rule_files(directory: Path, short_for: dict[str, str] | None = None) -> list[str]:
    """Copies of the real rule files in ``directory`` with every group evaluated each
    second and, for the alerts named in ``short_for``, that ``for`` instead of theirs
    (nothing else changed), for a Prometheus that a test runs for a minute."""
    short_for = short_for or {}
    paths = []
    for source in sorted(RULES_DIR.glob("*.yml")):
        rules = yaml.safe_load(source.read_text())
        for group in rules["groups"]:
            group["interval"] = "1s"
            for rule in group["rules"]:
                if rule.get("alert") in short_for:
                    rule["for"] = short_for[rule["alert"]]
        target = directory / source.name
        target.write_text(yaml.safe_dump(rules, sort_keys=False))
        paths.append(str(target))
    return paths
