"""SIGTERM under load: the real server (`python -m service serve`) as a subprocess,
ten keep-alive clients writing, then SIGTERM.

Bounds asserted (HITL_SHUTDOWN_DRAIN_SECONDS=1.5, HITL_SHUTDOWN_GRACE_SECONDS=3 here;
defaults 5 and 10):
- readiness answers 503 {"status": "draining"} within 0.5 s of the signal;
- 0 requests reset, refused or answered 5xx among those sent from before the signal
  until 0.25 s before the drain ends (the last 0.25 s is the margin for a request to
  reach the server before its listener closes); responses in the drain say
  `Connection: close`;
- every write answered 201 is in PostgreSQL;
- an upload still arriving when the listener closes is finished and stored;
- after the drain a new connection is refused at once (never left hanging);
- the process exits 0 within drain + grace + 2 s, and logs shutdown_draining,
  shutdown_listener_closed, shutdown_in_flight_finished, shutdown_exited in order;
- a request that outlives the grace is cancelled and the exit still comes within
  drain + grace + STRAGGLER_SECONDS + 2 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from service.server import STRAGGLER_SECONDS
from tests.conftest import RUN_ID, Keys, free_port, serve_environment, wait_until_ready
from tests.service.helpers import sql, submission

REPO = Path(__file__).resolve().parents[2]
DRAIN = 1.5
GRACE = 3.0
MARGIN = 0.25
CLIENTS = 10
READY_BOUND = 0.5


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def events(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                lines.append(json.loads(line))
        return [e for e in lines if isinstance(e, dict)]


@pytest.fixture
def start_server(
    database_url: str, api_keys: Keys, clean_state: None, tmp_path: Path
) -> Iterator[Any]:
    """Start `python -m service serve` against this run's database; killed at teardown
    if a test left it running."""
    started: list[Server] = []

    def start(**env: str) -> Server:
        port = free_port()
        log = tmp_path / f"serve-{port}.log"
        environ = serve_environment(
            **{
                "HITL_DATABASE_URL": database_url,
                "HITL_REDIS_KEY_PREFIX": f"hitl-test:{RUN_ID}:",
                "HITL_API_KEYS_FILE": str(api_keys.file),
                "HITL_PORT": str(port),
                "HITL_DB_POOL_MAX": "10",
                "HITL_SHUTDOWN_DRAIN_SECONDS": str(DRAIN),
                "HITL_SHUTDOWN_GRACE_SECONDS": str(GRACE),
                **env,  # the test's own settings win
            }
        )
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "service", "serve"],
                env=environ, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
            )
        server = Server(process, port, log)
        started.append(server)
        wait_until_ready(f"{server.url}/api/health/ready", process, log, 20)
        return server

    yield start
    for server in started:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait(timeout=10)


@dataclass
class Outcome:
    sent_at: float
    status: int | None = None
    error: str | None = None
    review_id: str | None = None
    connection: str | None = None


@dataclass
class Load:
    outcomes: list[Outcome] = field(default_factory=list)
    stop_at: float = float("inf")


async def client(server: Server, headers: dict[str, str], load: Load) -> None:
    """One keep-alive client: one connection at a time, POSTs back to back."""
    connector = aiohttp.TCPConnector(limit=1, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        while time.monotonic() < load.stop_at:
            outcome = Outcome(time.monotonic())
            load.outcomes.append(outcome)
            try:
                async with session.post(
                    f"{server.url}/api/reviews", json=submission(), headers=headers,
                    timeout=aiohttp.ClientTimeout(total=5),
                ) as resp:
                    outcome.status = resp.status
                    outcome.connection = resp.headers.get("Connection")
                    body = await resp.json(content_type=None)
                    outcome.review_id = body.get("id") if resp.status == 201 else None
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                outcome.error = type(exc).__name__
            await asyncio.sleep(0.01)


async def first_draining(server: Server, since: float) -> float:
    """Seconds from ``since`` until readiness first answers 503 draining."""
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(f"{server.url}/api/health/ready") as resp:
                if resp.status == 503 and (await resp.json())["status"] == "draining":
                    return time.monotonic() - since
            await asyncio.sleep(0.01)


async def slow_upload(server: Server, headers: dict[str, str], pause: float) -> tuple[int, str, str]:
    """POST a submission in two halves ``pause`` seconds apart; (status, Connection
    header, review id)."""
    body = json.dumps(submission()).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        head = (
            f"POST /api/reviews HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: {headers['Authorization']}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        writer.write(head + body[: len(body) // 2])
        await writer.drain()
        await asyncio.sleep(pause)
        writer.write(body[len(body) // 2 :])
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), GRACE + 2)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    head_text, _, payload = raw.partition(b"\r\n\r\n")
    lines = head_text.decode().split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines[1:])
    review = json.loads(payload) if payload else {}
    return int(lines[0].split()[1]), fields.get("Connection", ""), review.get("id", "")


async def test_sigterm_under_keepalive_load_drops_nothing(
    start_server: Any, api_keys: Keys, database_url: str
) -> None:
    """Ten keep-alive clients write while SIGTERM arrives: readiness turns 503 at once,
    every request sent during the drain (up to its last 0.25 s) is answered 201 with
    Connection: close, an upload spanning the listener's close completes, every 201 is
    in PostgreSQL, a late connection is refused at once, and the process exits 0
    within the bound, logging each phase."""
    server = start_server()
    headers = api_keys.auth("producer")
    load = Load()
    clients = [asyncio.create_task(client(server, headers, load)) for _ in range(CLIENTS)]
    await asyncio.sleep(1.0)  # every client holds a kept-alive connection by now
    assert any(o.status == 201 for o in load.outcomes)

    signalled = time.monotonic()
    load.stop_at = signalled + DRAIN - MARGIN
    server.process.send_signal(signal.SIGTERM)
    ready_after = asyncio.create_task(first_draining(server, signalled))
    # Sent 0.3 s before the listener closes; its second half arrives 0.5 s after.
    await asyncio.sleep(DRAIN - 0.3)
    upload = asyncio.create_task(slow_upload(server, headers, pause=0.8))
    await asyncio.gather(*clients)
    assert await asyncio.wait_for(ready_after, READY_BOUND + 1) <= READY_BOUND

    # After the drain: refused at once, never hanging.
    await asyncio.sleep(max(0.0, signalled + DRAIN + 0.2 - time.monotonic()))
    started = time.monotonic()
    with pytest.raises(OSError):
        await asyncio.wait_for(asyncio.open_connection("127.0.0.1", server.port), 1.0)
    assert time.monotonic() - started < 1.0

    status, connection, upload_id = await upload
    assert (status, connection) == (201, "close")

    exit_code = await asyncio.to_thread(server.process.wait, DRAIN + GRACE + 2)
    exited_after = time.monotonic() - signalled
    assert exit_code == 0
    assert exited_after <= DRAIN + GRACE + 2

    during = [o for o in load.outcomes if o.sent_at >= signalled]
    failed = [o for o in load.outcomes if o.status != 201]
    assert len(during) >= CLIENTS, "the clients kept sending during the drain"
    assert failed == [], failed[:5]
    assert all(o.connection == "close" for o in during if o.sent_at > signalled + 0.1)

    acknowledged = [o.review_id for o in load.outcomes] + [upload_id]
    stored = await sql(
        database_url, "SELECT count(*) FROM reviews WHERE id = ANY(%s::uuid[])", (acknowledged,)
    )
    assert stored == [(len(acknowledged),)]

    events = [e["event"] for e in server.events() if str(e.get("event", "")).startswith("shutdown_")]
    assert events == [
        "shutdown_draining",
        "shutdown_listener_closed",
        "shutdown_in_flight_finished",
        "shutdown_exited",
    ]
    by_event = {e["event"]: e for e in server.events()}
    assert by_event["shutdown_draining"]["signal"] == "SIGTERM"
    assert by_event["shutdown_in_flight_finished"]["all_finished"] is True


async def test_request_outliving_the_grace_is_cut_and_exit_is_bounded(
    start_server: Any, api_keys: Keys
) -> None:
    """A body that never arrives (its read deadline 30 s) is still in a handler when the
    grace ends: it is cancelled and the process exits within drain + grace +
    STRAGGLER_SECONDS + 2 s, logging all_finished=false."""
    server = start_server(
        HITL_SHUTDOWN_DRAIN_SECONDS="0.3",
        HITL_SHUTDOWN_GRACE_SECONDS="1",
        HITL_BODY_READ_TIMEOUT_SECONDS="30",
    )
    _, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(
            b"POST /api/reviews HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: "
            + api_keys.auth("producer")["Authorization"].encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
        )
        await writer.drain()
        await asyncio.sleep(0.3)
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        exit_code = await asyncio.to_thread(server.process.wait, 0.3 + 1 + STRAGGLER_SECONDS + 2)
        assert exit_code == 0
        assert time.monotonic() - signalled <= 0.3 + 1 + STRAGGLER_SECONDS + 2
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    finished = [e for e in server.events() if e.get("event") == "shutdown_in_flight_finished"]
    assert finished and finished[0]["all_finished"] is False
    assert finished[0]["still_running"] == 1
    assert [e for e in server.events() if e.get("event") == "shutdown_exited"]


async def test_second_signal_cuts_the_drain_short(start_server: Any) -> None:
    """A second SIGTERM during a long drain (30 s) closes the listener at once: the
    process exits within 3 s of it."""
    server = start_server(HITL_SHUTDOWN_DRAIN_SECONDS="30")
    server.process.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.3)
    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(server.process.wait, 5) == 0
    assert time.monotonic() - signalled <= 3
    events = [e.get("event") for e in server.events()]
    assert "shutdown_drain_cut_short" in events and "shutdown_exited" in events
