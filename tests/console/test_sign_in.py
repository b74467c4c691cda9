"""Sign-in, sessions and sign-out: the API key is exchanged for a server-side session,
the cookie carries only a random id, and a session ends at sign-out and when its key
is revoked or expires."""

from __future__ import annotations

import json
import time
from http.cookies import SimpleCookie
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from service import keyfile
from service.app import create_app
from service.config import Settings
from service.console.sessions import session_holder, session_or
from service.domain.errors import Unauthenticated
from service.keys import API_KEYS
from tests.conftest import Keys
from tests.service.helpers import sql

from .conftest import SignedIn, csrf_token, element_text, sign_in


def set_cookies(resp: object) -> dict[str, SimpleCookie]:
    """Each Set-Cookie header of a response, parsed, by cookie name."""
    out = {}
    for header in resp.headers.getall("Set-Cookie", []):  # type: ignore[attr-defined]
        cookie: SimpleCookie = SimpleCookie()
        cookie.load(header)
        for name in cookie:
            out[name] = cookie
    return out


async def session_rows(database_url: str) -> list[tuple[object, ...]]:
    return await sql(database_url, "SELECT token_sha256, data::text FROM console_sessions")


async def test_sign_in_page_has_a_labelled_password_field(client: TestClient) -> None:
    """The sign-in form has a labelled password field and a language."""
    resp = await client.get("/console/sign-in")
    page = await resp.text()
    assert resp.status == 200
    assert '<form id="sign-in-form" method="post" action="/console/sign-in"' in page
    assert '<label for="api-key">' in page
    assert 'id="api-key" name="api_key" type="password"' in page
    assert 'id="sign-in"' in page
    assert '<html lang="en">' in page


async def test_sign_in_success_sets_a_strict_httponly_cookie_without_the_key(
    client: TestClient, api_keys: Keys, database_url: str, console_sessions_table: None
) -> None:
    """A good key: 303, an HttpOnly SameSite=Strict cookie with a random id; the key is in neither cookie, row nor page."""
    resp = await sign_in(client, api_keys.reviewer, next_path="/console/health")
    assert resp.status == 303
    assert resp.headers["Location"] == "/console/health"
    cookies = set_cookies(resp)
    morsel = cookies["hitl_session"]["hitl_session"]
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Strict"
    assert morsel["path"] == "/console/"
    assert not morsel["secure"]  # plain http here; see the https test
    assert api_keys.reviewer not in morsel.value
    assert api_keys.reviewer.split("_")[2] not in resp.headers.get("Set-Cookie", "")
    # The row stores a digest of the cookie's token, and no key.
    rows = await session_rows(database_url)
    assert len(rows) == 1
    digest, data = rows[0]
    assert morsel.value not in str(digest) and morsel.value not in str(data)
    assert api_keys.reviewer not in str(data)
    assert json.loads(str(data))["name"] == "reviewer-bot"

    page = await (await client.get("/console/queue")).text()
    assert element_text(page, "whoami") == "reviewer-bot (reviewer)"
    assert api_keys.reviewer not in page


async def test_cookie_is_secure_behind_an_https_proxy(
    client: TestClient, api_keys: Keys, console_sessions_table: None
) -> None:
    """Behind a TLS-terminating proxy the session cookie is Secure."""
    page = await (await client.get("/console/sign-in")).text()
    resp = await client.post(
        "/console/sign-in",
        data={"csrf_token": csrf_token(page), "api_key": api_keys.viewer},
        headers={"X-Forwarded-Proto": "https"},
        allow_redirects=False,
    )
    assert resp.status == 303
    assert set_cookies(resp)["hitl_session"]["hitl_session"]["secure"] is True


@pytest.mark.parametrize("key", ["", "hitl_00000000_not-a-key", "x" * 300])
async def test_wrong_key_shows_the_form_again_with_401(
    client: TestClient, key: str, database_url: str, console_sessions_table: None
) -> None:
    """A wrong, empty or oversized key: the form again with 401 and an alert, no session."""
    resp = await sign_in(client, key)
    page = await resp.text()
    assert resp.status == 401
    assert 'id="form-error" class="error" role="alert"' in page
    assert "hitl_session" not in set_cookies(resp)
    assert await session_rows(database_url) == []
    follow = await client.get("/console/queue", allow_redirects=False)
    assert follow.status == 303


async def test_a_producer_key_cannot_sign_in(
    client: TestClient, api_keys: Keys, database_url: str, console_sessions_table: None
) -> None:
    """A key with neither reviewer nor viewer role is refused (403), no session."""
    resp = await sign_in(client, api_keys.producer)
    assert resp.status == 403
    assert "neither the reviewer nor the viewer role" in element_text(
        await resp.text(), "form-error"
    )
    assert await session_rows(database_url) == []


async def test_unauthenticated_pages_redirect_to_sign_in_with_next(client: TestClient) -> None:
    """Without a session every page redirects to sign-in, remembering where it was."""
    for path in ("/console/queue?status=pending", "/console/health", "/console/reviews/x"):
        resp = await client.get(path, allow_redirects=False)
        assert resp.status == 303, path
        assert resp.headers["Location"].startswith("/console/sign-in?next=")
    resp = await client.get("/console/", allow_redirects=False)
    assert resp.status == 303


@pytest.mark.parametrize(
    "next_path",
    ["https://evil.example/", "//evil.example/x", "/api/reviews", "/console/sign-in", "\\\\evil"],
)
async def test_next_never_leaves_the_console(
    client: TestClient, api_keys: Keys, next_path: str, console_sessions_table: None
) -> None:
    """After sign-in, a next outside the console goes to the queue instead (no open redirect)."""
    resp = await sign_in(client, api_keys.viewer, next_path=next_path)
    assert resp.status == 303
    assert resp.headers["Location"] == "/console/queue"


async def test_sign_out_ends_the_session_server_side(
    signed_in: SignedIn, api_keys: Keys, database_url: str
) -> None:
    """Sign-out deletes the row and clears the cookie; the old cookie replayed is refused."""
    client = await signed_in(api_keys.reviewer)
    old = client.session.cookie_jar.filter_cookies(client.make_url("/console/"))[
        "hitl_session"
    ].value
    page = await (await client.get("/console/queue")).text()
    resp = await client.post(
        "/console/sign-out", data={"csrf_token": csrf_token(page)}, allow_redirects=False
    )
    assert resp.status == 303
    assert resp.headers["Location"] == "/console/sign-in"
    assert set_cookies(resp)["hitl_session"]["hitl_session"].value == ""
    assert await session_rows(database_url) == []
    # Replaying the old cookie (as a thief who copied it would) gets nothing.
    replay = await client.get(
        "/console/queue", headers={"Cookie": f"hitl_session={old}"}, allow_redirects=False
    )
    assert replay.status == 303
    assert replay.headers["Location"].startswith("/console/sign-in")


async def test_signing_in_again_replaces_the_old_session(
    signed_in: SignedIn, api_keys: Keys, database_url: str
) -> None:
    """Signing in again issues a new token and deletes the old session."""
    client = await signed_in(api_keys.reviewer)
    first = client.session.cookie_jar.filter_cookies(client.make_url("/console/"))[
        "hitl_session"
    ].value
    # Already signed in: the form sends the user on.
    assert (await client.get("/console/sign-in", allow_redirects=False)).status == 303
    # A sign-in form left open in another tab: its double-submit token and cookie.
    token = "t" * 43
    client.session.cookie_jar.update_cookies({"hitl_signin": token}, client.make_url("/console/"))
    resp = await client.post(
        "/console/sign-in",
        data={"csrf_token": token, "api_key": api_keys.viewer},
        allow_redirects=False,
    )
    assert resp.status == 303
    second = set_cookies(resp)["hitl_session"]["hitl_session"].value
    assert second and second != first
    assert len(await session_rows(database_url)) == 1


async def test_revoked_key_ends_its_sessions(
    aiohttp_client: object,
    settings: Settings,
    api_keys: Keys,
    tmp_path: Path,
    database_url: str,
    console_sessions_table: None,
) -> None:
    """Once a key is revoked, its session ends at the next request."""
    keys_file = tmp_path / "api-keys.json"
    keys_file.write_bytes(api_keys.file.read_bytes())
    app = create_app(settings.with_changes(api_keys_file=keys_file))
    client: TestClient = await aiohttp_client(app)  # type: ignore[operator]
    assert (await sign_in(client, api_keys.reviewer)).status == 303
    assert (await client.get("/console/queue", allow_redirects=False)).status == 200

    with keyfile.update(keys_file) as document:
        keyfile.revoke(document, api_keys.reviewer[5:13])
    assert app[API_KEYS].reload(trigger="test") == "ok"

    resp = await client.get("/console/queue", allow_redirects=False)
    assert resp.status == 303
    assert resp.headers["Location"].startswith("/console/sign-in")
    assert await session_rows(database_url) == []


async def test_expired_key_ends_its_sessions(
    aiohttp_client: object,
    settings: Settings,
    api_keys: Keys,
    tmp_path: Path,
    database_url: str,
    console_sessions_table: None,
) -> None:
    """Once a key expires, its session ends at the next request."""
    keys_file = tmp_path / "api-keys.json"
    keys_file.write_bytes(api_keys.file.read_bytes())
    app = create_app(settings.with_changes(api_keys_file=keys_file))
    client: TestClient = await aiohttp_client(app)  # type: ignore[operator]
    assert (await sign_in(client, api_keys.viewer)).status == 303

    with keyfile.update(keys_file) as document:
        for entry in document["keys"]:
            if entry["key_id"] == api_keys.viewer[5:13]:
                entry["expires"] = keyfile.format_time(time.time() - 1)
    assert app[API_KEYS].reload(trigger="test") == "ok"

    resp = await client.get("/console/health", allow_redirects=False)
    assert resp.status == 303
    assert await session_rows(database_url) == []


async def test_expired_sessions_are_refused_and_pruned(
    signed_in: SignedIn, api_keys: Keys, database_url: str
) -> None:
    """An expired session is refused, and the next sign-in deletes it."""
    client = await signed_in(api_keys.reviewer)
    await sql(database_url, "UPDATE console_sessions SET expires_at = now() - interval '1 s'")
    resp = await client.get("/console/queue", allow_redirects=False)
    assert resp.status == 303
    # The next sign-in (anyone's) deletes every expired row.
    await signed_in(api_keys.viewer)
    rows = await sql(database_url, "SELECT data->>'name' FROM console_sessions")
    assert rows == [("viewer-bot",)]


async def test_session_holder_authorises_a_request_outside_the_console_app(
    aiohttp_client: object, settings: Settings, api_keys: Keys, console_sessions_table: None
) -> None:
    """The check the live-updates endpoint (on the parent app, where the console's
    middlewares do not run) uses: the session cookie's user, or 401."""
    app = create_app(settings)

    async def probe(request: web.Request) -> web.Response:
        try:
            user = await session_holder(request)
        except Unauthenticated:
            return web.Response(status=401)
        return web.Response(text=f"{user.name} ({user.role})")

    async def probe_or_key(request: web.Request) -> web.Response:
        async def key_holder(request: web.Request) -> str:
            if request.headers.get("Authorization") != "Bearer k":
                raise Unauthenticated("no key")
            return "key holder"

        try:
            who = await session_or(key_holder)(request)
        except Unauthenticated:
            return web.Response(status=401)
        return web.Response(text=who if isinstance(who, str) else f"{who.name}")  # type: ignore[attr-defined]

    app.router.add_get("/console/probe", probe)
    app.router.add_get("/console/probe-or-key", probe_or_key)
    client: TestClient = await aiohttp_client(app)  # type: ignore[operator]
    assert (await client.get("/console/probe")).status == 401
    assert (await client.get("/console/probe-or-key")).status == 401
    keyed = await client.get("/console/probe-or-key", headers={"Authorization": "Bearer k"})
    assert await keyed.text() == "key holder"
    assert (await sign_in(client, api_keys.viewer)).status == 303
    assert await (await client.get("/console/probe-or-key")).text() == "viewer-bot"
    resp = await client.get("/console/probe")
    assert (resp.status, await resp.text()) == (200, "viewer-bot (viewer)")
    page = await (await client.get("/console/queue")).text()
    await client.post("/console/sign-out", data={"csrf_token": csrf_token(page)})
    assert (await client.get("/console/probe")).status == 401


async def test_a_link_from_another_site_reloads_from_this_one(
    signed_in: SignedIn, api_keys: Keys
) -> None:
    """A cross-site navigation carries no SameSite=Strict cookie: instead of the sign-in
    form, a page that reloads the same address from this site (which sends it)."""
    client = await signed_in(api_keys.reviewer)
    target = "/console/queue?severity=high"
    cookie = client.session.cookie_jar.filter_cookies(client.make_url("/console/"))["hitl_session"]
    client.session.cookie_jar.clear()  # what the browser leaves out of a cross-site request
    resp = await client.get(target, headers={"Sec-Fetch-Site": "cross-site"}, allow_redirects=False)
    page = await resp.text()
    assert resp.status == 200
    assert '<meta http-equiv="refresh" content="0; url=/console/queue?severity=high">' in page
    assert 'id="whoami"' not in page
    # The reload comes from this site, with the cookie: the page itself.
    again = await client.get(
        target,
        headers={"Sec-Fetch-Site": "same-origin", "Cookie": f"hitl_session={cookie.value}"},
        allow_redirects=False,
    )
    assert again.status == 200
    assert element_text(await again.text(), "whoami") == "reviewer-bot (reviewer)"
