"""Hostile input over raw sockets, against the real listener (service.server.listen):
undecodable bytes in every header the service reads, duplicate headers, bodies that
trickle or never come, declared lengths far over the limit, slow headers, and more
connections than the caps allow. Never a 5xx; every stall bounded.

Bounds asserted here (tests shorten the settings; production defaults in brackets):
- declared Content-Length over the limit: 413 within 0.5 s, the body never read;
- body read deadline 0.5 s [10 s]: 408 between 0.45 s and 1.5 s, trickling or silent;
- after a 408/413 the server closes the connection within LINGER_SECONDS (2 s) + 1 s;
- keep-alive / header timeout 1 s [15 s]: an idle connection, or headers trickled a
  byte at a time, is closed between 0.9 s and 2.5 s;
- max_connections 6 [1000]: the 7th connection gets a 503 problem at once and is
  closed; per client 3 [off]: the 4th from one address is refused, another address
  is still served.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from service.app import create_app
from service.config import Settings
from service.server import LINGER_SECONDS, Listening, listen
from tests.conftest import Keys
from tests.prom import Exposition, parse_exposition
from tests.service.helpers import PROBLEM_BASE, PROBLEM_CONTENT_TYPE, sql, submission

BODY_DEADLINE = 0.5
KEEPALIVE = 1.0

Serve = Callable[..., Awaitable[Listening]]


@pytest.fixture
async def serve(settings: Settings) -> AsyncIterator[Serve]:
    """Start the app on a free loopback port through the real listener."""
    started: list[Listening] = []

    async def start(**changes: object) -> Listening:
        options: dict[str, object] = {
            "port": 0,
            "body_read_timeout_seconds": BODY_DEADLINE,
            "keepalive_timeout_seconds": KEEPALIVE,
            "shutdown_grace_seconds": 1.0,
            **changes,
        }
        changed = settings.with_changes(**options)
        listening = await listen(create_app(changed), changed)
        started.append(listening)
        return listening

    yield start
    for listening in started:
        listening.listener.close()
        await listening.runner.cleanup()


@dataclass
class Reply:
    status: int
    headers: dict[str, list[str]] = field(default_factory=dict)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None

    def problem(self) -> dict[str, object]:
        media_type = (self.header("content-type") or "").split(";")[0]
        assert media_type == PROBLEM_CONTENT_TYPE, (self.headers, self.body)
        problem = json.loads(self.body)
        assert isinstance(problem, dict) and problem["status"] == self.status
        return problem


async def read_reply(reader: asyncio.StreamReader) -> Reply:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
    reply = Reply(status, headers)
    if "content-length" in headers:
        reply.body = await reader.readexactly(int(headers["content-length"][0]))
    elif headers.get("transfer-encoding") == ["chunked"]:
        chunks = []
        while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
        await reader.readuntil(b"\r\n")
        reply.body = b"".join(chunks)
    return reply


async def exchange(port: int, request: bytes, timeout: float = 5.0) -> Reply:
    """One request on a fresh connection; its reply."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(read_reply(reader), timeout)
    finally:
        await close(writer)


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> float:
    """Seconds until the server closes the connection (EOF or reset); fails after
    ``seconds``. Whatever arrives before the close is discarded."""
    started = time.monotonic()
    async with asyncio.timeout(seconds):
        try:
            while await reader.read(65536):
                pass
        except ConnectionResetError:
            pass
    return time.monotonic() - started


def request(
    method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes = b""
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1".encode()]
    if not any(name.lower() == b"host" for name, _ in headers):
        lines.append(b"Host: 127.0.0.1")
    lines += [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def bearer(key: str) -> tuple[bytes, bytes]:
    return (b"Authorization", b"Bearer " + key.encode())


JSON = (b"Content-Type", b"application/json")


def length(body: bytes) -> tuple[bytes, bytes]:
    return (b"Content-Length", str(len(body)).encode())


BODY = json.dumps(submission()).encode()

# (what, method, path, headers with a placeholder KEY for a valid key, body, expected
# status or None for "any 2xx-4xx"). Every header the service or telemetry reads.
HOSTILE_HEADERS: list[tuple[str, str, str, list[tuple[bytes, bytes]], bytes, int | None]] = [
    ("authorization 0xff", "GET", "/api/reviews", [(b"Authorization", b"Bearer \xff")], b"", 401),
    ("authorization latin-1 token", "GET", "/api/reviews",
     [(b"Authorization", b"Bearer hitl_0123abcd_\xe9\xe9\xe9\xe9")], b"", 401),
    ("authorization scheme 0xfe", "GET", "/api/reviews", [(b"Authorization", b"\xfe\xff abc")], b"", 401),
    ("authorization invalid utf-8 on a write", "POST", "/api/reviews",
     [(b"Authorization", b"Bearer \xc3\x28"), JSON, length(BODY)], BODY, 401),
    ("content-type 0xff", "POST", "/api/reviews", [b"KEY", (b"Content-Type", b"application/json\xff"),
     length(BODY)], BODY, 415),
    ("content-type parameter 0xff", "POST", "/api/apv/validate",
     [b"KEY", (b"Content-Type", b"application/json; charset=\xff"), length(b"{}")], b"{}", None),
    ("content-length 0xff", "POST", "/api/reviews", [b"KEY", JSON, (b"Content-Length", b"2\xff")], b"{}", 400),
    ("content-length negative", "POST", "/api/reviews", [b"KEY", JSON, (b"Content-Length", b"-2")], b"{}", 400),
    ("content-length 40 digits", "POST", "/api/reviews",
     [b"KEY", JSON, (b"Content-Length", b"9" * 40)], b"", None),
    ("accept 0xff", "GET", "/api/reviews", [b"KEY", (b"Accept", b"application/json\xff")], b"", 200),
    ("accept 0xff on /metrics", "GET", "/metrics", [(b"Accept", b"text/plain;version=\xff")], b"", 200),
    ("x-request-id 0xff", "GET", "/api/health", [(b"X-Request-ID", b"abc\xff\xfe")], b"", 200),
    ("traceparent 0xff", "GET", "/api/reviews", [b"KEY", (b"traceparent", b"00-\xff" + b"0" * 50)], b"", 200),
    ("tracestate 0xff", "GET", "/api/health", [(b"tracestate", b"a=\xff")], b"", 200),
    ("host 0xff", "GET", "/api/health", [(b"Host", b"\xff\xfe:80")], b"", 200),
    ("cookie 0xff", "GET", "/api/reviews", [b"KEY", (b"Cookie", b"session=\xff; x")], b"", 200),
    ("user-agent 0xff", "GET", "/api/health", [(b"User-Agent", b"\xff\xfe")], b"", 200),
    ("NUL in a header value", "GET", "/api/reviews", [b"KEY", (b"X-Request-ID", b"a\x00b")], b"", 400),
    ("0xff in a header name", "GET", "/api/health", [(b"X-\xff", b"1")], b"", 400),
    ("0xff in the path", "GET", "/api/reviews/\xff", [b"KEY"], b"", None),
]


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "expected"),
    [case[1:] for case in HOSTILE_HEADERS],
    ids=[case[0] for case in HOSTILE_HEADERS],
)
async def test_undecodable_header_bytes_are_never_5xx(
    serve: Serve,
    api_keys: Keys,
    method: str,
    path: str,
    headers: list[tuple[bytes, bytes] | bytes],
    body: bytes,
    expected: int | None,
) -> None:
    """Raw bytes that are not UTF-8 (or not allowed at all) in each header the service
    reads get a 2xx-4xx answer — the status the header deserves — and never a 5xx."""
    listening = await serve()
    real = [bearer(api_keys.admin) if h == b"KEY" else h for h in headers]
    reply = await exchange(listening.port, request(method, path, real, body))  # type: ignore[arg-type]
    assert reply.status < 500, (reply.status, reply.body[:300])
    if expected is not None:
        assert reply.status == expected, (reply.status, reply.body[:300])
    if reply.status >= 400:
        problem = reply.problem()  # problem+json, even when aiohttp's parser refused it
        if reply.status == 401:
            assert problem["type"] == PROBLEM_BASE + "unauthenticated"
    # The service is unharmed.
    assert (await exchange(listening.port, request("GET", "/api/health", []))).status == 200


@pytest.mark.parametrize(
    ("name", "headers"),
    [
        ("two equal Content-Length", [JSON, (b"Content-Length", b"2"), (b"Content-Length", b"2")]),
        ("two different Content-Length", [JSON, (b"Content-Length", b"2"), (b"Content-Length", b"3")]),
        ("Content-Length and chunked", [JSON, (b"Content-Length", b"2"), (b"Transfer-Encoding", b"chunked")]),
        ("two Content-Type", [JSON, (b"Content-Type", b"text/plain"), (b"Content-Length", b"2")]),
        ("two Authorization, the valid one first", [JSON, (b"Content-Length", b"2"),
                                                    (b"Authorization", b"Bearer nope")]),
        ("two Authorization, the valid one last", [(b"Authorization", b"Bearer nope"), JSON,
                                                   (b"Content-Length", b"2")]),
        ("two Host", [(b"Host", b"a"), JSON, (b"Content-Length", b"2"), (b"Host", b"b")]),
    ],
)
async def test_duplicate_headers_are_4xx(
    serve: Serve, api_keys: Keys, database_url: str, name: str, headers: list[tuple[bytes, bytes]]
) -> None:
    """A request with a singleton header twice (Content-Length, Content-Type,
    Authorization, Host) or both Content-Length and chunked is refused with a 4xx
    (never a 5xx, never served as if one copy did not exist) and stores nothing."""
    listening = await serve()
    with_key = [bearer(api_keys.admin), *headers]
    for path in ("/api/apv/validate", "/api/reviews"):
        reply = await exchange(listening.port, request("POST", path, with_key, b"{}"))
        assert 400 <= reply.status < 500, (reply.status, reply.body[:300])
        reply.problem()
    assert await sql(database_url, "SELECT count(*) FROM reviews") == [(0,)]


async def test_unparsable_request_is_a_problem_that_does_not_echo_the_key(
    serve: Serve, api_keys: Keys, capfd: pytest.CaptureFixture[str]
) -> None:
    """A valid key followed by a control byte makes aiohttp's parser refuse the request:
    the answer is a 400 malformed-request problem that closes the connection, and
    neither it nor the logs repeat the key."""
    listening = await serve()
    raw = request("GET", "/api/reviews", [(b"Authorization", b"Bearer " + api_keys.admin.encode() + b"\x01")])
    reply = await exchange(listening.port, raw)
    assert reply.status == 400 and reply.header("connection") == "close"
    problem = reply.problem()
    assert problem["type"] == PROBLEM_BASE + "malformed-request"
    assert problem["title"] == "Bad Request"
    assert api_keys.admin not in reply.body.decode()
    logged = "".join(capfd.readouterr())
    assert "http_request_unparsable" in logged  # the line is there, and says no more
    assert api_keys.admin not in logged
    assert (await scraped(listening)).value("hitl_http_requests_unparsable_total") == 1


async def test_declared_oversized_body_is_413_at_once_without_reading_it(
    serve: Serve, api_keys: Keys, database_url: str
) -> None:
    """A declared Content-Length of 10 GB is answered 413 problem+json within 0.5 s,
    before a byte of the body is sent, with Connection: close; the server closes the
    connection within its linger time; nothing is stored."""
    listening = await serve()
    reader, writer = await asyncio.open_connection("127.0.0.1", listening.port)
    try:
        started = time.monotonic()
        headers = [bearer(api_keys.producer), JSON, (b"Content-Length", b"10000000000")]
        writer.write(request("POST", "/api/reviews", headers))
        reply = await asyncio.wait_for(read_reply(reader), 0.5)
        elapsed = time.monotonic() - started
        assert reply.status == 413 and elapsed < 0.5
        problem = reply.problem()
        assert problem["type"] == PROBLEM_BASE + "body-too-large"
        assert "10000000000" in str(problem["detail"])
        assert reply.header("connection") == "close"
        assert await closed_within(reader, LINGER_SECONDS + 1) <= LINGER_SECONDS + 1
    finally:
        await close(writer)
    assert await sql(database_url, "SELECT count(*) FROM reviews") == [(0,)]


async def test_declared_length_over_a_configured_limit_is_413_before_reading(
    serve: Serve, api_keys: Keys
) -> None:
    """With max_body_bytes=2048 a declared 2049-byte body is refused at once, though the
    client has sent only its headers."""
    listening = await serve(max_body_bytes=2048)
    headers = [bearer(api_keys.admin), JSON, (b"Content-Length", b"2049")]
    started = time.monotonic()
    reply = await exchange(listening.port, request("POST", "/api/apv/validate", headers), timeout=0.5)
    assert reply.status == 413 and time.monotonic() - started < 0.5
    assert reply.problem()["type"] == PROBLEM_BASE + "body-too-large"


async def test_body_never_sent_is_408_at_the_deadline(
    serve: Serve, api_keys: Keys, database_url: str
) -> None:
    """Content-Length: 100000 and one byte of body, then silence: a 408 problem at the
    body read deadline (0.5 s here), Connection: close, the connection closed after."""
    listening = await serve()
    reader, writer = await asyncio.open_connection("127.0.0.1", listening.port)
    try:
        started = time.monotonic()
        headers = [bearer(api_keys.producer), JSON, (b"Content-Length", b"100000")]
        writer.write(request("POST", "/api/reviews", headers, b"{"))
        reply = await asyncio.wait_for(read_reply(reader), BODY_DEADLINE + 1.0)
        elapsed = time.monotonic() - started
        assert reply.status == 408, reply.body
        assert BODY_DEADLINE * 0.9 <= elapsed <= BODY_DEADLINE + 1.0
        problem = reply.problem()
        assert problem["type"] == PROBLEM_BASE + "body-read-timeout"
        assert problem["title"] == "Request Timeout"
        assert reply.header("connection") == "close"
        assert await closed_within(reader, LINGER_SECONDS + 1) <= LINGER_SECONDS + 1
    finally:
        await close(writer)
    assert await sql(database_url, "SELECT count(*) FROM reviews") == [(0,)]


async def test_trickled_body_is_408_at_the_deadline(serve: Serve, api_keys: Keys) -> None:
    """A body sent one byte every 50 ms keeps arriving, yet the deadline is for the
    whole body: 408 at ~0.5 s, and the server stops reading and closes."""
    listening = await serve()
    reader, writer = await asyncio.open_connection("127.0.0.1", listening.port)

    async def trickle() -> None:
        for byte in BODY:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.05)

    sender = asyncio.create_task(trickle())
    try:
        started = time.monotonic()
        headers = [bearer(api_keys.producer), JSON, length(BODY)]
        writer.write(request("POST", "/api/reviews", headers))
        reply = await asyncio.wait_for(read_reply(reader), BODY_DEADLINE + 1.0)
        assert reply.status == 408
        assert BODY_DEADLINE * 0.9 <= time.monotonic() - started <= BODY_DEADLINE + 1.0
        assert reply.header("connection") == "close"
        assert await closed_within(reader, LINGER_SECONDS + 1) <= LINGER_SECONDS + 1
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        await close(writer)


async def test_slow_headers_are_cut_at_the_keepalive_timeout(serve: Serve) -> None:
    """Headers trickled a byte every 50 ms never complete: the connection is closed at
    the keep-alive timeout (1 s here), though bytes keep arriving."""
    listening = await serve()
    reader, writer = await asyncio.open_connection("127.0.0.1", listening.port)

    async def trickle() -> None:
        writer.write(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        for byte in b"X-Slow: " + b"a" * 500:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.05)

    sender = asyncio.create_task(trickle())
    try:
        elapsed = await closed_within(reader, KEEPALIVE + 1.5)
        assert KEEPALIVE * 0.9 <= elapsed <= KEEPALIVE + 1.5
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        await close(writer)


async def test_idle_keepalive_connection_is_closed(serve: Serve) -> None:
    """Two requests share a kept-alive connection; left idle, it is closed at the
    keep-alive timeout; and a connection that never sends anything is too."""
    listening = await serve()
    silent_reader, silent_writer = await asyncio.open_connection("127.0.0.1", listening.port)
    reader, writer = await asyncio.open_connection("127.0.0.1", listening.port)
    try:
        for _ in range(2):
            writer.write(request("GET", "/api/health", []))
            reply = await asyncio.wait_for(read_reply(reader), 2)
            assert reply.status == 200 and reply.header("connection") is None
        elapsed = await closed_within(reader, KEEPALIVE + 1.5)
        assert KEEPALIVE * 0.9 <= elapsed <= KEEPALIVE + 1.5
        assert await closed_within(silent_reader, 1.5) < 1.5
    finally:
        await close(writer)
        await close(silent_writer)


async def test_connections_over_the_cap_get_503_and_are_closed(serve: Serve) -> None:
    """With max_connections=6, six idle connections fill the server: the seventh gets a
    503 problem (Retry-After, Connection: close) at once and is closed; once one of the
    six leaves, a new connection is served."""
    listening = await serve(max_connections=6, keepalive_timeout_seconds=10.0)
    held = [await asyncio.open_connection("127.0.0.1", listening.port) for _ in range(6)]
    try:
        await _until(lambda: listening.limiter.open == 6)
        reader, writer = await asyncio.open_connection("127.0.0.1", listening.port)
        started = time.monotonic()
        reply = await asyncio.wait_for(read_reply(reader), 1.0)
        assert time.monotonic() - started < 1.0
        assert reply.status == 503
        assert reply.problem()["type"] == PROBLEM_BASE + "too-many-connections"
        assert reply.header("retry-after") == "1" and reply.header("connection") == "close"
        assert await closed_within(reader, 1.0) < 1.0
        await close(writer)
        # The held connections still work, and tell the operator.
        held_reader, held_writer = held[0]
        held_writer.write(request("GET", "/metrics", []))
        metrics = await asyncio.wait_for(read_reply(held_reader), 2)
        assert metrics.status == 200
        exposition = parse_exposition(metrics.body.decode())
        assert exposition.value("hitl_http_connections_refused_total", cap="total") == 1
        assert exposition.value("hitl_http_connections_open") == 6
        # One leaves: room for one more.
        await close(held_writer)
        held.pop(0)
        await _until(lambda: listening.limiter.open == 5)
        assert (await exchange(listening.port, request("GET", "/api/health", []))).status == 200
    finally:
        for _, w in held:
            await close(w)


async def test_connections_per_client_are_capped_per_address(serve: Serve) -> None:
    """With max_connections_per_client=3, a fourth connection from 127.0.0.1 is refused
    with a 503 while a client at 127.0.0.2 is still served."""
    listening = await serve(max_connections_per_client=3, keepalive_timeout_seconds=10.0)
    held = [await asyncio.open_connection("127.0.0.1", listening.port) for _ in range(3)]
    try:
        await _until(lambda: listening.limiter.open == 3)
        reply = await exchange(listening.port, request("GET", "/api/health", []), timeout=1.0)
        assert reply.status == 503
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", listening.port, local_addr=("127.0.0.2", 0)
        )
        writer.write(request("GET", "/api/health", []))
        assert (await asyncio.wait_for(read_reply(reader), 2)).status == 200
        await close(writer)
        exposition = await scraped(listening, client="127.0.0.3")
        assert exposition.value("hitl_http_connections_refused_total", cap="per_client") == 1
    finally:
        for _, w in held:
            await close(w)


async def scraped(listening: Listening, client: str = "127.0.0.1") -> Exposition:
    """/metrics, from a fresh connection from ``client``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", listening.port, local_addr=(client, 0))
    try:
        writer.write(request("GET", "/metrics", []))
        reply = await asyncio.wait_for(read_reply(reader), 2)
        assert reply.status == 200
        return parse_exposition(reply.body.decode())
    finally:
        await close(writer)


async def _until(condition: Callable[[], bool], seconds: float = 2.0) -> None:
    async with asyncio.timeout(seconds):
        while not condition():  # noqa: ASYNC110 - polls the limiter's count, which has no event
            await asyncio.sleep(0.01)
