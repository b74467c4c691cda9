"""Versioned migrations: idempotent, and applied once when replicas race."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from service.storage.migrate import (
    apply_migrations,
    available_migrations,
    create_database,
    drop_database,
)
from tests.conftest import PG_BASE, RUN_ID
from tests.service.helpers import sql


@pytest.fixture
async def fresh_database() -> AsyncIterator[str]:
    """An empty database of this run, dropped afterwards."""
    url = f"{PG_BASE}/hitl_test_{RUN_ID}_migrate"
    await drop_database(url)
    assert await create_database(url) is True
    try:
        yield url
    finally:
        await drop_database(url)


async def test_create_database_is_idempotent(fresh_database: str) -> None:
    """Creating an existing database is a no-op that says so."""
    assert await create_database(fresh_database) is False


async def test_applying_twice_is_a_no_op(fresh_database: str) -> None:
    """The first run applies every migration in order; the second applies nothing."""
    versions = [m.version for m in available_migrations()]
    assert versions == sorted(versions) and len(versions) >= 2
    assert await apply_migrations(fresh_database) == versions
    assert await apply_migrations(fresh_database) == []
    rows = await sql(fresh_database, "SELECT version FROM schema_migrations ORDER BY version")
    assert [r[0] for r in rows] == versions


async def test_concurrent_replicas_migrate_once(fresh_database: str) -> None:
    """Four replicas migrating one fresh database at once all succeed; each migration is
    applied by exactly one of them and recorded once."""
    versions = [m.version for m in available_migrations()]
    results = await asyncio.gather(*(apply_migrations(fresh_database) for _ in range(4)))
    applied = sorted(v for result in results for v in result)
    assert applied == versions
    assert sum(1 for r in results if r) == 1
    rows = await sql(fresh_database, "SELECT version, count(*) FROM schema_migrations GROUP BY version ORDER BY version")
    assert rows == [(v, 1) for v in versions]
    tables = await sql(
        fresh_database,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
    )
    assert {"reviews", "review_decisions", "validation_results", "webhook_outbox"} <= {t[0] for t in tables}
