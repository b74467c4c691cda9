"""Backlog metrics: review_queue_pending and review_queue_oldest_pending_seconds by
(severity, status), read from PostgreSQL at most once per interval when /metrics is
rendered, shared by concurrent scrapes, and kept (scrape 200) while PostgreSQL is down."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import structlog.testing
from aiohttp.test_utils import TestClient

from service.app import create_app
from service.config import Settings
from service.domain.models import Severity
from service.domain.queue import QUEUE_LABEL_SETS, Backlog, QueueKey, QueueMonitor
from service.storage.migrate import create_database
from tests.conftest import Keys
from tests.prom import Exposition, parse_exposition
from tests.service.conftest import MakeClient, ThrowawayPostgres
from tests.service.helpers import decide, sql, submit

READ_OPERATION = "select_queue_backlog"


async def scrape(client: TestClient) -> Exposition:
    resp = await client.get("/metrics")
    assert resp.status == 200
    return parse_exposition(await resp.text())


def backlog(exposition: Exposition) -> dict[QueueKey, tuple[float, float]]:
    """(severity, status) -> (pending, oldest seconds) for every label set exposed."""
    pending = exposition.series_of("review_queue_pending")
    oldest = exposition.series_of("review_queue_oldest_pending_seconds")
    assert set(pending) == set(oldest)
    return {
        (dict(labels)["severity"], dict(labels)["status"]): (value, oldest[labels])
        for labels, value in pending.items()
    }


def reads(exposition: Exposition) -> float:
    """How many backlog reads reached PostgreSQL (the query timer's count)."""
    key = ("db_query_duration_seconds_count", frozenset({("operation", READ_OPERATION)}))
    return exposition.samples.get(key, 0.0)


async def test_every_label_set_is_zero_on_an_empty_queue(make_client: MakeClient) -> None:
    """The first scrape of an empty queue shows all 4 severities x 2 open states at 0."""
    client = await make_client(queue_metrics_interval_seconds=0.001)
    exposition = await scrape(client)
    assert backlog(exposition) == {key: (0.0, 0.0) for key in QUEUE_LABEL_SETS}
    assert {s for s, _ in backlog(exposition)} == {s.value for s in Severity}


async def test_counts_and_oldest_age_follow_submissions_and_decisions(
    make_client: MakeClient, api_keys: Keys, database_url: str
) -> None:
    """Pending and escalated reviews are counted by severity; decided ones leave the
    backlog; the oldest age is the oldest open review's, per label set."""
    client = await make_client(queue_metrics_interval_seconds=0.001)
    producer, reviewer = api_keys.auth("producer"), api_keys.auth("reviewer")
    old = await submit(client, producer, severity="critical")
    await submit(client, producer, severity="critical")
    escalated = await submit(client, producer, severity="critical")
    approved = await submit(client, producer, severity="low")
    await submit(client, producer, severity="medium")
    assert (await decide(client, escalated["id"], "escalate", reviewer)).status == 200
    assert (await decide(client, approved["id"], "approve", reviewer)).status == 200
    await sql(
        database_url,
        "UPDATE reviews SET created_at = now() - interval '2 hours' WHERE id = %s",
        (old["id"],),
    )

    seen = backlog(await scrape(client))

    count, age = seen[("critical", "pending")]
    assert count == 2 and 7200 <= age < 7200 + 60
    count, age = seen[("critical", "escalated")]
    assert count == 1 and 0 <= age < 60
    count, age = seen[("medium", "pending")]
    assert count == 1 and 0 <= age < 60
    others = {k: v for k, v in seen.items() if k not in {
        ("critical", "pending"), ("critical", "escalated"), ("medium", "pending")}}
    assert others == {k: (0.0, 0.0) for k in others} and len(others) == 5

    # Approving the escalated one empties its label set back to 0, age included.
    assert (await decide(client, escalated["id"], "approve", reviewer)).status == 200
    assert backlog(await scrape(client))[("critical", "escalated")] == (0.0, 0.0)


async def test_scrapes_within_the_interval_share_one_read(
    make_client: MakeClient, api_keys: Keys
) -> None:
    """With a 60 s interval, 8 scrapes (5 of them concurrent) run one query: the values
    stay those of the first read even after a new submission."""
    client = await make_client(queue_metrics_interval_seconds=60.0)
    first = await scrape(client)
    assert reads(first) == 1
    await submit(client, api_keys.auth("producer"), severity="high")
    for _ in range(3):
        assert reads(await scrape(client)) == 1
    together = await asyncio.gather(*(scrape(client) for _ in range(5)))
    assert [reads(e) for e in together] == [1] * 5
    assert backlog(together[-1])[("high", "pending")] == (0.0, 0.0)


async def test_a_new_interval_reads_again(make_client: MakeClient, api_keys: Keys) -> None:
    """Once the interval has passed, the next scrape reads the queue again."""
    client = await make_client(queue_metrics_interval_seconds=0.2)
    assert reads(await scrape(client)) == 1
    await submit(client, api_keys.auth("producer"), severity="high")
    await asyncio.sleep(0.25)
    exposition = await scrape(client)
    assert reads(exposition) == 2
    assert backlog(exposition)[("high", "pending")][0] == 1


class SlowRepository:
    """A repository whose read blocks until released, counting reads."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.calls = 0
        self.fail = False

    async def queue_backlog(self) -> list[dict[str, Any]]:
        self.calls += 1
        await self.release.wait()
        if self.fail:
            raise OSError("connection refused to postgresql://u:secret@db/hitl")
        return [{"severity": "critical", "status": "pending", "count": 3, "oldest_seconds": 90.0}]


class Gauges:
    def __init__(self) -> None:
        self.published: list[dict[QueueKey, Backlog]] = []

    def set_review_queue(self, backlog: Mapping[QueueKey, Backlog]) -> None:
        self.published.append(dict(backlog))


async def test_concurrent_refreshes_wait_for_the_one_read_in_flight() -> None:
    """20 refreshes arriving while a read runs start no other read and all see it end;
    a refresh that gives up waiting (wait bound) leaves the read running for the rest."""
    repository, gauges = SlowRepository(), Gauges()
    now = [100.0]
    monitor = QueueMonitor(
        repository, gauges, interval_seconds=15, wait_seconds=0.2, clock=lambda: now[0]  # type: ignore[arg-type]
    )
    impatient = asyncio.create_task(monitor.refresh())
    await asyncio.sleep(0.3)
    assert impatient.done() and repository.calls == 1  # gave up after 0.2 s, no error
    waiting = [asyncio.create_task(monitor.refresh()) for _ in range(20)]
    await asyncio.sleep(0.05)
    repository.release.set()
    await asyncio.gather(*waiting)
    assert repository.calls == 1 and len(gauges.published) == 1
    assert gauges.published[0][("critical", "pending")] == Backlog(3, 90.0)
    assert gauges.published[0][("low", "escalated")] == Backlog(0, 0.0)

    # Within the interval: nothing read; after it: one more read.
    now[0] += 14.9
    await monitor.refresh()
    assert repository.calls == 1
    now[0] += 0.2
    await monitor.refresh()
    assert repository.calls == 2


async def test_a_failed_read_keeps_the_last_values_and_is_not_retried_every_scrape() -> None:
    """A read that raises publishes nothing (the last values stay), is logged by its
    class only (the driver's message may hold the DSN), and the next read waits for the
    next interval."""
    repository, gauges = SlowRepository(), Gauges()
    repository.release.set()
    now = [0.0]
    monitor = QueueMonitor(repository, gauges, interval_seconds=15, clock=lambda: now[0])  # type: ignore[arg-type]
    await monitor.refresh()
    repository.fail = True
    now[0] += 15
    with structlog.testing.capture_logs() as logs:
        await monitor.refresh()
        await monitor.refresh()
    assert repository.calls == 2 and len(gauges.published) == 1
    assert logs == [{"event": "review_queue_read_failed", "error": "OSError", "log_level": "warning"}]


async def test_postgresql_down_keeps_the_scrape_and_the_last_values(
    aiohttp_client: Any,
    settings: Settings,
    api_keys: Keys,
    throwaway_postgres: ThrowawayPostgres,
) -> None:
    """With PostgreSQL stopped, /metrics still answers 200 within 2 s, every scrape,
    with the backlog last read."""
    await create_database(throwaway_postgres.url)
    client: TestClient = await aiohttp_client(create_app(settings.with_changes(
        database_url=throwaway_postgres.url, db_timeout_seconds=2.0,
        queue_metrics_interval_seconds=0.1,
    )))
    await submit(client, api_keys.auth("producer"), severity="critical")
    assert backlog(await scrape(client))[("critical", "pending")][0] == 1

    throwaway_postgres.stop()
    for _ in range(3):
        await asyncio.sleep(0.15)
        started = time.monotonic()
        exposition = await scrape(client)
        assert time.monotonic() - started < 2.0
        assert backlog(exposition)[("critical", "pending")][0] == 1
