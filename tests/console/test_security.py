"""CSRF on every form, the security headers on every console response, no inline
script anywhere, and nothing of it on /api."""

from __future__ import annotations

import re

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import Keys
from tests.service.helpers import sql, submit

from .conftest import SignedIn, csrf_token, form_id


def assert_security_headers(resp: object, *, page: bool = True) -> None:
    headers = resp.headers  # type: ignore[attr-defined]
    csp = headers["Content-Security-Policy"]
    directives = {d.split()[0]: d.split()[1:] for d in csp.split("; ")}
    assert directives["default-src"] == ["'self'"]
    assert directives["script-src"] == ["'self'"]
    assert directives["style-src"] == ["'self'"]
    assert directives["connect-src"] == ["'self'"]
    assert directives["frame-ancestors"] == ["'none'"]
    assert directives["base-uri"] == ["'none'"]
    assert directives["form-action"] == ["'self'"]
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Referrer-Policy"] == "same-origin"
    if page:
        assert headers["Cache-Control"] == "no-store"


def assert_no_inline_script(page: str) -> None:
    for tag in re.findall(r"<script\b[^>]*>", page):
        assert re.search(r'\bsrc="/console/static/[a-z]+\.js"', tag), tag
    assert re.findall(r"<script\b[^>]*>\s*[^<\s]", page) == [], "a script element has a body"
    # No event-handler attributes in markup the server wrote (payloads are escaped).
    assert re.findall(r"<[a-z]+\b[^>]*\son[a-z]+\s*=", page) == []


async def test_every_console_response_carries_the_headers(
    signed_in: SignedIn, client: TestClient, api_keys: Keys
) -> None:
    """Pages, redirects, errors and static files carry the CSP and the other headers; no inline script."""
    review = await submit(client, api_keys.auth("producer"))
    anonymous = [
        await client.get("/console/sign-in"),
        await client.get("/console/queue", allow_redirects=False),  # the 303
    ]
    for resp in anonymous:
        assert_security_headers(resp)
    reviewer = await signed_in(api_keys.reviewer)
    for path in (
        "/console/queue",
        f"/console/reviews/{review['id']}",
        "/console/health",
        "/console/nowhere",
        "/console/reviews/not-a-uuid",
        "/console/reviews/00000000-0000-0000-0000-000000000000",
    ):
        resp = await reviewer.get(path)
        page = await resp.text()
        assert resp.content_type == "text/html", path
        assert_security_headers(resp)
        assert_no_inline_script(page)
        assert '<html lang="en">' in page
        for shared in ('id="live-status" role="status"', 'id="announcer"', 'aria-live="polite"'):
            assert shared in page, (path, shared)
        assert '<script src="/console/static/console.js" defer></script>' in page
        assert '<script src="/console/static/live.js" defer></script>' in page
    css = await reviewer.get("/console/static/console.css")
    assert css.status == 200
    assert_security_headers(css, page=False)
    assert css.headers["Cache-Control"] == "no-cache"


async def test_static_files_need_no_session(client: TestClient) -> None:
    """The sign-in page's CSS and JS are served without a session; no path escapes the folder."""
    for name in ("console.css", "console.js"):
        resp = await client.get(f"/console/static/{name}", allow_redirects=False)
        assert resp.status == 200, name
        assert_security_headers(resp, page=False)
    assert (await client.get("/console/static/../app.py")).status in (403, 404)


async def test_error_pages_keep_their_status(signed_in: SignedIn, api_keys: Keys) -> None:
    """Unknown page 404, malformed id 400, unknown review 404, as HTML."""
    reviewer = await signed_in(api_keys.reviewer)
    assert (await reviewer.get("/console/nowhere")).status == 404
    assert (await reviewer.get("/console/reviews/not-a-uuid")).status == 400
    unknown = await reviewer.get("/console/reviews/00000000-0000-0000-0000-000000000000")
    assert unknown.status == 404
    assert "no review with id" in await unknown.text()


async def test_api_responses_gain_no_console_header(client: TestClient, api_keys: Keys) -> None:
    """The console's headers and cookies stay off /api."""
    resp = await client.get("/api/reviews", headers=api_keys.auth("viewer"))
    assert resp.status == 200
    for header in ("Content-Security-Policy", "X-Frame-Options", "Set-Cookie"):
        assert header not in resp.headers


@pytest.mark.parametrize("token", [None, "", "wrong", "x" * 43])
async def test_decision_without_the_right_csrf_token_is_refused_and_changes_nothing(
    signed_in: SignedIn, client: TestClient, api_keys: Keys, database_url: str, token: str | None
) -> None:
    """A decision without the session's CSRF token is 403; the review stays pending."""
    review = await submit(client, api_keys.auth("producer"))
    reviewer = await signed_in(api_keys.reviewer)
    page = await (await reviewer.get(f"/console/reviews/{review['id']}")).text()
    form = {"decision": "approve", "form_id": form_id(page), "patch": ""}
    if token is not None:
        form["csrf_token"] = token
    resp = await reviewer.post(
        f"/console/reviews/{review['id']}/decision", data=form, allow_redirects=False
    )
    assert resp.status == 403
    assert "security token" in await resp.text()
    assert_security_headers(resp)
    stored = await (
        await client.get(f"/api/reviews/{review['id']}", headers=api_keys.auth("viewer"))
    ).json()
    assert stored["status"] == "pending" and stored["decisions"] == []


async def test_another_users_token_is_not_this_sessions(
    signed_in: SignedIn, client: TestClient, api_keys: Keys
) -> None:
    """A CSRF token is bound to its session: another user's token is refused."""
    review = await submit(client, api_keys.auth("producer"))
    alice = await signed_in(api_keys.admin)
    bob = await signed_in(api_keys.reviewer)
    alice_token = csrf_token(await (await alice.get("/console/queue")).text())
    resp = await bob.post(
        f"/console/reviews/{review['id']}/decision",
        data={"csrf_token": alice_token, "decision": "approve"},
        allow_redirects=False,
    )
    assert resp.status == 403


async def test_cross_site_post_is_refused_even_with_the_token(
    signed_in: SignedIn, client: TestClient, api_keys: Keys
) -> None:
    """A POST whose Origin is another site is refused even with the right token."""
    review = await submit(client, api_keys.auth("producer"))
    reviewer = await signed_in(api_keys.reviewer)
    token = csrf_token(await (await reviewer.get("/console/queue")).text())
    resp = await reviewer.post(
        f"/console/reviews/{review['id']}/decision",
        data={"csrf_token": token, "decision": "approve"},
        headers={"Origin": "https://evil.example"},
        allow_redirects=False,
    )
    assert resp.status == 403
    assert "another site" in await resp.text()


async def test_sign_out_and_sign_in_need_their_tokens(
    signed_in: SignedIn, client: TestClient, api_keys: Keys, database_url: str
) -> None:
    """Sign-out and sign-in refuse a POST without their token, and change nothing."""
    reviewer = await signed_in(api_keys.reviewer)
    resp = await reviewer.post("/console/sign-out", data={}, allow_redirects=False)
    assert resp.status == 403
    assert len(await sql(database_url, "SELECT 1 FROM console_sessions")) == 1
    # Sign-in without the form's double-submit token: no session is made.
    await client.get("/console/sign-in")
    resp = await client.post(
        "/console/sign-in", data={"api_key": api_keys.viewer}, allow_redirects=False
    )
    assert resp.status == 403
    assert len(await sql(database_url, "SELECT 1 FROM console_sessions")) == 1
