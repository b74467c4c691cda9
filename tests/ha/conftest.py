"""Three hitl-api replicas behind HAProxy, as `make stack REPLICAS=3` runs them.

One module-scoped cluster: a database created (and migrated, once) for the module,
the session's API keys, a Redis key prefix of this test run, three real
`python -m service serve` processes on free loopback ports, HAProxy from the
template ops/stack/render.py renders for the stack, and a webhook receiver of the
test's own that every replica's outbox worker delivers to. Tests that kill a replica
restart it before they end, so each test starts with three replicas UP.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from service.storage.migrate import apply_migrations, create_database, drop_database
from tests.conftest import (
    PG_BASE,
    REDIS_URL,
    RUN_ID,
    Keys,
    delete_run_keys,
    free_port,
    http_get,
    wait_until_ready,
)
from tests.ops.conftest import ROOT, Processes, load_module

render = load_module(ROOT / "ops" / "stack" / "render.py", "stack_render_ha")

LOOPBACK = "127.0.0.1"
REPLICAS = 3
HAPROXY = "/usr/sbin/haproxy"
# The outbox pace of these tests: a killed worker's rows are leased again after
# LEASE_SECONDS (the production default is 10 s).
LEASE_SECONDS = 3.0


def require_haproxy() -> str:
    """HAProxy's path (Debian installs it in /usr/sbin, often not on a user's PATH);
    a failure under CI, a skip on a workstation without it."""
    if Path(HAPROXY).exists():
        return HAPROXY
    message = "haproxy is not installed (make test installs it via ops/local/install-tools.sh)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@dataclass
class Arrival:
    """One webhook POST as the receiver saw it: which replica sent it (each has its
    own URL path), for which review, and whether the receiver finished answering."""

    replica: str
    review_id: str
    decision: str
    arrived: float
    answered: float | None = None


@dataclass
class WebhookReceiver:
    """A threaded HTTP server on loopback that records every decision notification.
    ``delay`` seconds before answering keeps deliveries in flight."""

    port: int = field(default_factory=free_port)
    delay: float = 0.0
    arrivals: list[Arrival] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, replica: str) -> str:
        return f"http://{LOOPBACK}:{self.port}/decisions/{replica}"

    def for_reviews(self, review_ids: set[str]) -> list[Arrival]:
        with self.lock:
            return [a for a in self.arrivals if a.review_id in review_ids]

    def in_flight(self) -> list[Arrival]:
        with self.lock:
            return [a for a in self.arrivals if a.answered is None]

    def serve(self) -> ThreadingHTTPServer:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                arrival = Arrival(
                    replica=self.path.rsplit("/", 1)[-1],
                    review_id=body["review_id"],
                    decision=body["decision"],
                    arrived=time.monotonic(),
                )
                with receiver.lock:
                    receiver.arrivals.append(arrival)
                    delay = receiver.delay
                time.sleep(delay)
                try:
                    self.send_response(204)
                    self.end_headers()
                except OSError:
                    return  # the sender died while we waited: not answered
                arrival.answered = time.monotonic()

            def log_message(self, format: str, *args: Any) -> None:  # silence http.server
                pass

        server = ThreadingHTTPServer((LOOPBACK, self.port), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="webhook-receiver", daemon=True).start()
        return server


@dataclass
class Replica:
    name: str
    port: int
    process: Any = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"


@dataclass
class Cluster:
    replicas: list[Replica]
    lb_url: str
    stats_url: str
    database_url: str
    keys: Keys
    receiver: WebhookReceiver
    processes: Processes
    base_env: dict[str, str]

    def start(self, replica: Replica) -> None:
        replica.starts += 1
        env = {
            **self.base_env,
            "HITL_PORT": str(replica.port),
            "HITL_DECISION_WEBHOOK_URL": self.receiver.url(replica.name),
        }
        replica.process = self.processes.start(
            f"{replica.name}-{replica.starts}", [sys.executable, "-m", "service", "serve"], env=env
        )

    def wait_ready(self, replica: Replica, timeout: float = 30.0) -> None:
        log = self.processes.directory / f"{replica.name}-{replica.starts}.log"
        wait_until_ready(f"{replica.url}/api/health/ready", replica.process, log, timeout)

    def kill(self, replica: Replica) -> float:
        """SIGKILL: no drain, no goodbye; returns when it was sent (monotonic)."""
        replica.process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        replica.process.wait(timeout=10)
        return killed

    def restart(self, replica: Replica) -> None:
        """Start a killed replica again on its port and wait until HAProxy sends to it."""
        self.start(replica)
        self.wait_ready(replica)
        self.wait_for_status(replica, "UP")

    def stats(self) -> dict[str, dict[str, str]]:
        """HAProxy's stats of the hitl-api backend, by server name (and BACKEND)."""
        rows = csv.DictReader(io.StringIO(http_get(f"{self.stats_url};csv").decode().lstrip("# ")))
        return {r["svname"]: r for r in rows if r["pxname"] == "hitl-api"}

    def server_status(self) -> dict[str, str]:
        """HAProxy's view of each server (UP, DOWN, "UP 1/2" while rising...)."""
        return {name: row["status"] for name, row in self.stats().items()}

    def retries(self) -> tuple[int, int]:
        """(retries, redispatches) HAProxy has made in the backend since it started."""
        backend = self.stats()["BACKEND"]
        return int(backend["wretr"] or 0), int(backend["wredis"] or 0)

    def wait_for_status(self, replica: Replica, status: str, timeout: float = 20.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.server_status().get(replica.name) == status:
                return time.monotonic()
            time.sleep(0.05)
        raise TimeoutError(f"{replica.name} not {status} in HAProxy: {self.server_status()}")

    def headers(self, role: str) -> dict[str, str]:
        return self.keys.auth(role)


@pytest.fixture(scope="module")
def cluster(api_keys: Keys, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    haproxy = require_haproxy()
    directory = tmp_path_factory.mktemp("ha")
    database_url = f"{PG_BASE}/hitl_ha_{RUN_ID}_{uuid.uuid4().hex[:6]}"
    # The schema once, before any replica starts, as the stack script does.
    asyncio.run(create_database(database_url))
    asyncio.run(apply_migrations(database_url))
    receiver = WebhookReceiver()
    server = receiver.serve()
    processes = Processes(directory)
    lb_port, stats_port = free_port(), free_port()
    replicas = [Replica(f"api-{n}", free_port()) for n in range(1, REPLICAS + 1)]
    base_env = {
        **os.environ,
        "HITL_HOST": LOOPBACK,
        "HITL_DATABASE_URL": database_url,
        "HITL_REDIS_URL": REDIS_URL,
        # One prefix for the three: they share the cache, as replicas of one deployment.
        "HITL_REDIS_KEY_PREFIX": f"hitl-test:{RUN_ID}:ha:",
        "HITL_API_KEYS_FILE": str(api_keys.file),
        "HITL_ENABLE_TEST_ROUTES": "true",
        "HITL_LOG_FORMAT": "json",
        "HITL_LOG_LEVEL": "warning",
        "OTEL_SDK_DISABLED": "true",
        "HITL_WEBHOOK_POLL_SECONDS": "0.1",
        "HITL_WEBHOOK_LEASE_SECONDS": str(LEASE_SECONDS),
        "HITL_WEBHOOK_BASE_BACKOFF_SECONDS": "0.1",
        "HITL_WEBHOOK_TIMEOUT_SECONDS": "5",
        "HITL_QUEUE_METRICS_INTERVAL_SECONDS": "1",
        "HITL_SHUTDOWN_DRAIN_SECONDS": "0.5",
        "HITL_SHUTDOWN_GRACE_SECONDS": "2",
    }
    cluster = Cluster(
        replicas=replicas,
        lb_url=f"http://{LOOPBACK}:{lb_port}",
        stats_url=f"http://{LOOPBACK}:{stats_port}/stats",
        database_url=database_url,
        keys=api_keys,
        receiver=receiver,
        processes=processes,
        base_env=base_env,
    )
    try:
        for replica in replicas:
            cluster.start(replica)
        for replica in replicas:
            cluster.wait_ready(replica)
        config = directory / "haproxy.cfg"
        config.write_text(
            render.haproxy_config(
                lb_port, [r.port for r in replicas], stats_port, directory / "haproxy.sock"
            )
        )
        processes.start(
            "haproxy", [haproxy, "-db", "-f", str(config)],
            ready_url=f"{cluster.stats_url};csv",
        )
        for replica in replicas:
            cluster.wait_for_status(replica, "UP")
        yield cluster
    finally:
        processes.stop_all()
        server.shutdown()
        server.server_close()
        asyncio.run(drop_database(database_url))
        asyncio.run(delete_run_keys())


@pytest.fixture
def three_up(cluster: Cluster) -> Iterator[Cluster]:
    """The cluster with every replica UP before the test, and again after it (a test
    that kills one restarts it; this makes sure even when it failed half-way)."""
    yield cluster
    for replica in cluster.replicas:
        if replica.process.poll() is not None:
            cluster.restart(replica)
