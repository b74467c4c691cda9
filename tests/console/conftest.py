"""Console fixtures: the app, database and keys of tests/conftest.py, plus a browser-ish
client that signs in through the form, and the page parsing the tests share."""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiopg
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from service.app import create_app
from service.config import Settings

# Fixtures of the service suite these tests use too (pytest finds them by name here).
from tests.service.conftest import make_client, receiver, throwaway_postgres  # noqa: F401

SignedIn = Callable[..., Awaitable[TestClient]]

_CSRF = re.compile(r'name="csrf_token" value="([^"]*)"')


def csrf_token(page: str) -> str:
    """The first CSRF token of a page (the sign-in form's, or the header's sign-out
    form's, which is the session's)."""
    match = _CSRF.search(page)
    assert match, "no CSRF token on the page"
    return html.unescape(match.group(1))


def form_id(page: str) -> str:
    match = re.search(r'name="form_id" value="([^"]*)"', page)
    assert match, "no decision form on the page"
    return match.group(1)


def element_text(page: str, element_id: str) -> str:
    """The text of the element with this id (tags removed, entities decoded)."""
    match = re.search(rf'<(\w+)[^>]*\bid="{re.escape(element_id)}"[^>]*>(.*?)</\1>', page, re.S)
    assert match, f"no #{element_id} on the page"
    return html.unescape(re.sub(r"<[^>]+>", "", match.group(2))).strip()


async def sign_in(client: TestClient, key: str, *, next_path: str | None = None) -> ClientResponse:
    """Fill in and send the sign-in form as a browser would (no redirect followed)."""
    page = await (await client.get("/console/sign-in")).text()
    form = {"csrf_token": csrf_token(page), "api_key": key}
    if next_path is not None:
        form["next"] = next_path
    return await client.post("/console/sign-in", data=form, allow_redirects=False)


@pytest.fixture
async def console_sessions_table(database_url: str) -> AsyncIterator[None]:
    """No session left over from an earlier test."""
    async with aiopg.connect(database_url) as conn, conn.cursor() as cur:
        await cur.execute("DELETE FROM console_sessions")
    yield


@pytest.fixture
async def signed_in(
    aiohttp_client: Any, settings: Settings, console_sessions_table: None
) -> SignedIn:
    """A new client (own cookie jar, own app unless one is given) signed in with ``key``."""

    async def make(key: str, *, client: TestClient | None = None) -> TestClient:
        if client is None:
            client = await aiohttp_client(create_app(settings))
        resp = await sign_in(client, key)
        assert resp.status == 303, await resp.text()
        return client

    return make
