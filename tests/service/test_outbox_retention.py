"""Retention of the webhook outbox (service/retention.py): delivered rows older than
HITL_OUTBOX_RETENTION_SECONDS are deleted in batches by a background task; undelivered
rows of any age and the decision history are never deleted."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from service.background import Stopping, background
from service.config import Settings, SettingsError
from service.keys import DB, REVIEW_METRICS
from service.retention import OutboxPruner, RetentionPolicy
from service.storage.outbox import OutboxStore
from tests.conftest import Keys
from tests.prom import parse_exposition
from tests.service.conftest import MakeClient
from tests.service.downstream import Downstream
from tests.service.helpers import sql
from tests.service.test_outbox import submit_and_decide

DAY = 86400.0
WEEK = 7 * DAY


async def seed(
    database_url: str, n: int, *, tag: str, delivered_age: float | None, created_age: float = 0.0
) -> None:
    """``n`` approved reviews, each with its decision and outbox row, in three statements'
    worth of SQL: delivered ``delivered_age`` seconds ago (None: not delivered)."""
    await sql(
        database_url,
        """
        WITH r AS (
            INSERT INTO reviews (id, apv_id, apv_code, cve_id, severity, source, package_name,
                package_version, package_ecosystem, patch, confidence, anomaly_score,
                payload_sha256, status, decided_at)
            SELECT gen_random_uuid(), %(tag)s || '-' || g, 'APV', 'CVE-2026-0001', 'high',
                'scanner', 'pkg', '1.0', 'pypi', 'diff', 0.9, 0.9, 'sha', 'approved', now()
            FROM generate_series(1, %(n)s) g RETURNING id),
        d AS (
            INSERT INTO review_decisions (review_id, decision, reviewer, from_status, to_status)
            SELECT id, 'approve', 'seed', 'pending', 'approved' FROM r
            RETURNING id, review_id)
        INSERT INTO webhook_outbox (review_id, decision_id, payload, created_at,
            next_attempt_at, delivered_at)
        SELECT review_id, id, '{}'::jsonb, now() - make_interval(secs => %(created)s),
            now() + interval '1 day',
            CASE WHEN %(age)s::float8 IS NULL THEN NULL
                 ELSE now() - make_interval(secs => %(age)s::float8) END
        FROM d
        """,
        {"tag": tag, "n": n, "age": delivered_age, "created": created_age},  # type: ignore[arg-type]
    )


async def count(database_url: str, query: str, params: tuple[Any, ...] = ()) -> int:
    return int((await sql(database_url, query, params))[0][0])


async def pruned_total(client: TestClient) -> float:
    exposition = parse_exposition(await (await client.get("/metrics")).text())
    return exposition.value("hitl_webhook_outbox_pruned_total")


def log_events(capsys: pytest.CaptureFixture[str], event: str) -> list[dict[str, Any]]:
    records = []
    for line in capsys.readouterr().out.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("event") == event:
                records.append(record)
    return records


class CountingStore(OutboxStore):
    """The real store, counting prune statements."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.prune_calls = 0

    async def prune_delivered(self, *, older_than_seconds: float, batch: int) -> int:
        self.prune_calls += 1
        return await super().prune_delivered(older_than_seconds=older_than_seconds, batch=batch)


def test_settings() -> None:
    """Retention defaults to 7 days and runs hourly; both are read and checked."""
    defaults = Settings.from_env({})
    assert defaults.outbox_retention_seconds == WEEK
    assert defaults.outbox_prune_interval_seconds == 3600
    read = Settings.from_env(
        {"HITL_OUTBOX_RETENTION_SECONDS": "86400", "HITL_OUTBOX_PRUNE_INTERVAL_SECONDS": "60"}
    )
    assert (read.outbox_retention_seconds, read.outbox_prune_interval_seconds) == (DAY, 60)
    for variable in ("HITL_OUTBOX_RETENTION_SECONDS", "HITL_OUTBOX_PRUNE_INTERVAL_SECONDS"):
        with pytest.raises(SettingsError, match=variable):
            Settings.from_env({variable: "0"})


async def test_old_delivered_rows_are_pruned_in_batches(
    make_client: MakeClient, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """1,200 rows delivered 8 days ago go in 3 batches of 500 (500, 500, 200) and are
    counted; rows delivered 6 days ago, undelivered rows 30 days old, and every
    decision stay."""
    client = await make_client()  # its own task first runs after 30 s: not in this test
    await seed(database_url, 1200, tag="old", delivered_age=8 * DAY, created_age=8 * DAY)
    await seed(database_url, 50, tag="recent", delivered_age=6 * DAY, created_age=6 * DAY)
    await seed(database_url, 30, tag="stuck", delivered_age=None, created_age=30 * DAY)
    decisions_before = await sql(database_url, "SELECT * FROM review_decisions ORDER BY id")
    assert len(decisions_before) == 1280
    before = await pruned_total(client)
    assert before == 0
    capsys.readouterr()

    store = CountingStore(client.app[DB])
    pruner = OutboxPruner(
        store,
        client.app[REVIEW_METRICS],
        RetentionPolicy(retention_seconds=WEEK, interval_seconds=3600, batch=500),
    )
    assert await pruner.prune_once() == 1200
    assert store.prune_calls == 3

    assert await count(database_url, "SELECT count(*) FROM webhook_outbox") == 80
    assert (
        await count(
            database_url,
            "SELECT count(*) FROM webhook_outbox WHERE delivered_at < now() - interval '7 days'",
        )
        == 0
    )
    assert (
        await count(database_url, "SELECT count(*) FROM webhook_outbox WHERE delivered_at IS NULL")
        == 30
    )
    assert (
        await count(
            database_url,
            "SELECT count(*) FROM webhook_outbox w JOIN reviews r"
            " ON r.id = w.review_id WHERE r.apv_id LIKE %s",
            ("recent-%",),
        )
        == 50
    )
    assert await sql(database_url, "SELECT * FROM review_decisions ORDER BY id") == (
        decisions_before
    )
    assert await pruned_total(client) == before + 1200
    [logged] = log_events(capsys, "webhook_outbox_pruned")
    assert (logged["rows"], logged["batches"]) == (1200, 3)

    # Nothing left past the retention: one statement, nothing counted, nothing logged.
    store.prune_calls = 0
    assert await pruner.prune_once() == 0
    assert store.prune_calls == 1
    assert await pruned_total(client) == before + 1200
    assert log_events(capsys, "webhook_outbox_pruned") == []


async def test_undelivered_rows_are_never_pruned(
    make_client: MakeClient, database_url: str
) -> None:
    """Even with a one-second retention, a row never delivered (a year old) stays."""
    client = await make_client()
    await seed(database_url, 20, tag="stuck", delivered_age=None, created_age=365 * DAY)
    await seed(database_url, 5, tag="done", delivered_age=10.0, created_age=365 * DAY)
    pruner = OutboxPruner(
        OutboxStore(client.app[DB]),
        client.app[REVIEW_METRICS],
        RetentionPolicy(retention_seconds=1.0, interval_seconds=3600, batch=7),
    )
    assert await pruner.prune_once() == 5
    assert await count(database_url, "SELECT count(*) FROM webhook_outbox") == 20
    assert await count(database_url, "SELECT count(*) FROM review_decisions") == 25


async def test_the_background_task_prunes_delivered_webhooks(
    make_client: MakeClient,
    settings: Settings,
    api_keys: Keys,
    downstream: tuple[Downstream, TestServer],
    database_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """End to end: two decisions delivered by the real worker; the one whose delivery is
    set back 8 days is deleted by the app's own retention task (every 0.2 s here), the
    one set back 6 days stays, and both decisions stay."""
    receiver, server = downstream
    client = await make_client(
        decision_webhook_url=str(server.make_url("/decisions")),
        outbox_prune_interval_seconds=0.2,
    )
    old = await submit_and_decide(client, api_keys, {"decision": "approve"})
    recent = await submit_and_decide(client, api_keys, {"decision": "approve"})
    await receiver.wait_for(2)
    for _ in range(100):  # the 2xx is recorded just after the downstream answers
        if (
            await count(
                database_url, "SELECT count(*) FROM webhook_outbox WHERE delivered_at IS NOT NULL"
            )
            == 2
        ):
            break
        await asyncio.sleep(0.05)
    await sql(
        database_url,
        "UPDATE webhook_outbox SET delivered_at = now() - interval '8 days' WHERE review_id = %s",
        (old,),
    )
    await sql(
        database_url,
        "UPDATE webhook_outbox SET delivered_at = now() - interval '6 days' WHERE review_id = %s",
        (recent,),
    )

    deadline = time.monotonic() + 5
    while await count(database_url, "SELECT count(*) FROM webhook_outbox") > 1:
        assert time.monotonic() < deadline, "the retention task did not prune within 5 s"
        await asyncio.sleep(0.05)
    assert await sql(database_url, "SELECT review_id::text FROM webhook_outbox") == [(recent,)]
    assert await count(database_url, "SELECT count(*) FROM review_decisions") == 2
    assert await pruned_total(client) == 1
    [logged] = log_events(capsys, "webhook_outbox_pruned")
    assert logged["rows"] == 1 and logged["retention_seconds"] == WEEK


async def test_the_task_stops_promptly_between_batches(
    make_client: MakeClient, database_url: str
) -> None:
    """Stopping during a run's pause between batches ends the task within 0.5 s (not
    after the 30 s pause), leaving the rest for the next run."""
    client = await make_client()
    await seed(database_url, 100, tag="old", delivered_age=8 * DAY)
    pruner = OutboxPruner(
        OutboxStore(client.app[DB]),
        client.app[REVIEW_METRICS],
        RetentionPolicy(
            retention_seconds=WEEK,
            interval_seconds=3600,
            batch=10,
            pause_seconds=30.0,
            first_run_after_seconds=0.0,
        ),
    )
    async with background("test-retention", pruner.run):
        deadline = time.monotonic() + 5
        while await count(database_url, "SELECT count(*) FROM webhook_outbox") > 90:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        started = time.monotonic()
    assert time.monotonic() - started < 0.5
    assert await count(database_url, "SELECT count(*) FROM webhook_outbox") == 90


async def test_the_idle_task_stops_promptly() -> None:
    """Waiting for its next run (an hour away), the task ends at once on stop."""
    calls: list[Stopping | None] = []
    ran = asyncio.Event()

    class Idle(OutboxPruner):
        async def prune_once(self, stopping: Stopping | None = None) -> int:
            calls.append(stopping)
            ran.set()
            return 0

    pruner = Idle(
        None,
        None,
        RetentionPolicy(  # type: ignore[arg-type]
            retention_seconds=WEEK, interval_seconds=3600, first_run_after_seconds=0.0
        ),
    )
    async with background("test-retention-idle", pruner.run):
        await asyncio.wait_for(ran.wait(), 5)
        started = time.monotonic()
    assert time.monotonic() - started < 0.5
    assert len(calls) == 1
