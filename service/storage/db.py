"""PostgreSQL access through aiopg: the pool, one timed wrapper for every statement,
and transactions. Every statement is parameterised; nothing builds SQL from input."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiopg
import psycopg2
import psycopg2.extensions
import structlog

from telemetry import Metrics

log = structlog.get_logger("hitl.db")

Row = dict[str, Any]
Params = Sequence[Any] | dict[str, Any]


class Executor:
    """Runs statements on one cursor, each timed under its operation name."""

    def __init__(self, cursor: aiopg.Cursor, metrics: Metrics) -> None:
        self._cursor = cursor
        self._metrics = metrics

    async def execute(self, operation: str, sql: str, params: Params = ()) -> int:
        async with self._metrics.db_query(operation):
            await self._cursor.execute(sql, params)
        return int(self._cursor.rowcount)

    async def fetchone(self, operation: str, sql: str, params: Params = ()) -> Row | None:
        async with self._metrics.db_query(operation):
            await self._cursor.execute(sql, params)
            row = await self._cursor.fetchone()
        return dict(zip(self._columns(), row, strict=True)) if row is not None else None

    async def fetchall(self, operation: str, sql: str, params: Params = ()) -> list[Row]:
        async with self._metrics.db_query(operation):
            await self._cursor.execute(sql, params)
            rows = await self._cursor.fetchall()
        columns = self._columns()
        return [dict(zip(columns, row, strict=True)) for row in rows]

    def _columns(self) -> tuple[str, ...]:
        # Rows come as tuples and become dicts here, in C: psycopg2's RealDictCursor
        # builds each row in Python, one __setitem__ per column, which was a tenth of
        # the CPU of a 20-review list (py-spy, docs/benchmarks.md).
        description = self._cursor.description
        assert description is not None  # fetch* raised already for a statement without rows
        return tuple(column.name for column in description)


class Database:
    def __init__(self, pool: aiopg.Pool, metrics: Metrics) -> None:
        self.pool = pool
        self._metrics = metrics

    @contextlib.asynccontextmanager
    async def _cursor(self) -> AsyncIterator[aiopg.Cursor]:
        try:
            conn = await self.pool.acquire()
        except TimeoutError:
            # Every connection stayed busy for the pool's whole timeout: overload, which
            # the client should see as 503 and retry, not as a crash.
            raise DatabaseBusy(
                f"no database connection became free within {self.pool.timeout:g}s"
            ) from None
        except OSError as exc:
            # aiopg can hide a refused connect (PostgreSQL stopped) behind an OSError of
            # its selector (a writer removed from an fd already closed): still
            # "unreachable", a 503, not a crash.
            raise psycopg2.OperationalError(f"cannot connect: {exc.__cause__ or exc}") from exc
        try:
            async with conn.cursor() as cur:
                yield cur
        finally:
            await self.pool.release(conn)

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Executor]:
        """Autocommit statements on one pooled connection."""
        async with self._cursor() as cur:
            yield Executor(cur, self._metrics)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Executor]:
        """Statements in one transaction: committed when the block ends normally,
        rolled back when it raises (or is cancelled)."""
        async with self._cursor() as cur:
            executor = Executor(cur, self._metrics)
            await executor.execute("begin", "BEGIN")
            try:
                yield executor
            except BaseException:
                with contextlib.suppress(Exception):
                    await executor.execute("rollback", "ROLLBACK")
                raise
            await executor.execute("commit", "COMMIT")

    async def fetchone(self, operation: str, sql: str, params: Params = ()) -> Row | None:
        async with self.connection() as ex:
            return await ex.fetchone(operation, sql, params)

    async def fetchall(self, operation: str, sql: str, params: Params = ()) -> list[Row]:
        async with self.connection() as ex:
            return await ex.fetchall(operation, sql, params)

    async def execute(self, operation: str, sql: str, params: Params = ()) -> int:
        async with self.connection() as ex:
            return await ex.execute(operation, sql, params)

    async def ping(self) -> bool:
        """True when PostgreSQL answers a statement; raises when it cannot."""
        await self.fetchone("ping", "SELECT 1")
        return True

    def pool_usage(self) -> tuple[int, int, int]:
        """(active, idle, maximum) connections of the pool right now."""
        idle = self.pool.freesize
        return self.pool.size - idle, idle, self.pool.maxsize or 0


PoolFactory = Callable[..., Awaitable[aiopg.Pool]]


async def open_pool(
    factory: PoolFactory,
    dsn: str,
    *,
    minsize: int,
    maxsize: int,
    timeout: float,  # noqa: ASYNC109 - aiopg's per-operation timeout, passed through
    deadline_seconds: float,
) -> aiopg.Pool:
    """Open the pool, retrying with exponential backoff until ``deadline_seconds``
    have passed; then give up with a message that says where we tried to connect."""
    started = time.monotonic()
    delay = 0.2
    attempt = 0
    while True:
        attempt += 1
        try:
            return await factory(dsn, minsize=minsize, maxsize=maxsize, timeout=timeout)
        except (TimeoutError, psycopg2.OperationalError, OSError) as exc:
            elapsed = time.monotonic() - started
            if elapsed + delay > deadline_seconds:
                raise DatabaseUnreachable(dsn, attempt, elapsed, exc) from exc
            log.warning(
                "database_unreachable_retrying",
                attempt=attempt,
                retry_in_seconds=round(delay, 2),
                error=str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


class DatabaseBusy(Exception):
    """No pooled connection could be had in time."""


class DatabaseUnreachable(RuntimeError):
    def __init__(self, dsn: str, attempts: int, elapsed: float, cause: BaseException) -> None:
        where = redact_dsn(dsn)
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        super().__init__(
            f"PostgreSQL at {where} did not accept connections after {attempts} attempts "
            f"in {elapsed:.1f}s: {first}"
        )


def redact_dsn(dsn: str) -> str:
    """The DSN without its password, for messages and logs."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))
