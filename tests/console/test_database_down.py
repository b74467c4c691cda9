"""PostgreSQL down: console pages say so on a 503 page (as the API answers 503),
never a 500 or a traceback, and work again once it is back."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp.test_utils import TestClient

from service.app import create_app
from service.config import Settings
from service.storage.migrate import create_database
from tests.conftest import Keys
from tests.service.conftest import ThrowawayPostgres

from .conftest import element_text, sign_in


async def test_console_pages_are_503_while_postgres_is_down(
    aiohttp_client: Any,
    settings: Settings,
    api_keys: Keys,
    throwaway_postgres: ThrowawayPostgres,
) -> None:
    """Signed in, then PostgreSQL stops: every page is a 503 HTML page that says the
    database is unavailable, with the security headers; after a restart the same
    session works again."""
    await create_database(throwaway_postgres.url)
    app = create_app(
        settings.with_changes(database_url=throwaway_postgres.url, db_timeout_seconds=2.0)
    )
    client: TestClient = await aiohttp_client(app)
    assert (await sign_in(client, api_keys.reviewer)).status == 303
    assert (await client.get("/console/queue")).status == 200

    throwaway_postgres.stop()
    started = time.monotonic()
    for path in ("/console/queue", "/console/health", "/console/sign-in"):
        resp = await client.get(path, allow_redirects=False)
        page = await resp.text()
        assert resp.status == 503, (path, page[:300])
        assert resp.content_type == "text/html"
        assert resp.headers["Retry-After"] == "5"
        assert "database is unavailable" in element_text(page, "error-message")
        assert "Traceback" not in page and "psycopg2" not in page
        assert "Content-Security-Policy" in resp.headers
    assert time.monotonic() - started < 15

    throwaway_postgres.start()
    deadline = time.monotonic() + 15
    while (status := (await client.get("/console/queue")).status) != 200:
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.2)
