"""SQL for the reviewer console's sessions (migration 0009): one row per signed-in
browser, keyed by the SHA-256 of the cookie's random token.

The token itself never reaches PostgreSQL: rows are looked up by its digest, so a
read of the table (a backup, a replica) cannot be replayed as a cookie."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .db import Database


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class SessionStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, token: str, data: dict[str, Any], *, ttl_seconds: int) -> None:
        """Store a new session and delete every expired one: sign-in is the only way
        rows are added, so pruning here keeps the table at one TTL of sign-ins."""
        async with self.db.transaction() as tx:
            await tx.execute(
                "delete_expired_console_sessions",
                "DELETE FROM console_sessions WHERE expires_at < now()",
            )
            await tx.execute(
                "insert_console_session",
                "INSERT INTO console_sessions (token_sha256, data, expires_at)"
                " VALUES (%s, %s::jsonb, now() + %s * interval '1 second')",
                (token_digest(token), _json(data), ttl_seconds),
            )

    async def load(self, token: str) -> dict[str, Any] | None:
        """The session's data, or None when there is none or it has expired."""
        row = await self.db.fetchone(
            "select_console_session",
            "SELECT data FROM console_sessions WHERE token_sha256 = %s AND expires_at > now()",
            (token_digest(token),),
        )
        return None if row is None else dict(row["data"])

    async def delete(self, token: str) -> None:
        await self.db.execute(
            "delete_console_session",
            "DELETE FROM console_sessions WHERE token_sha256 = %s",
            (token_digest(token),),
        )


def _json(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"))
