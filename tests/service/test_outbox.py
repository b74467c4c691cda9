"""The decision webhook: at-least-once delivery through the outbox table."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import aiopg
from aiohttp import web
from aiohttp.test_utils import TestServer

from service.app import create_app
from service.config import Settings
from tests.conftest import Keys
from tests.prom import parse_exposition
from tests.service.downstream import Downstream
from tests.service.helpers import sql, submission


def with_webhook(settings: Settings, server: TestServer) -> Settings:
    return settings.with_changes(decision_webhook_url=str(server.make_url("/decisions")))


async def submit_and_decide(client: Any, keys: Keys, decision: dict[str, Any]) -> str:
    resp = await client.post("/api/reviews", json=submission(), headers=keys.auth("producer"))
    review_id = (await resp.json())["id"]
    resp = await client.post(
        f"/api/reviews/{review_id}/decision", json=decision, headers=keys.auth("reviewer")
    )
    assert resp.status == 200, await resp.text()
    return str(review_id)


async def outbox_rows(database_url: str) -> list[tuple[Any, ...]]:
    async with aiopg.connect(database_url) as conn, conn.cursor() as cur:
        await cur.execute(
            "SELECT review_id::text, delivered_at IS NOT NULL, attempts FROM webhook_outbox"
            " ORDER BY id"
        )
        return list(await cur.fetchall())


async def test_final_decision_is_delivered(
    aiohttp_client: Any,
    settings: Settings,
    api_keys: Keys,
    downstream: tuple[Downstream, TestServer],
) -> None:
    """A final decision reaches the downstream with the decision, reviewer and review id."""
    receiver, server = downstream
    client = await aiohttp_client(create_app(with_webhook(settings, server)))
    review_id = await submit_and_decide(
        client, api_keys, {"decision": "reject", "justification": "breaks the build"}
    )
    await receiver.wait_for(1)
    note = receiver.received[0]
    assert note["review_id"] == review_id
    assert note["decision"] == "reject"
    assert note["status"] == "rejected"
    assert note["reviewer"] == "reviewer-bot"
    assert receiver.headers[0]["Idempotency-Key"].startswith("outbox-")


async def test_escalation_is_not_notified(
    aiohttp_client: Any,
    settings: Settings,
    api_keys: Keys,
    downstream: tuple[Downstream, TestServer],
    database_url: str,
) -> None:
    """Only final decisions are notified; an escalation writes no outbox row."""
    _, server = downstream
    client = await aiohttp_client(create_app(with_webhook(settings, server)))
    await submit_and_decide(client, api_keys, {"decision": "escalate", "justification": "x"})
    assert await outbox_rows(database_url) == []


async def test_failing_downstream_is_retried_until_delivered(
    aiohttp_client: Any,
    settings: Settings,
    api_keys: Keys,
    downstream: tuple[Downstream, TestServer],
    database_url: str,
) -> None:
    """With the downstream failing first, each stored notification is delivered exactly
    once after it recovers, after several attempts."""
    receiver, server = downstream
    receiver.fail_next = 4
    client = await aiohttp_client(create_app(with_webhook(settings, server)))
    ids = [await submit_and_decide(client, api_keys, {"decision": "approve"}) for _ in range(3)]
    await receiver.wait_for(3)
    await asyncio.sleep(0.3)  # room for a wrongful duplicate to show up
    assert sorted(n["review_id"] for n in receiver.received) == sorted(ids)
    rows = await outbox_rows(database_url)
    assert all(delivered for _, delivered, _ in rows)
    assert sum(attempts for _, _, attempts in rows) == 3 + 4
    metrics = parse_exposition(await (await client.get("/metrics")).text())
    assert metrics.value("hitl_webhook_deliveries_total", result="failed") == 4
    assert metrics.value("hitl_webhook_deliveries_total", result="delivered") == 3
    assert metrics.value("hitl_webhook_outbox_depth") == 0


async def test_restart_loses_nothing(
    aiohttp_client: Any,
    settings: Settings,
    api_keys: Keys,
    downstream: tuple[Downstream, TestServer],
    database_url: str,
) -> None:
    """Notifications stored while the downstream is down survive a service restart and
    are delivered by the next instance."""
    receiver, server = downstream
    receiver.fail_next = 10_000
    first = await aiohttp_client(create_app(with_webhook(settings, server)))
    ids = [await submit_and_decide(first, api_keys, {"decision": "approve"}) for _ in range(3)]
    depth = parse_exposition(await (await first.get("/metrics")).text())
    assert depth.value("hitl_webhook_outbox_depth") == 3
    await first.close()
    assert not any(delivered for _, delivered, _ in await outbox_rows(database_url))

    receiver.fail_next = 0
    async with aiopg.connect(database_url) as conn, conn.cursor() as cur:
        # The first instance scheduled retries into the future; make them due now.
        await cur.execute("UPDATE webhook_outbox SET next_attempt_at = now()")
    second = await aiohttp_client(create_app(with_webhook(settings, server)))
    await receiver.wait_for(3)
    await asyncio.sleep(0.3)
    assert sorted(n["review_id"] for n in receiver.received) == sorted(ids)
    await second.close()


class SlowDownstream:
    """A downstream that takes ``delay`` seconds per notification and records how many
    were in flight at once, overall and per review."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.received: list[dict[str, Any]] = []
        self.in_flight: dict[str, int] = {}
        self.max_in_flight = 0
        self.max_in_flight_per_review = 0
        self.arrived = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        note = await request.json()
        review = note["review_id"]
        self.in_flight[review] = self.in_flight.get(review, 0) + 1
        self.max_in_flight = max(self.max_in_flight, sum(self.in_flight.values()))
        self.max_in_flight_per_review = max(self.max_in_flight_per_review, self.in_flight[review])
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.in_flight[review] -= 1
        self.received.append(note)
        self.arrived.set()
        return web.Response(status=204)

    async def wait_for(self, count: int, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while len(self.received) < count:
                self.arrived.clear()
                await self.arrived.wait()


async def slow_downstream(aiohttp_server: Any, delay: float) -> tuple[SlowDownstream, TestServer]:
    receiver = SlowDownstream(delay)
    app = web.Application()
    app.router.add_post("/decisions", receiver.handle)
    return receiver, await aiohttp_server(app)


async def queue_events(database_url: str, reviews: int, per_review: int) -> list[str]:
    """Write ``per_review`` outbox rows for each of ``reviews`` new reviews directly (as
    later decisions of one review would), payload ``{"review_id", "seq"}``."""
    review_ids = []
    for _ in range(reviews):
        rid = str(uuid.uuid4())
        body = submission()
        await sql(
            database_url,
            "INSERT INTO reviews (id, apv_id, apv_code, cve_id, severity, source, package_name,"
            " package_version, package_ecosystem, patch, confidence, anomaly_score,"
            " payload_sha256) VALUES (%s, %s, 'x', 'CVE-2024-0001', 'high', 'test', 'p', '1',"
            " 'pypi', 'diff', 0.9, 0.9, 'x')",
            (rid, body["apv_id"]),
        )
        for seq in range(per_review):
            await sql(
                database_url,
                "WITH d AS (INSERT INTO review_decisions (review_id, decision, reviewer,"
                " justification, from_status, to_status) VALUES (%s, 'escalate', 'r', 'x',"
                " 'pending', 'escalated') RETURNING id)"
                " INSERT INTO webhook_outbox (review_id, decision_id, payload)"
                " SELECT %s, d.id, %s FROM d",
                (rid, rid, json.dumps({"review_id": rid, "seq": seq})),
            )
        review_ids.append(rid)
    return review_ids


async def test_deliveries_run_concurrently_in_order_per_review(
    aiohttp_client: Any, aiohttp_server: Any, settings: Settings, database_url: str
) -> None:
    """24 events of 6 reviews, 0.1 s each at the downstream: up to the concurrency (4)
    in flight at once, never two of one review, each review's events in order; done in
    well under the 2.4 s one at a time would take."""
    receiver, server = await slow_downstream(aiohttp_server, 0.1)
    review_ids = await queue_events(database_url, reviews=6, per_review=4)
    started = time.monotonic()
    await aiohttp_client(
        create_app(with_webhook(settings, server).with_changes(webhook_concurrency=4))
    )
    await receiver.wait_for(24, timeout=10)
    elapsed = time.monotonic() - started
    assert receiver.max_in_flight == 4
    assert receiver.max_in_flight_per_review == 1
    for rid in review_ids:
        assert [n["seq"] for n in receiver.received if n["review_id"] == rid] == [0, 1, 2, 3]
    assert elapsed < 1.8, elapsed


async def test_lease_is_renewed_while_a_slow_delivery_runs(
    aiohttp_client: Any, aiohttp_server: Any, settings: Settings, database_url: str
) -> None:
    """A delivery that takes 1.2 s under a 0.45 s lease keeps its lease (renewed every
    0.15 s): it is attempted and delivered once, not leased again meanwhile."""
    receiver, server = await slow_downstream(aiohttp_server, 1.2)
    await queue_events(database_url, reviews=1, per_review=1)
    await aiohttp_client(
        create_app(with_webhook(settings, server).with_changes(webhook_lease_seconds=0.45))
    )
    await receiver.wait_for(1, timeout=5)
    await asyncio.sleep(0.5)
    assert len(receiver.received) == 1
    assert [attempts for _, _, attempts in await outbox_rows(database_url)] == [1]


async def test_rows_of_a_dead_worker_are_retried_after_the_lease(
    aiohttp_client: Any,
    settings: Settings,
    downstream: tuple[Downstream, TestServer],
    database_url: str,
) -> None:
    """Rows leased by a worker that died (never renewed) are delivered by the next one
    once the lease (1 s here) has run out, not before."""
    receiver, server = downstream
    await queue_events(database_url, reviews=3, per_review=1)
    await sql(
        database_url,
        "UPDATE webhook_outbox SET attempts = 1, next_attempt_at = now() + interval '1 second',"
        " leased_until = now() + interval '1 second'",
    )
    started = time.monotonic()
    await aiohttp_client(create_app(with_webhook(settings, server)))
    await receiver.wait_for(3, timeout=5)
    assert 0.8 < time.monotonic() - started < 3


async def test_backlog_metrics(
    aiohttp_client: Any,
    settings: Settings,
    downstream: tuple[Downstream, TestServer],
    database_url: str,
) -> None:
    """While the downstream fails, depth and the oldest row's age grow; once delivered,
    both are 0 and the lag histogram counts each delivery."""
    receiver, server = downstream
    receiver.fail_next = 10_000
    client = await aiohttp_client(create_app(with_webhook(settings, server)))
    await queue_events(database_url, reviews=2, per_review=1)
    await sql(database_url, "UPDATE webhook_outbox SET created_at = now() - interval '90 seconds'")
    stuck = parse_exposition(await (await client.get("/metrics")).text())
    assert stuck.value("hitl_webhook_outbox_depth") == 2
    assert 90 <= stuck.value("hitl_webhook_outbox_oldest_pending_seconds") < 100
    receiver.fail_next = 0
    await sql(database_url, "UPDATE webhook_outbox SET next_attempt_at = now()")
    await receiver.wait_for(2)
    await asyncio.sleep(0.1)
    done = parse_exposition(await (await client.get("/metrics")).text())
    assert done.value("hitl_webhook_outbox_depth") == 0
    assert done.value("hitl_webhook_outbox_oldest_pending_seconds") == 0
    assert done.value("hitl_webhook_delivery_lag_seconds_count") == 2
    assert done.value("hitl_webhook_delivery_lag_seconds_bucket", le="60.0") == 0
    assert done.value("hitl_webhook_delivery_lag_seconds_bucket", le="120.0") == 2
