"""HA monitoring on loopback (issue 12): a Prometheus HA pair alerting to an Alertmanager
cluster, and long-term storage in VictoriaMetrics.

One module fixture runs, as real processes on free loopback ports:

    exporter of this test ─┐                       ┌─> Alertmanager A ─┐ gossip
    hitl-api (serve) ──────┼─> Prometheus A/B ─────┤                   ├─> webhook of this test
                           │   (replica A / B)     └─> Alertmanager B ─┘
                           └──────── remote_write ───> VictoriaMetrics

Both Prometheus are rendered by ops/stack/render.py from ops/prometheus/prometheus.yml
(its alert_relabel_configs, remote_write and write_relabel_configs, external labels);
both Alertmanagers run ops/alertmanager/alertmanager.yml (routing tree, grouping,
inhibitions) with its receivers replaced by webhooks to this test. The alert rule is the
test's own: HATestFire fires for every `ha_test_fire{case=...}` series the exporter
serves at 1, its `service` label is the case, so every case is its own group.

Shortened here, and only here, to keep the module near a minute:
* scrape and rule evaluation every 1 s (production: 10-30 s) -- alerts fire at once;
* route timers 1 s / 2 s, repeat 1 h (with_webhook_receivers(fast=True)) -- a repeat
  inside the test would look like a duplicate;
* Alertmanager gossip (--cluster.*): gossip-interval 100 ms (200 ms), pushpull-interval
  5 s (1 m), settle-timeout 5 s (1 m: notifications wait for the cluster to settle), and
  peer-timeout 3 s (15 s): how long the second Alertmanager waits for the first one's
  notification-log entry before it notifies itself, so it bounds both the window in which
  a duplicate could appear and failover delivery;
* VictoriaMetrics: -dedup.minScrapeInterval 1 s (= this test's scrape interval, as the
  production 10 s is hitl-api's) and -search.latencyOffset 1 s (30 s hides the newest
  samples from queries); Prometheus sends remote-write batches after 1 s (5 s).

Measured figures (time to delivery, silence propagation, failover) are printed; run
with -s to see them.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import RUN_ID, Keys, serve_environment
from tests.ops.conftest import (
    ALERTMANAGER_YML,
    LOOPBACK,
    ROOT,
    Processes,
    free_port,
    load_module,
    require_tool,
    wait_until_ready,
    with_webhook_receivers,
)

pytestmark = pytest.mark.slow
render = load_module(ROOT / "ops" / "stack" / "render.py", "stack_render_ha")

PEER_TIMEOUT_SECONDS = 3.0
# After the first delivery a duplicate could only come from the other Alertmanager once
# its peer timeout has passed without the first one's notification log reaching it.
DUPLICATE_WINDOW_SECONDS = PEER_TIMEOUT_SECONDS + 3.0
DELIVERY_DEADLINE_SECONDS = 30.0
ALERT = "HATestFire"
RULES = {
    "groups": [{
        "name": "ha-test",
        "interval": "1s",
        "rules": [{
            "alert": ALERT,
            "expr": "ha_test_fire > 0",
            "labels": {"severity": "warning", "service": "ha-test-{{ $labels.case }}"},
            "annotations": {"summary": "HA test alert {{ $labels.case }}",
                            "description": "case {{ $labels.case }} fires ({{ $value }})"},
        }],
    }],
}
FIGURES: dict[str, float | str] = {}


# ---------------------------------------------------------------- test's own servers


class _Server:
    """A ThreadingHTTPServer on a free loopback port, served from a daemon thread."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.httpd = ThreadingHTTPServer((LOOPBACK, free_port()), handler)
        self.address = f"{LOOPBACK}:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@dataclass
class Delivery:
    at: float
    receiver: str
    payload: dict[str, Any]

    @property
    def sender(self) -> str:
        """The Alertmanager that notified (its --web.external-url)."""
        return str(self.payload["externalURL"])


@dataclass
class Receiver:
    """Every webhook notification, in arrival order."""

    deliveries: list[Delivery] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def of_case(self, case: str) -> list[Delivery]:
        with self.lock:
            return [d for d in self.deliveries
                    if any(a["labels"].get("case") == case for a in d.payload["alerts"])]

    def handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    receiver.deliveries.append(
                        Delivery(time.monotonic(), self.path.strip("/"), json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


@dataclass
class Exporter:
    """Serves `ha_test_fire{case=...}`: the test sets a case to 1 to fire its alert."""

    cases: dict[str, int] = field(default_factory=dict)

    def fire(self, *cases: str) -> float:
        for case in cases:
            self.cases[case] = 1
        return time.monotonic()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                lines = ["# TYPE ha_test_fire gauge"]
                lines += [f'ha_test_fire{{case="{c}"}} {v}' for c, v in dict(exporter.cases).items()]
                body = ("\n".join(lines) + "\n").encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


# ---------------------------------------------------------------- helpers


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:  # loopback only
        return json.load(response)


def post_json(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:  # loopback only
        return json.load(response)


def query(base: str, expr: str, at: float | None = None) -> list[dict[str, Any]]:
    params = {"query": expr, **({"time": f"{at:.3f}"} if at is not None else {})}
    result = get_json(f"{base}/api/v1/query?{urllib.parse.urlencode(params)}")
    assert result["status"] == "success", result
    return list(result["data"]["result"])


def poll(what: str, check: Callable[[], Any], timeout: float = DELIVERY_DEADLINE_SECONDS) -> Any:
    """check() until it returns something truthy; its last value, or fail naming what."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (OSError, urllib.error.URLError, KeyError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.1)
    raise AssertionError(f"{what}: not after {timeout}s (last: {last!r})")


def alerts_in(am: str, case: str) -> list[dict[str, Any]]:
    matcher = urllib.parse.quote(f'case="{case}"')
    return list(get_json(f"{am}/api/v2/alerts?filter={matcher}"))


def own_counter(base: str, name: str, labels: str = "") -> float:
    """Sum of a counter in a process's own /metrics (``labels``: the series' first ones,
    as exposed, e.g. 'type="promremotewrite"')."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:  # loopback only
        text = response.read().decode()
    prefixes = (f"{name}{{{labels}",) if labels else (name + " ", name + "{")
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefixes))


# ---------------------------------------------------------------- the fixture


@dataclass
class HA:
    receiver: Receiver
    exporter: Exporter
    prometheus: dict[str, str]  # replica -> base URL
    alertmanagers: dict[str, str]  # base URL -> process name
    processes: dict[str, subprocess.Popen[bytes]]
    api: str
    vm: str
    deliverer: str | None = None  # the Alertmanager that notified first


def _alertmanager_argv(binary: str, config: Path, data: Path, port: int, gossip: int, peer: int) -> list[str]:
    return [
        binary, f"--config.file={config}", f"--storage.path={data}",
        f"--web.listen-address={LOOPBACK}:{port}", f"--web.external-url=http://{LOOPBACK}:{port}",
        f"--cluster.listen-address={LOOPBACK}:{gossip}", f"--cluster.peer={LOOPBACK}:{peer}",
        "--cluster.gossip-interval=100ms", "--cluster.pushpull-interval=5s",
        "--cluster.settle-timeout=5s", f"--cluster.peer-timeout={PEER_TIMEOUT_SECONDS:g}s",
    ]


@pytest.fixture(scope="module")
def ha(tmp_path_factory: pytest.TempPathFactory, database_url: str, api_keys: Keys) -> Iterator[HA]:
    prometheus_bin = require_tool("prometheus")
    alertmanager_bin = require_tool("prometheus-alertmanager")
    vm_bin = require_tool("victoria-metrics")
    directory = tmp_path_factory.mktemp("ha-monitoring")
    procs = Processes(directory)
    started: list[tuple[str, subprocess.Popen[bytes]]] = []
    servers: list[_Server] = []

    def start(name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        process = procs.start(name, argv, env=env)
        started.append((name, process))
        return process

    try:
        receiver, exporter = Receiver(), Exporter()
        hook = _Server(receiver.handler())
        metrics = _Server(exporter.handler())
        servers += [hook, metrics]

        # VictoriaMetrics first and stopped last: the Prometheus flush into it on exit.
        vm_port = free_port()
        vm = f"http://{LOOPBACK}:{vm_port}"
        start("victoriametrics", [
            vm_bin, f"-httpListenAddr={LOOPBACK}:{vm_port}",
            f"-storageDataPath={directory / 'vm-data'}", "-retentionPeriod=1d",
            "-dedup.minScrapeInterval=1s", "-search.latencyOffset=1s",
        ])

        # The Alertmanager cluster: the production tree, receivers pointed at the hook.
        am_config = with_webhook_receivers(
            yaml.safe_load(ALERTMANAGER_YML.read_text()), f"http://{hook.address}", fast=True
        )
        am_path = directory / "alertmanager.yml"
        am_path.write_text(yaml.safe_dump(am_config, sort_keys=False))
        ports = [free_port() for _ in range(4)]
        ams = {}
        for index, (name, (port, gossip), peer) in enumerate(
            (("alertmanager-a", (ports[0], ports[1]), ports[3]), ("alertmanager-b", (ports[2], ports[3]), ports[1]))
        ):
            ams[f"http://{LOOPBACK}:{port}"] = name
            start(name, _alertmanager_argv(alertmanager_bin, am_path, directory / f"am-{index}", port, gossip, peer))

        # hitl-api against this run's database.
        api_port = free_port()
        api = f"http://{LOOPBACK}:{api_port}"
        start("hitl-api", [sys.executable, "-m", "service", "serve"], env=serve_environment(
            HITL_PORT=str(api_port), HITL_DATABASE_URL=database_url,
            HITL_REDIS_KEY_PREFIX=f"hitl-test:{RUN_ID}:ha-mon:",
            HITL_API_KEYS_FILE=str(api_keys.file),
        ))

        for url, name in ams.items():
            wait_until_ready(f"{url}/-/ready", dict(started)[name], directory / f"{name}.log")
        # Both clustered before any alert: a lone Alertmanager would notify by itself.
        for url in ams:
            poll(f"{url} in a settled cluster of two", lambda url=url: (
                (status := get_json(f"{url}/api/v2/status")["cluster"])["status"] == "ready"
                and len(status["peers"]) == 2
            ))

        # The Prometheus pair, rendered from the production config.
        prom_ports = {"A": free_port(), "B": free_port()}
        proms = {replica: f"http://{LOOPBACK}:{port}" for replica, port in prom_ports.items()}
        rules = directory / "ha-test.rules.yml"
        rules.write_text(yaml.safe_dump(RULES, sort_keys=False))
        single = render.prometheus_config(
            {"hitl-api": [f"{LOOPBACK}:{api_port}"], "prometheus": [f"{LOOPBACK}:{prom_ports['A']}"]},
            next(iter(ams)).removeprefix("http://"),
            rule_files=[str(rules)], scrape_interval="1s", evaluation_interval="1s",
        )
        configs = render.ha_prometheus_configs(
            single,
            prometheus=[u.removeprefix("http://") for u in proms.values()],
            alertmanagers=[u.removeprefix("http://") for u in ams],
            victoriametrics=vm.removeprefix("http://"),
        )
        wait_until_ready(f"{vm}/health", dict(started)["victoriametrics"], directory / "victoriametrics.log")
        for replica, config in configs.items():
            config["scrape_configs"].append(
                {"job_name": "ha-test", "static_configs": [{"targets": [metrics.address]}]})
            for write in config["remote_write"]:
                write["queue_config"] = {"batch_send_deadline": "1s"}
            path = directory / f"prometheus-{replica}.yml"
            path.write_text(yaml.safe_dump(config, sort_keys=False))
            start(f"prometheus-{replica}", [
                prometheus_bin, f"--config.file={path}", f"--storage.tsdb.path={directory / f'prom-{replica}'}",
                f"--web.listen-address={LOOPBACK}:{prom_ports[replica]}",
                "--storage.remote.flush-deadline=5s",
            ])
        for replica, url in proms.items():
            wait_until_ready(f"{url}/-/ready", dict(started)[f"prometheus-{replica}"],
                             directory / f"prometheus-{replica}.log")
        wait_until_ready(f"{api}/api/health/ready", dict(started)["hitl-api"], directory / "hitl-api.log", timeout=30)

        yield HA(receiver, exporter, proms, ams, dict(started), api, vm)
    finally:
        # Newest first, one at a time: Prometheus flushes into a VictoriaMetrics that is
        # still up, and an Alertmanager leaves while its peer can acknowledge.
        for _, process in reversed(started):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=12)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5)
        procs.stop_all()
        for server in servers:
            server.close()


@pytest.fixture(scope="module", autouse=True)
def print_figures() -> Iterator[None]:
    yield
    if FIGURES:
        print("\nHA monitoring figures:", json.dumps(FIGURES, indent=1))


def deliver_once(ha: HA, case: str, fired_at: float) -> Delivery:
    """Wait for the notification of ``case``; then, over the window in which a duplicate
    could still appear, assert it stays the only one, with one alert and no `replica`."""
    first = poll(f"{case} delivered", lambda: ha.receiver.of_case(case))[0]
    FIGURES[f"{case}: seconds from firing to delivery"] = round(first.at - fired_at, 2)
    time.sleep(max(0.0, first.at + DUPLICATE_WINDOW_SECONDS - time.monotonic()))
    deliveries = ha.receiver.of_case(case)
    FIGURES[f"{case}: deliveries"] = len(deliveries)
    assert len(deliveries) == 1, [(d.sender, d.payload["alerts"]) for d in deliveries]
    assert len(first.payload["alerts"]) == 1, first.payload["alerts"]
    (alert,) = first.payload["alerts"]
    assert alert["status"] == "firing" and alert["labels"]["alertname"] == ALERT
    assert "replica" not in alert["labels"], alert["labels"]
    # The production routing tree: severity=warning goes to #hitl-alerts.
    assert first.receiver == "slack-warnings"
    return first


def deliverer(ha: HA) -> str:
    """The Alertmanager that notifies first (lowest position in the cluster); found by a
    probe alert when the test that learns it did not run first."""
    if ha.deliverer is None:
        ha.deliverer = deliver_once(ha, "probe", ha.exporter.fire("probe")).sender
    return ha.deliverer


# ---------------------------------------------------------------- configs, no processes


def test_the_two_replicas_differ_only_in_the_replica_label() -> None:
    """Rendered from the one compose config, replica A and B are equal but for
    external_labels.replica; both drop that label from alerts and remote writes, alert to
    both Alertmanagers and write to VictoriaMetrics."""
    single = render.prometheus_config({"hitl-api": ["127.0.0.1:8000"], "prometheus": ["127.0.0.1:9090"]},
                                      "127.0.0.1:9093")
    configs = render.ha_prometheus_configs(
        single, prometheus=["127.0.0.1:9090", "127.0.0.1:9092"],
        alertmanagers=["127.0.0.1:9093", "127.0.0.1:9095"], victoriametrics="127.0.0.1:8428",
    )
    a, b = copy.deepcopy(configs["A"]), copy.deepcopy(configs["B"])
    assert (a["global"]["external_labels"].pop("replica"), b["global"]["external_labels"].pop("replica")) == ("A", "B")
    assert a == b
    drop = {"action": "labeldrop", "regex": "replica"}
    assert drop in a["alerting"]["alert_relabel_configs"]
    assert a["alerting"]["alertmanagers"] == [{"static_configs": [{"targets": ["127.0.0.1:9093", "127.0.0.1:9095"]}]}]
    (write,) = a["remote_write"]
    assert write["url"] == "http://127.0.0.1:8428/api/v1/write" and drop in write["write_relabel_configs"]
    jobs = {j["job_name"]: j["static_configs"][0]["targets"] for j in a["scrape_configs"]}
    assert jobs["prometheus"] == ["127.0.0.1:9090", "127.0.0.1:9092"]
    assert jobs["victoriametrics"] == ["127.0.0.1:8428"]
    # A lone Prometheus (make stack without HA=1, the e2e test) is replica A, no remote write.
    assert single["global"]["external_labels"]["replica"] == "A" and "remote_write" not in single


def test_alertmanager_never_groups_or_inhibits_by_replica() -> None:
    """`replica` is dropped before alerts leave Prometheus; the routing tree must not
    rely on it either (a group or inhibition per replica would notify twice)."""
    config = yaml.safe_load(ALERTMANAGER_YML.read_text())

    def routes(route: dict[str, Any]) -> Iterator[dict[str, Any]]:
        yield route
        for child in route.get("routes", []):
            yield from routes(child)

    for route in routes(config["route"]):
        assert "replica" not in route.get("group_by", []) and "..." not in route.get("group_by", [])
    for rule in config["inhibit_rules"]:
        assert "replica" not in rule.get("equal", [])


# ---------------------------------------------------------------- make stack HA=1


def test_make_stack_ha_runs_the_pair_the_cluster_and_victoriametrics(tmp_path: Path) -> None:
    """`make stack HA=1` (ops/stack/run.sh; before the module fixture starts its own processes): replicas A and B, two Alertmanagers in one
    gossip cluster, VictoriaMetrics receiving both replicas' writes (one `up` series per
    target, no `replica`); SIGTERM stops every process and frees every port."""
    for tool in ("prometheus", "prometheus-alertmanager", "victoria-metrics",
                 "prometheus-postgres-exporter", "prometheus-redis-exporter"):
        require_tool(tool)
    names = ("PROMETHEUS", "PROMETHEUS_B", "ALERTMANAGER", "ALERTMANAGER_B", "ALERTMANAGER_CLUSTER",
             "ALERTMANAGER_B_CLUSTER", "VICTORIAMETRICS", "POSTGRES_EXPORTER", "REDIS_EXPORTER")
    ports = {name: free_port() for name in names}
    env = {**os.environ, "HA": "1", "STACK_DIR": str(tmp_path / "stack"), "HITL_PORT": str(free_port()),
           "STACK_SCRAPE_INTERVAL": "1s", **{f"STACK_{k}_PORT": str(v) for k, v in ports.items()}}
    url = {name: f"http://{LOOPBACK}:{port}" for name, port in ports.items()}
    procs = Processes(tmp_path)
    try:
        stack = procs.start("stack", ["bash", "ops/stack/run.sh"], env=env)
        log = tmp_path / "stack.log"
        for name in ("PROMETHEUS", "PROMETHEUS_B", "ALERTMANAGER", "ALERTMANAGER_B"):
            wait_until_ready(f"{url[name]}/-/ready", stack, log, timeout=30)
        wait_until_ready(f"{url['VICTORIAMETRICS']}/health", stack, log)

        for name, replica in (("PROMETHEUS", "A"), ("PROMETHEUS_B", "B")):
            config = yaml.safe_load(get_json(f"{url[name]}/api/v1/status/config")["data"]["yaml"])
            assert config["global"]["external_labels"]["replica"] == replica
            poll(f"replica {replica} alerting to both Alertmanagers", lambda name=name: {
                a["url"].split("/api/")[0]
                for a in get_json(f"{url[name]}/api/v1/alertmanagers")["data"]["activeAlertmanagers"]
            } == {url["ALERTMANAGER"], url["ALERTMANAGER_B"]})
        for name in ("ALERTMANAGER", "ALERTMANAGER_B"):
            poll(f"{name} in a cluster of two", lambda name=name: len(
                get_json(f"{url[name]}/api/v2/status")["cluster"]["peers"]) == 2)

        # Both Prometheus scrape both Prometheus; VictoriaMetrics holds one `up` per target.
        # (The series API: instant queries hide the newest 30 s, -search.latencyOffset.)
        match = urllib.parse.quote('up{job="prometheus"}')
        ups = poll("both Prometheus' up in VictoriaMetrics", lambda: (
            series if len(series := get_json(f"{url['VICTORIAMETRICS']}/api/v1/series?match[]={match}")["data"]) == 2
            else None))
        assert {u["instance"] for u in ups} == {f"{LOOPBACK}:{ports['PROMETHEUS']}",
                                                f"{LOOPBACK}:{ports['PROMETHEUS_B']}"}
        assert not any("replica" in u for u in ups)

        started = time.monotonic()
        stack.send_signal(signal.SIGTERM)
        stack.wait(timeout=30)
        FIGURES["make stack HA=1: seconds to stop"] = round(time.monotonic() - started, 2)
    finally:
        procs.stop_all()
    for name, port in ports.items():
        result = subprocess.run(["bash", "-c", f"exec 3<>/dev/tcp/{LOOPBACK}/{port}"], capture_output=True, timeout=5)
        assert result.returncode != 0, f"{name} port {port} still open"


# ---------------------------------------------------------------- the live pair


def test_an_alert_of_both_replicas_is_delivered_once(ha: HA) -> None:
    """(a) Both Prometheus fire it and send it to both Alertmanagers; the receiver gets
    one notification with one alert, without `replica`."""
    fired = ha.exporter.fire("both-replicas")
    for replica, prom in ha.prometheus.items():
        poll(f"replica {replica} firing", lambda prom=prom: [
            a for a in get_json(f"{prom}/api/v1/alerts")["data"]["alerts"]
            if a["labels"].get("case") == "both-replicas" and a["state"] == "firing"
        ])
        active = get_json(f"{prom}/api/v1/alertmanagers")["data"]["activeAlertmanagers"]
        assert len(active) == 2, active
    # Each Alertmanager holds the alert (so the one notification is the cluster's doing).
    for am in ha.alertmanagers:
        poll(f"{am} holds the alert", lambda am=am: alerts_in(am, "both-replicas"))
    first = deliver_once(ha, "both-replicas", fired)
    ha.deliverer = first.sender
    FIGURES["first deliverer"] = ha.alertmanagers[first.sender]


def test_a_silence_made_on_one_alertmanager_is_honoured_by_the_other(ha: HA) -> None:
    """(c) A silence posted to the Alertmanager that does NOT notify first reaches the
    one that does; an alert it matches is delivered by neither, while an unsilenced alert
    fired at the same moment is delivered once."""
    notifier = deliverer(ha)
    (other,) = [am for am in ha.alertmanagers if am != notifier]
    now = datetime.now(UTC)
    created = time.monotonic()
    silence_id = post_json(f"{other}/api/v2/silences", {
        "matchers": [{"name": "alertname", "value": ALERT, "isRegex": False},
                     {"name": "case", "value": "silenced", "isRegex": False}],
        "startsAt": now.isoformat(), "endsAt": (now + timedelta(hours=1)).isoformat(),
        "createdBy": "tests/ha", "comment": "HA test: silence made on one Alertmanager",
    })["silenceID"]
    poll("silence visible on the peer", lambda: [
        s for s in get_json(f"{notifier}/api/v2/silences")
        if s["id"] == silence_id and s["status"]["state"] == "active"
    ], timeout=15)
    FIGURES["silence propagation seconds"] = round(time.monotonic() - created, 2)

    fired = ha.exporter.fire("silenced", "unsilenced")
    for am in ha.alertmanagers:
        silenced = poll(f"{am} suppresses the silenced alert", lambda am=am: [
            a for a in alerts_in(am, "silenced") if a["status"]["state"] == "suppressed"
        ])
        assert silenced[0]["status"]["silencedBy"] == [silence_id]
    # The control alert proves notifications flow; its duplicate window covers the
    # silenced one's (fired together, same timers).
    deliver_once(ha, "unsilenced", fired)
    assert not ha.receiver.of_case("silenced"), "a silenced alert was delivered"


def test_victoriametrics_holds_the_live_service_series_once(ha: HA) -> None:
    """(d) hitl-api's series, scraped by both replicas and remote-written by both, are
    queryable from VictoriaMetrics as one series per target, without `replica`, with the
    two replicas' samples deduplicated to one per scrape interval."""
    (series,) = poll("hitl_build_info in VictoriaMetrics",
                     lambda: query(ha.vm, 'hitl_build_info{job="hitl-api"}'))
    labels = series["metric"]
    assert labels["instance"] == ha.api.removeprefix("http://") and labels["monitor"] == "hitl"
    assert "replica" not in labels
    assert len(query(ha.vm, '{__name__=~"hitl_.+|http_requests_total", job="hitl-api"}')) > 1

    # Both replicas wrote (each counts the samples it sent), and VictoriaMetrics took more
    # rows than either one sent: both replicas' samples, deduplicated only when read.
    sent = {}
    for replica, prom in ha.prometheus.items():
        sent[replica] = poll(f"replica {replica} remote-wrote", lambda prom=prom: own_counter(
            prom, "prometheus_remote_storage_samples_total"))
        FIGURES[f"replica {replica} samples remote-written"] = sent[replica]
    received = own_counter(ha.vm, "vm_rows_inserted_total", 'type="promremotewrite"')
    FIGURES["rows VictoriaMetrics took by remote write"] = received
    assert received > max(sent.values()), (sent, received)

    # Over the same 20 s, each replica holds ~20 samples of the series (1 s scrapes) and
    # VictoriaMetrics received ~40: deduplicated, it returns no more than one replica.
    window = 20
    expr = f'count_over_time(hitl_build_info{{job="hitl-api"}}[{window}s])'

    def samples(base: str, at: float | None = None) -> float:
        (result,) = query(base, expr, at)
        return float(result["value"][1])

    # At 3 s ago: past VictoriaMetrics' 1 s latency offset and the 1 s batch deadline.
    poll(f"{window} s of samples in replica A",
         lambda: samples(ha.prometheus["A"], time.time() - 3) >= window - 2, timeout=window + 15)
    at = time.time() - 3
    per_replica = {replica: samples(prom, at) for replica, prom in ha.prometheus.items()}
    in_vm = samples(ha.vm, at)
    FIGURES["samples in 20 s: replica A / B / VictoriaMetrics"] = f"{per_replica['A']:g} / {per_replica['B']:g} / {in_vm:g}"
    assert in_vm <= max(per_replica.values()) + 1, (per_replica, in_vm)
    assert in_vm >= min(per_replica.values()) - 2, (per_replica, in_vm)


def test_with_one_alertmanager_killed_a_new_alert_is_still_delivered_once(ha: HA) -> None:
    """(b) SIGKILL the Alertmanager that notifies first; an alert that fires afterwards
    is delivered once, by the survivor (after its peer timeout)."""
    notifier = deliverer(ha)
    process = ha.processes[ha.alertmanagers[notifier]]
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    fired = ha.exporter.fire("failover")
    delivery = deliver_once(ha, "failover", fired)
    assert delivery.sender != notifier
    FIGURES["failover deliverer"] = ha.alertmanagers[delivery.sender]


def test_with_one_of_each_killed_an_alert_is_still_delivered_once(ha: HA) -> None:
    """One Alertmanager already dead (the test above, or here): SIGKILL Prometheus replica
    A too. Replica B alone fires a new alert, and the surviving Alertmanager delivers it
    once -- the pair and the cluster each survive the loss of one member."""
    notifier = deliverer(ha)
    for name in (ha.alertmanagers[notifier], "prometheus-A"):
        process = ha.processes[name]
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
    fired = ha.exporter.fire("one-of-each")
    delivery = deliver_once(ha, "one-of-each", fired)
    assert delivery.sender != notifier
