"""Faults under a bounded mixed load (12 concurrent clients, loopback, throwaway servers).

Each test runs the load through a fault and its repair and asserts what a user and an
operator would notice: no acknowledged write missing from PostgreSQL, no 500, latency
within a stated bound, recovery without a restart within a stated time, and the
metrics and readiness that say what is going on. The bounds are generous for a shared
2-core machine; each is far below what the fault cost before its fix.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from service.app import create_app
from service.config import Settings
from service.storage.migrate import create_database
from tests.conftest import REDIS_URL, RUN_ID, Keys, free_port
from tests.prom import parse_exposition
from tests.service.conftest import ThrowawayPostgres, ThrowawayRedis, _wait_for_port
from tests.service.downstream import Downstream
from tests.service.helpers import sql, submission

CLIENTS = 12
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=10)
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Outcome:
    op: str
    status: int  # -1: no HTTP answer at all (connection error or client timeout)
    started: float
    seconds: float


@dataclass
class Load:
    """``CLIENTS`` loops of submit / read / list / decide / stats, each with its own
    seeded random choices; every acknowledged write is remembered."""

    client: TestClient
    keys: Keys
    outcomes: list[Outcome] = field(default_factory=list)
    reviews: dict[str, str] = field(default_factory=dict)  # acknowledged: id -> status
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._client(i)) for i in range(CLIENTS)]

    async def stop(self) -> None:
        self.stopping.set()
        await asyncio.gather(*self.tasks)

    async def _call(self, op: str, method: str, path: str, role: str, body: Any = None) -> Any:
        started = time.monotonic()
        try:
            async with self.client.request(
                method, path, json=body, headers=self.keys.auth(role), timeout=REQUEST_TIMEOUT
            ) as resp:
                data = await resp.json() if resp.status < 300 else None
                status = resp.status
        except (aiohttp.ClientError, TimeoutError):
            data, status = None, -1
        self.outcomes.append(Outcome(op, status, started, time.monotonic() - started))
        return status, data

    async def _client(self, index: int) -> None:
        rng = random.Random(1100 + index)
        pending: list[str] = []
        while not self.stopping.is_set():
            choice = rng.random()
            if choice < 0.3 or not pending:
                status, data = await self._call(
                    "submit", "POST", "/api/reviews", "producer", submission()
                )
                if status == 201:
                    self.reviews[data["id"]] = "pending"
                    pending.append(data["id"])
            elif choice < 0.6:
                await self._call("read", "GET", f"/api/reviews/{rng.choice(pending)}", "viewer")
            elif choice < 0.7:
                await self._call("list", "GET", "/api/reviews?limit=20", "viewer")
            elif choice < 0.9:
                rid = pending.pop(rng.randrange(len(pending)))
                status, _ = await self._call(
                    "decide",
                    "POST",
                    f"/api/reviews/{rid}/decision",
                    "reviewer",
                    {"decision": "approve"},
                )
                if status == 200:
                    self.reviews[rid] = "approved"
            else:
                await self._call("stats", "GET", "/api/reviews/stats", "viewer")

    # -- what the assertions read ------------------------------------------------

    def statuses(self) -> set[int]:
        return {o.status for o in self.outcomes}

    def between(self, start: float, end: float) -> list[Outcome]:
        return [o for o in self.outcomes if start <= o.started and o.started + o.seconds <= end]

    async def assert_acknowledged_writes_in(self, database_url: str) -> None:
        """Every 201 review exists and every 200 decision is its status in PostgreSQL."""
        rows = await sql(
            database_url,
            "SELECT id::text, status FROM reviews WHERE id = ANY(%s::uuid[])",
            (list(self.reviews),),
        )
        stored = dict(rows)
        missing = set(self.reviews) - set(stored)
        assert not missing, f"{len(missing)} acknowledged reviews missing"
        wrong = {
            rid
            for rid, status in self.reviews.items()
            if status == "approved" and stored[rid] != "approved"
        }
        assert not wrong, f"{len(wrong)} acknowledged decisions missing"


def quantile(values: Iterable[float], q: float) -> float:
    ordered = sorted(values)
    assert ordered, "no requests in the window"
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


BASELINE_SECONDS = 2.0


def assert_latency_near_baseline(
    window: list[Outcome], baseline: list[Outcome], *, p50_extra: float, p99_extra: float
) -> None:
    """The fault window's p50 / p99 exceed the healthy baseline's (same process, same
    load) by less than the given seconds. Load, server and clients share one event
    loop on a shared machine, so latency is stated against the baseline, not in
    absolute milliseconds: what the fault adds is what is bounded."""
    assert len(window) >= 30 and len(baseline) >= 30, (len(window), len(baseline))
    seconds, base = [o.seconds for o in window], [o.seconds for o in baseline]
    summary = {
        q: (round(quantile(seconds, q), 3), round(quantile(base, q), 3)) for q in (0.5, 0.99)
    }
    assert summary[0.5][0] < summary[0.5][1] + p50_extra, summary
    assert summary[0.99][0] < summary[0.99][1] + p99_extra, summary


def cache_errors(exposition: Any) -> float:
    return sum(
        exposition.value("cache_operations_total", operation=op, result="error")
        for op in ("get", "set", "delete")
    )


async def metrics(client: TestClient) -> Any:
    return parse_exposition(await (await client.get("/metrics")).text())


async def ready(client: TestClient) -> tuple[int, dict[str, Any]]:
    resp = await client.get("/api/health/ready")
    return resp.status, await resp.json()


async def wait_until(check: Callable[[], Any], timeout: float, every: float = 0.05) -> float:
    """Seconds until ``await check()`` is true; fails after ``timeout``."""
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < timeout, f"not recovered within {timeout}s"
        await asyncio.sleep(every)
    return time.monotonic() - started


async def test_postgres_stopped_and_started_under_load(
    aiohttp_client: Any, settings: Settings, api_keys: Keys, throwaway_postgres: ThrowawayPostgres
) -> None:
    """PostgreSQL stopped (immediate) for 2 s under load, then started: answers are 2xx
    or 503 (never 500, never hung: every one within 3 s), readiness is 503 while it is
    down, writes succeed again within 10 s of its start without restarting the
    service, and every acknowledged write is in PostgreSQL."""
    await create_database(throwaway_postgres.url)
    client: TestClient = await aiohttp_client(
        create_app(
            settings.with_changes(database_url=throwaway_postgres.url, db_timeout_seconds=2.0)
        )
    )
    load = Load(client, api_keys)
    load.start()
    await asyncio.sleep(1.0)
    await asyncio.to_thread(throwaway_postgres.stop)
    await asyncio.sleep(0.5)
    down_status, down = await ready(client)
    await asyncio.sleep(1.5)
    await asyncio.to_thread(throwaway_postgres.start)
    restarted = time.monotonic()

    async def writes_succeed() -> bool:
        status, _ = await load._call("probe", "POST", "/api/reviews", "producer", submission())
        return bool(status == 201)

    recovery = await wait_until(writes_succeed, timeout=10, every=0.1)
    await asyncio.sleep(1.0)
    await load.stop()

    assert (down_status, down["checks"]["postgres"]) == (503, "unavailable")
    assert load.statuses() <= {200, 201, 503}, load.statuses()
    assert 503 in load.statuses()
    assert max(o.seconds for o in load.outcomes) < 3.0
    assert recovery < 10
    assert (await ready(client))[0] == 200
    after = [o for o in load.outcomes if o.started > restarted + recovery]
    assert after and all(o.status in {200, 201} for o in after)
    m = await metrics(client)
    assert m.value("app_errors_total", type="database_unavailable", severity="critical") > 0
    await load.assert_acknowledged_writes_in(throwaway_postgres.url)


async def test_redis_stopped_and_started_under_load(
    make_client: Any, api_keys: Keys, throwaway_redis: ThrowawayRedis, database_url: str
) -> None:
    """Redis killed under load: no 500 and no failed request, p99 under 500 ms after
    the breaker has opened; readiness 200 'degraded' / 'circuit-open' and the circuit
    gauge at 1. A new Redis on the same port is used again within the 1 s cool-down
    + 1 s (readiness 'ready', gauge 0), without restarting the service."""
    client: TestClient = await make_client(
        redis_url=throwaway_redis.url, cache_breaker_cool_down_seconds=1.0
    )
    load = Load(client, api_keys)
    load.start()
    await asyncio.sleep(BASELINE_SECONDS)
    throwaway_redis.kill()
    killed = time.monotonic()
    await asyncio.sleep(2.0)
    status, body = await ready(client)
    m_down = await metrics(client)
    await asyncio.to_thread(throwaway_redis.start)
    started = time.monotonic()

    async def cache_in_use() -> bool:
        return (await ready(client))[1]["status"] == "ready"

    recovery = await wait_until(cache_in_use, timeout=5)
    await asyncio.sleep(0.5)
    await load.stop()

    assert load.statuses() <= {200, 201}, load.statuses()
    assert_latency_near_baseline(
        load.between(killed + 0.5, started), load.between(0, killed), p50_extra=0.2, p99_extra=0.5
    )
    assert (status, body) == (
        200,
        {"status": "degraded", "checks": {"postgres": "ok", "redis": "circuit-open"}},
    )
    assert m_down.value("hitl_cache_circuit_state") in {1, 2}
    assert m_down.value("hitl_cache_circuit_opened_total") >= 1
    assert recovery < 2.0
    m_up = await metrics(client)
    assert m_up.value("hitl_cache_circuit_state") == 0
    await load.assert_acknowledged_writes_in(database_url)


async def test_redis_hung_opens_the_breaker(
    make_client: Any, api_keys: Keys, throwaway_redis: ThrowawayRedis, database_url: str
) -> None:
    """Redis SIGSTOPped under load: once the breaker has opened (within 1 s), no request
    waits for Redis: p99 under 200 ms (each cache call would cost its 250 ms timeout),
    every request succeeds; readiness 'circuit-open'. After SIGCONT the breaker closes
    within its 5 s cool-down + 1 s, and a decision taken while Redis hung is what
    reads show afterwards (not the review cached before the hang)."""
    client: TestClient = await make_client(redis_url=throwaway_redis.url)
    load = Load(client, api_keys)
    viewer, reviewer = api_keys.auth("viewer"), api_keys.auth("reviewer")
    resp = await client.post("/api/reviews", json=submission(), headers=api_keys.auth("producer"))
    rid = (await resp.json())["id"]
    for _ in range(2):  # cached as pending
        assert (await client.get(f"/api/reviews/{rid}", headers=viewer)).status == 200
    load.start()
    await asyncio.sleep(BASELINE_SECONDS)
    throwaway_redis.pause()
    paused = time.monotonic()
    await asyncio.sleep(1.0)
    m_open = await metrics(client)
    resp = await client.post(
        f"/api/reviews/{rid}/decision",
        json={"decision": "reject", "justification": "x"},
        headers=reviewer,
    )
    assert resp.status == 200
    await asyncio.sleep(2.0)
    status, body = await ready(client)
    m_hung = await metrics(client)
    throwaway_redis.resume()
    resumed = time.monotonic()

    async def closed() -> bool:
        return bool((await metrics(client)).value("hitl_cache_circuit_state") == 0)

    recovery = await wait_until(closed, timeout=8)
    await asyncio.sleep(0.5)
    await load.stop()

    assert load.statuses() <= {200, 201}, load.statuses()
    assert max(o.seconds for o in load.outcomes) < 1.5
    # What the breaker saves: no request asks Redis while it is open (the first probe
    # is due 5 s after the opening), where each read asked twice (get, then set) and
    # waited 250 ms each time.
    assert cache_errors(m_hung) == cache_errors(m_open)
    assert_latency_near_baseline(
        load.between(paused + 1.0, resumed), load.between(0, paused), p50_extra=0.2, p99_extra=0.5
    )
    assert body == {"status": "degraded", "checks": {"postgres": "ok", "redis": "circuit-open"}}
    assert status == 200
    assert m_hung.value("hitl_cache_circuit_state") == 1
    assert m_hung.value("hitl_cache_circuit_opened_total") == 1
    assert recovery < 6.0
    resp = await client.get(f"/api/reviews/{rid}", headers=viewer)
    assert (await resp.json())["status"] == "rejected"
    await load.assert_acknowledged_writes_in(database_url)


async def test_webhook_target_down_then_up(
    aiohttp_client: Any,
    settings: Settings,
    api_keys: Keys,
    downstream: tuple[Downstream, TestServer],
    database_url: str,
) -> None:
    """The downstream answers 503 for 3 s of load: API latency is unaffected (p99 under
    500 ms, no 500), depth and the oldest row's age rise, failures are counted; once
    it is back every acknowledged final decision is delivered within 5 s, and the
    outbox is empty."""
    receiver, server = downstream
    client: TestClient = await aiohttp_client(
        create_app(
            settings.with_changes(
                decision_webhook_url=str(server.make_url("/decisions")),
                webhook_max_backoff_seconds=1.0,
            )
        )
    )
    load = Load(client, api_keys)
    load.start()
    await asyncio.sleep(BASELINE_SECONDS)
    receiver.fail_next = 1_000_000
    down = time.monotonic()
    await asyncio.sleep(3.0)
    m_down = await metrics(client)
    receiver.fail_next = 0
    await load.stop()
    up = time.monotonic()
    decided = {rid for rid, status in load.reviews.items() if status == "approved"}

    async def all_delivered() -> bool:
        received = {n["review_id"] for n in receiver.received} >= decided
        return received and (await metrics(client)).value("hitl_webhook_outbox_depth") == 0

    recovery = await wait_until(all_delivered, timeout=5)

    assert load.statuses() <= {200, 201}, load.statuses()
    assert_latency_near_baseline(
        load.between(down, up), load.between(0, down), p50_extra=0.2, p99_extra=0.5
    )
    assert len(decided) > 10
    assert m_down.value("hitl_webhook_outbox_depth") > 0
    assert m_down.value("hitl_webhook_outbox_oldest_pending_seconds") > 1
    assert m_down.value("hitl_webhook_deliveries_total", result="failed") > 0
    assert recovery < 5, time.monotonic() - up
    m_up = await metrics(client)
    assert m_up.value("hitl_webhook_outbox_depth") == 0
    assert m_up.value("hitl_webhook_delivery_lag_seconds_count") >= len(decided)
    await load.assert_acknowledged_writes_in(database_url)


class HangingDownstream:
    """Holds every notification open until ``released`` is set; those that arrive
    afterwards are answered 204 at once and count as delivered."""

    def __init__(self) -> None:
        self.held: list[str] = []
        self.delivered: dict[str, float] = {}
        self.released = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        review_id = (await request.json())["review_id"]
        if self.released.is_set():
            self.delivered.setdefault(review_id, time.monotonic())
            return web.Response(status=204)
        self.held.append(review_id)
        await self.released.wait()
        return web.Response(status=503)


async def test_sigkill_with_leased_deliveries_is_retried_within_the_lease(
    aiohttp_client: Any,
    aiohttp_server: Any,
    settings: Settings,
    api_keys: Keys,
    throwaway_postgres: ThrowawayPostgres,
) -> None:
    """`python -m service serve` with 8 deliveries in flight (the downstream holds
    them) is killed with SIGKILL; a second instance delivers every decision, the
    leased ones after their lease ran out: within the 10 s lease + 2 s of the kill."""
    receiver = HangingDownstream()
    target = web.Application()
    target.router.add_post("/decisions", receiver.handle)
    server: TestServer = await aiohttp_server(target)
    await create_database(throwaway_postgres.url)
    port = free_port()
    env = {
        **os.environ,
        "HITL_PORT": str(port),
        "HITL_DATABASE_URL": throwaway_postgres.url,
        "HITL_REDIS_URL": REDIS_URL,
        "HITL_REDIS_KEY_PREFIX": f"hitl-test:{RUN_ID}:sigkill:",
        "HITL_API_KEYS_FILE": str(api_keys.file),
        "HITL_DECISION_WEBHOOK_URL": str(server.make_url("/decisions")),
        "HITL_WEBHOOK_POLL_SECONDS": "0.05",
        "HITL_LOG_LEVEL": "WARNING",
        "OTEL_SDK_DISABLED": "true",
    }
    first = subprocess.Popen(
        [sys.executable, "-m", "service", "serve"],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await asyncio.to_thread(_wait_for_port, port, 30, first)
        decided = []
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as session:
            for _ in range(10):
                async with session.post(
                    "/api/reviews", json=submission(), headers=api_keys.auth("producer")
                ) as resp:
                    rid = (await resp.json())["id"]
                async with session.post(
                    f"/api/reviews/{rid}/decision",
                    json={"decision": "approve"},
                    headers=api_keys.auth("reviewer"),
                ) as resp:
                    assert resp.status == 200
                decided.append(rid)

        async def eight_in_flight() -> bool:
            return len(receiver.held) >= 8

        await wait_until(eight_in_flight, timeout=5)
        await asyncio.sleep(0.5)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=5)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(timeout=5)
    killed = time.monotonic()
    receiver.released.set()
    leased = set(receiver.held)
    assert len(leased) == 8
    await aiohttp_client(
        create_app(
            settings.with_changes(
                database_url=throwaway_postgres.url,
                decision_webhook_url=str(server.make_url("/decisions")),
            )
        )
    )

    async def all_delivered() -> bool:
        return set(receiver.delivered) >= set(decided)

    await wait_until(all_delivered, timeout=14)
    slowest = max(receiver.delivered[rid] for rid in leased) - killed
    assert slowest < 12.0, slowest
    rows = await sql(
        throwaway_postgres.url, "SELECT count(*) FROM webhook_outbox WHERE delivered_at IS NULL"
    )
    assert rows == [(0,)]
