"""The decision webhook: at-least-once delivery through the outbox table."""

from __future__ import annotations

import asyncio
from typing import Any

import aiopg
from aiohttp.test_utils import TestServer

from service.app import create_app
from service.config import Settings
from tests.conftest import Keys
from tests.prom import parse_exposition
from tests.service.downstream import Downstream
from tests.service.helpers import submission


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
