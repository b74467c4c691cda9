"""Live updates across instances (service/live): two app instances sharing the test
database and Redis key prefix, as two replicas behind a load balancer would; events
published after commit on one reach a Server-Sent Events stream on the other."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import time
from datetime import datetime
from typing import Any

import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

from service.app import create_app
from service.config import Settings
from service.keys import LIVE_HUB
from service.live.events import channel_name
from tests.conftest import REDIS_URL, Keys
from tests.prom import Exposition, parse_exposition
from tests.service.conftest import ThrowawayRedis
from tests.service.helpers import submission

from .conftest import OpenStream, live, wait_until

DELIVERY_BOUND = 1.0  # seconds from the API's answer to the frame on the other instance


async def metrics(client: TestClient) -> Exposition:
    return parse_exposition(await (await client.get("/metrics")).text())


async def two_instances(aiohttp_client: Any, settings: Settings) -> tuple[TestClient, TestClient]:
    a: TestClient = await aiohttp_client(create_app(settings))
    b: TestClient = await aiohttp_client(create_app(settings))
    await live(a.app)
    await live(b.app)
    return a, b


async def test_submit_and_decide_on_one_instance_reach_a_stream_on_the_other(
    aiohttp_client: Any, settings: Settings, api_keys: Keys, open_stream: OpenStream
) -> None:
    """hello says live; a review submitted, then decided, through A arrives on B's
    stream within 1 s each, with the contract's fields; an idempotent replay of the
    decision publishes nothing; the metrics count what was published and delivered,
    and the connections gauge follows the stream."""
    a, b = await two_instances(aiohttp_client, settings)
    stream = await open_stream(b, api_keys.auth("viewer"))
    hello = await stream.next()
    assert (hello.event, hello.data) == ("hello", {"live": True})
    assert stream.retry is not None and stream.retry > 0
    assert (await metrics(b)).value("hitl_live_connections_open") == 1

    resp = await a.post("/api/reviews", json=submission(), headers=api_keys.auth("producer"))
    assert resp.status == 201
    review = await resp.json()
    answered = time.monotonic()
    frame = await stream.next(DELIVERY_BOUND)
    assert time.monotonic() - answered < DELIVERY_BOUND
    assert frame.event == "review"
    event = frame.data
    assert event == {
        "type": "review.submitted",
        "review_id": review["id"],
        "status": "pending",
        "severity": review["severity"],
        "source": review["source"],
        "cve_id": review["cve_id"],
        "package": review["package"]["name"],
        "decision": None,
        "decided_by": None,
        "decided_at": None,
        "at": event["at"],
    }
    assert datetime.fromisoformat(event["at"]).tzinfo is not None

    decision = {"decision": "approve"}
    path = f"/api/reviews/{review['id']}/decision"
    resp = await a.post(path, json=decision, headers=api_keys.auth("reviewer"))
    assert resp.status == 200
    decided = await resp.json()
    answered = time.monotonic()
    frame = await stream.next(DELIVERY_BOUND)
    assert time.monotonic() - answered < DELIVERY_BOUND
    assert frame.event == "review"
    assert {k: v for k, v in frame.data.items() if k != "at"} == {
        "type": "review.decided",
        "review_id": review["id"],
        "status": "approved",
        "severity": review["severity"],
        "source": review["source"],
        "cve_id": review["cve_id"],
        "package": review["package"]["name"],
        "decision": "approve",
        "decided_by": "reviewer-bot",
        "decided_at": decided["decided_at"],
    }
    # A page that reloads on the news reads the new state, from either instance.
    reread = await (await b.get(f"/api/reviews/{review['id']}", headers=api_keys.auth("viewer"))).json()
    assert reread["status"] == "approved"

    # The same decision again is a replay: answered 200, announced nowhere. The next
    # frame is the next submission's, not a second decision.
    resp = await a.post(path, json=decision, headers=api_keys.auth("reviewer"))
    assert resp.status == 200 and resp.headers.get("Idempotent-Replayed") == "true"
    resp = await a.post("/api/reviews", json=submission(), headers=api_keys.auth("producer"))
    second = await resp.json()
    frame = await stream.next(DELIVERY_BOUND)
    assert (frame.data["type"], frame.data["review_id"]) == ("review.submitted", second["id"])

    published, delivered = await metrics(a), await metrics(b)
    assert published.value("hitl_live_events_published_total", type="review.submitted") == 2
    assert published.value("hitl_live_events_published_total", type="review.decided") == 1
    assert delivered.value("hitl_live_events_published_total", type="review.decided") == 0
    assert delivered.value("hitl_live_events_delivered_total", type="review.submitted") == 2
    assert delivered.value("hitl_live_events_delivered_total", type="review.decided") == 1
    assert published.value("hitl_live_events_delivered_total", type="review.submitted") == 0

    stream.response.close()

    async def gauge_down() -> bool:
        return (await metrics(b)).value("hitl_live_connections_open") == 0

    # The handler notices a departed client within its 1 s disconnect check.
    await wait_until(gauge_down, 3.0)


async def test_stream_needs_authorisation_and_sends_keepalives(
    aiohttp_client: Any, settings: Settings, api_keys: Keys, open_stream: OpenStream
) -> None:
    """No key or an unknown key: 401 problem, no stream; any role may listen; a quiet
    stream carries `: keepalive` comments at the configured interval; the
    authorisation check is the app's LIVE_AUTHORIZE, replaceable."""
    client: TestClient = await aiohttp_client(
        create_app(settings.with_changes(live_keepalive_seconds=0.2))
    )
    await live(client.app)  # else a mode frame follows hello once subscribed
    for headers in ({}, {"Authorization": "Bearer hitl_00000000_nope"}):
        resp = await client.get("/console/live", headers=headers)
        assert resp.status == 401
        assert resp.content_type == "application/problem+json"
    assert client.app[LIVE_HUB].metrics.hitl_live_connections_open.get({}) == 0

    stream = await open_stream(client, api_keys.auth("producer"))
    assert (await stream.next()).event == "hello"
    # Nothing happens for 1 s: only comments arrive, about every 0.2 s.
    with contextlib.suppress(TimeoutError):
        frame = await stream.next(1.0)
        raise AssertionError(f"unexpected frame {frame}")
    assert 2 <= len(stream.comments) <= 6, stream.comments
    assert set(stream.comments) == {"keepalive"}
    assert stream.response.headers["Content-Type"].startswith("text/event-stream")
    assert stream.response.headers["Cache-Control"] == "no-store"
    assert stream.response.headers["X-Content-Type-Options"] == "nosniff"


async def test_a_console_session_may_listen(
    aiohttp_client: Any, settings: Settings, api_keys: Keys, open_stream: OpenStream
) -> None:
    """The browser's way in: the session cookie of a console sign-in (EventSource
    sends no Authorization header). Signed out, the same cookie is refused."""
    from tests.console.conftest import sign_in

    client: TestClient = await aiohttp_client(create_app(settings))
    await live(client.app)
    resp = await sign_in(client, api_keys.viewer)
    assert resp.status == 303, await resp.text()
    stream = await open_stream(client, {})
    assert (await stream.next()).data == {"live": True}
    stream.response.close()

    page = await (await client.get("/console/queue")).text()
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token is not None
    resp = await client.post(
        "/console/sign-out", data={"csrf_token": token.group(1)}, allow_redirects=False
    )
    assert resp.status == 303
    resp = await client.get("/console/live")
    assert resp.status == 401


async def test_replaced_authorisation_check_decides(
    aiohttp_client: Any, settings: Settings, api_keys: Keys
) -> None:
    """A check stored under LIVE_AUTHORIZE (the console's session check at merge)
    replaces the API-key default: here one that refuses everyone."""
    from aiohttp import web

    from service.domain.errors import Unauthenticated
    from service.keys import LIVE_AUTHORIZE

    async def nobody(request: web.Request) -> object:
        raise Unauthenticated("no console session")

    app = create_app(settings)
    app[LIVE_AUTHORIZE] = nobody
    client: TestClient = await aiohttp_client(app)
    resp = await client.get("/console/live", headers=api_keys.auth("admin"))
    assert resp.status == 401


async def test_a_stream_whose_authorisation_lapses_is_ended(
    aiohttp_client: Any, settings: Settings, api_keys: Keys, open_stream: OpenStream
) -> None:
    """Checked again at each keepalive: once the check refuses (a signed-out session,
    a revoked key), the stream ends within one interval."""
    from aiohttp import web

    from service.domain.errors import Unauthenticated
    from service.keys import LIVE_AUTHORIZE

    allowed = True

    async def while_allowed(request: web.Request) -> object:
        if not allowed:
            raise Unauthenticated("signed out")
        return "someone"

    app = create_app(settings.with_changes(live_keepalive_seconds=0.2))
    app[LIVE_AUTHORIZE] = while_allowed
    client: TestClient = await aiohttp_client(app)
    stream = await open_stream(client, {})
    assert (await stream.next()).event == "hello"
    allowed = False
    revoked = time.monotonic()
    async with asyncio.timeout(2.0):
        while await stream.response.content.readline():
            pass
    assert stream.response.content.at_eof()
    assert time.monotonic() - revoked < 1.0
    await wait_until(lambda: len(client.app[LIVE_HUB]) == 0, 2.0)


async def test_redis_killed_then_restarted(
    aiohttp_client: Any,
    settings: Settings,
    api_keys: Keys,
    open_stream: OpenStream,
    throwaway_redis: ThrowawayRedis,
) -> None:
    """Redis killed: the stream says mode live=false (the pages fall back to
    refreshing) and the API still answers 2xx, promptly; publishing failed is counted,
    not raised. Redis back: mode live=true, and events flow again."""
    changed = settings.with_changes(
        redis_url=throwaway_redis.url, cache_breaker_cool_down_seconds=0.5
    )
    a: TestClient = await aiohttp_client(create_app(changed))
    b: TestClient = await aiohttp_client(create_app(changed))
    await live(a.app)
    await live(b.app)
    stream = await open_stream(b, api_keys.auth("viewer"))
    assert (await stream.next()).data == {"live": True}

    throwaway_redis.kill()
    frame = await stream.next(3.0)
    assert (frame.event, frame.data) == ("mode", {"live": False})

    for _ in range(3):
        started = time.monotonic()
        resp = await a.post("/api/reviews", json=submission(), headers=api_keys.auth("producer"))
        assert resp.status == 201
        review = await resp.json()
        resp = await a.post(
            f"/api/reviews/{review['id']}/decision",
            json={"decision": "approve"},
            headers=api_keys.auth("reviewer"),
        )
        assert resp.status == 200
        assert time.monotonic() - started < 2.0
    assert (await metrics(a)).value(
        "app_errors_total", type="live_publish_failed", severity="warning"
    ) == 6

    throwaway_redis.start()
    frame = await stream.next(5.0)
    assert (frame.event, frame.data) == ("mode", {"live": True})
    await live(a.app)

    async def event_flows() -> bool:
        resp = await a.post("/api/reviews", json=submission(), headers=api_keys.auth("producer"))
        review_id = (await resp.json())["id"]
        try:
            while True:
                frame = await stream.next(0.5)
                if frame.event == "review" and frame.data["review_id"] == review_id:
                    return True
        except TimeoutError:
            return False  # published while the breaker was still open: try again

    await wait_until(event_flows, 5.0)


async def test_a_slow_consumer_is_dropped_and_the_others_are_not(
    aiohttp_client: Any, settings: Settings, api_keys: Keys, open_stream: OpenStream
) -> None:
    """A client that stops reading fills its queue and is dropped (connection cut,
    gauge down); a client reading along gets every event, in order."""
    client: TestClient = await aiohttp_client(create_app(settings.with_changes(live_queue_size=8)))
    await live(client.app)
    hub = client.app[LIVE_HUB]
    fast = await open_stream(client, api_keys.auth("viewer"))
    assert (await fast.next()).event == "hello"

    # The slow client: a tiny receive window, and it never reads.
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(slow, ("127.0.0.1", client.port))
    request = (
        "GET /console/live HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
        f"Authorization: {api_keys.auth('viewer')['Authorization']}\r\n\r\n"
    )
    await loop.sock_sendall(slow, request.encode())
    await wait_until(lambda: len(hub) == 2, 3.0)

    publisher = aioredis.from_url(REDIS_URL)
    channel = channel_name(settings.redis_key_prefix)
    padding = "x" * 65536
    sent = 0
    try:
        # Paced by the fast client: each event is read before the next is published,
        # so only the slow one falls behind. Its kernel buffers take a few MB first.
        while len(hub) == 2:
            assert sent < 400, "the slow client was never dropped"
            event = {"type": "review.submitted", "review_id": str(sent), "cve_id": padding}
            await publisher.publish(channel, json.dumps(event))
            frame = await fast.next(2.0)
            assert frame.data["review_id"] == str(sent)
            sent += 1
        # Still served after the drop.
        for extra in range(3):
            event = {"type": "review.decided", "review_id": f"after-{extra}"}
            await publisher.publish(channel, json.dumps(event))
            assert (await fast.next(2.0)).data["review_id"] == f"after-{extra}"
    finally:
        await publisher.aclose()
    assert (await metrics(client)).value("hitl_live_connections_open") == 1

    # The slow client's connection was cut: after what was buffered, the end.
    async def cut() -> bool:
        try:
            chunk = await asyncio.wait_for(loop.sock_recv(slow, 1 << 20), 0.5)
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False  # open, and nothing more to read: not cut
        return chunk == b""

    try:
        await wait_until(cut, 10.0, every=0)
    finally:
        slow.close()
