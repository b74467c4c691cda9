"""Versioned SQL migrations, applied once even when several replicas start together.

Files ``migrations/NNNN_name.sql`` are applied in order, each in its own transaction,
under a PostgreSQL advisory lock; applied versions are recorded in schema_migrations.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from urllib.parse import urlsplit, urlunsplit

import aiopg
import psycopg2.sql
import structlog

log = structlog.get_logger("hitl.migrate")

# Any constant shared by every replica; "hitl" in ASCII.
MIGRATION_LOCK_ID = 0x6869746C
_FILENAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def available_migrations() -> list[Migration]:
    folder = resources.files("service.storage") / "migrations"
    found = []
    for entry in folder.iterdir():
        match = _FILENAME.match(entry.name)
        if match:
            found.append(Migration(int(match["version"]), match["name"], entry.read_text()))
    return sorted(found, key=lambda m: m.version)


async def apply_migrations(dsn: str) -> list[int]:
    """Apply what is pending; return the versions this call applied."""
    applied_now: list[int] = []
    async with aiopg.connect(dsn) as conn, conn.cursor() as cur:
        await cur.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_ID,))
        try:
            await cur.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            await cur.execute("SELECT version FROM schema_migrations")
            done = {row[0] for row in await cur.fetchall()}
            for migration in available_migrations():
                if migration.version in done:
                    continue
                await cur.execute("BEGIN")
                try:
                    await cur.execute(migration.sql)
                    await cur.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                        (migration.version, migration.name),
                    )
                except BaseException:
                    await cur.execute("ROLLBACK")
                    raise
                await cur.execute("COMMIT")
                applied_now.append(migration.version)
                log.info("migration_applied", version=migration.version, name=migration.name)
        finally:
            await cur.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_ID,))
    return applied_now


def _name_and_maintenance_dsn(dsn: str) -> tuple[str, str]:
    """The database ``dsn`` names, and a DSN of the same server's ``postgres``
    database, from which that one can be created or dropped."""
    parts = urlsplit(dsn)
    return parts.path.lstrip("/"), urlunsplit(parts._replace(path="/postgres"))


async def create_database(dsn: str) -> bool:
    """Create the database ``dsn`` names when it does not exist; True if created."""
    name, maintenance = _name_and_maintenance_dsn(dsn)
    async with aiopg.connect(maintenance) as conn, conn.cursor() as cur:
        await cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        if await cur.fetchone():
            return False
        await cur.execute(
            psycopg2.sql.SQL("CREATE DATABASE {}").format(psycopg2.sql.Identifier(name))
        )
        return True


async def drop_database(dsn: str) -> None:
    name, maintenance = _name_and_maintenance_dsn(dsn)
    async with aiopg.connect(maintenance) as conn, conn.cursor() as cur:
        await cur.execute(
            psycopg2.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                psycopg2.sql.Identifier(name)
            )
        )
