"""Console sessions: an API key is exchanged once, at sign-in, for a server-side
session; the browser keeps only a random token in the ``hitl_session`` cookie.

aiohttp-session drives the cookie; ``PostgresSessionStorage`` keeps the session in
PostgreSQL (storage/sessions.py), so every replica sees it and signing out ends it
everywhere at once. What a session holds: the key's id, the name and console role it
had, and the session's CSRF token — never the key. Every request re-checks the key
(``ApiKeys.current``): once it is revoked or expires, its sessions end.

Sessions are written once, at sign-in, and deleted at sign-out: no write per request.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web
from aiohttp_session import AbstractStorage, Session, get_session, new_session

from ..auth import Principal
from ..domain.errors import Unauthenticated
from ..keys import API_KEYS, DB
from ..storage.sessions import SessionStore

log = structlog.get_logger("hitl.console")

COOKIE_NAME = "hitl_session"
COOKIE_PATH = "/console/"
# secrets.token_urlsafe(32): 43 characters of the URL-safe base64 alphabet.
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{43}$")

REVIEWER = "reviewer"
VIEWER = "viewer"


@dataclass(frozen=True, slots=True)
class ConsoleUser:
    """Who is signed in: the key's name, the console role (``reviewer`` decides,
    ``viewer`` reads), the key's id and the session's CSRF token."""

    name: str
    role: str
    key_id: str
    csrf_token: str

    @property
    def can_decide(self) -> bool:
        return self.role == REVIEWER


CONSOLE_USER: web.RequestKey[ConsoleUser] = web.RequestKey("console_user", ConsoleUser)


def console_role(principal: Principal) -> str | None:
    """The console role a key gives: reviewer (who must read to decide) over viewer;
    None for a key with neither (a producer's)."""
    if REVIEWER in principal.roles:
        return REVIEWER
    if VIEWER in principal.roles:
        return VIEWER
    return None


def is_https(request: web.BaseRequest) -> bool:
    """Whether the browser reached us over TLS, directly or through a proxy that says
    so. X-Forwarded-Proto only ever makes a cookie stricter (Secure), so trusting it
    cannot weaken anything."""
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return request.secure or forwarded == "https"


def set_cookie(
    request: web.BaseRequest, response: web.StreamResponse, name: str, value: str, max_age: int
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=COOKIE_PATH,
        secure=is_https(request),
        httponly=True,
        samesite="Strict",
    )


def clear_cookie(response: web.StreamResponse, name: str) -> None:
    response.del_cookie(name, path=COOKIE_PATH)


class PostgresSessionStorage(AbstractStorage):
    """aiohttp-session storage backed by the console_sessions table."""

    def __init__(self, *, ttl_seconds: int) -> None:
        super().__init__(
            cookie_name=COOKIE_NAME,
            max_age=ttl_seconds,
            path=COOKIE_PATH,
            httponly=True,
            samesite="Strict",
        )
        self.ttl_seconds = ttl_seconds

    @staticmethod
    def _store(request: web.Request) -> SessionStore:
        # The pool belongs to the parent app and opens after this storage is built.
        return SessionStore(request.config_dict[DB])

    async def load_session(self, request: web.Request) -> Session:
        token = self.load_cookie(request)
        if token is None or not _TOKEN.match(token):
            return Session(None, data=None, new=True, max_age=self.max_age)
        data = await self._store(request).load(token)
        if data is None:  # signed out, expired, or never ours
            return Session(None, data=None, new=True, max_age=self.max_age)
        # The row's expires_at is the authority; aiohttp-session's own age check is off.
        return Session(token, data={"session": data}, new=False, max_age=None)

    async def save_session(
        self, request: web.Request, response: web.StreamResponse, session: Session
    ) -> None:
        store = self._store(request)
        if session.empty:  # signed out (invalidated): the row and the cookie go
            if session.identity is not None:
                await store.delete(str(session.identity))
            if self.load_cookie(request) is not None:
                clear_cookie(response, COOKIE_NAME)
            return
        if not session.new:
            # Nothing changes a session after sign-in; a change would need an UPDATE.
            raise RuntimeError("console sessions are immutable once created")
        token = secrets.token_urlsafe(32)
        await store.create(token, dict(session), ttl_seconds=self.ttl_seconds)
        set_cookie(request, response, COOKIE_NAME, token, self.ttl_seconds)


async def start(request: web.Request, principal: Principal, role: str) -> None:
    """Sign in: end whatever session the browser had, open a new one (a new token: a
    token planted before sign-in is worth nothing after it)."""
    old = await get_session(request)
    if old.identity is not None:
        await PostgresSessionStorage._store(request).delete(str(old.identity))
    session = await new_session(request)
    session.update(
        {
            "key_id": principal.key_id,
            "name": principal.name,
            "role": role,
            "csrf_token": secrets.token_urlsafe(32),
            "signed_in_at": time.time(),
        }
    )


async def end(request: web.Request) -> None:
    """Sign out: the row is deleted and the cookie cleared when the response is sent."""
    session = await get_session(request)
    session.invalidate()


async def current_user(request: web.Request) -> ConsoleUser | None:
    """The signed-in user, or None. A session whose key was revoked, expired or lost
    the role it signed in with is ended here (deleted with the response)."""
    session = await get_session(request)
    if session.empty:
        return None
    user = _user_of(dict(session))
    if user is None or not _key_still_valid(request, user):
        log.info("console_session_ended", reason="key_revoked_or_changed")
        session.invalidate()
        return None
    return user


def _user_of(data: dict[str, Any]) -> ConsoleUser | None:
    try:
        user = ConsoleUser(
            name=str(data["name"]),
            role=str(data["role"]),
            key_id=str(data["key_id"]),
            csrf_token=str(data["csrf_token"]),
        )
    except KeyError:
        return None
    return user if user.role in (REVIEWER, VIEWER) else None


def _key_still_valid(request: web.Request, user: ConsoleUser) -> bool:
    stored = request.config_dict[API_KEYS].current(user.key_id)
    if stored is None or stored.name != user.name:
        return False
    return console_role(Principal(stored.name, stored.roles, stored.key_id)) == user.role


async def user_from_cookie(request: web.Request) -> ConsoleUser | None:
    """The signed-in user of a request that did not pass through the console's
    middlewares (e.g. a live-updates endpoint on the parent app): reads the cookie and
    the row directly, with the same key re-check. Ends nothing."""
    token = request.cookies.get(COOKIE_NAME)
    if token is None or not _TOKEN.match(token):
        return None
    data = await SessionStore(request.config_dict[DB]).load(token)
    user = None if data is None else _user_of(data)
    if user is None or not _key_still_valid(request, user):
        return None
    return user


async def session_holder(request: web.Request) -> ConsoleUser:
    """For the live-updates endpoint's authorisation hook (``app[LIVE_AUTHORIZE]``):
    the user of the request's console session; Unauthenticated (401) without one. A
    browser's EventSource cannot send an Authorization header, but it does send the
    session cookie (its Path, /console/, covers /console/live)."""
    user = await user_from_cookie(request)
    if user is None:
        raise Unauthenticated("sign in to the console first")
    return user


Authorize = Callable[[web.Request], Awaitable[object]]


def session_or(fallback: Authorize) -> Authorize:
    """An authorisation check that accepts the console session's user and otherwise
    asks ``fallback`` (e.g. the live endpoint's API-key check, for clients that are not
    a browser): ``app[LIVE_AUTHORIZE] = session_or(app[LIVE_AUTHORIZE])``."""

    async def authorize(request: web.Request) -> object:
        user = await user_from_cookie(request)
        return user if user is not None else await fallback(request)

    return authorize
