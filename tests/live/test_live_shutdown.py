"""Live streams and stopping: a stream is a request that never ends by itself, so
shutdown and the SIGTERM drain (service/server.py) must end it, or the in-flight
wait would hold the exit up to its grace."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from service.app import create_app
from service.config import Settings
from service.keys import LIVE_HUB
from tests.conftest import RUN_ID, Keys, free_port, serve_environment

from .conftest import OpenStream, SseStream, live

REPO = Path(__file__).resolve().parents[2]
DRAIN = 1.0
GRACE = 10.0


async def ends_cleanly(stream: SseStream, within: float) -> bool:
    """True if the server ends the stream (the chunked body's end, not a reset)
    within ``within`` seconds."""
    async with asyncio.timeout(within):
        while await stream.response.content.readline():
            pass
    return stream.response.content.at_eof()


async def test_shutdown_ends_every_stream_promptly(
    aiohttp_client: Any, settings: Settings, api_keys: Keys, open_stream: OpenStream
) -> None:
    """Stopping the app (on_shutdown) ends its streams cleanly at once, and the stop
    itself is not held up by them."""
    client: TestClient = await aiohttp_client(create_app(settings))
    await live(client.app)
    streams = [await open_stream(client, api_keys.auth("viewer")) for _ in range(3)]
    for stream in streams:
        assert (await stream.next()).event == "hello"
    assert len(client.app[LIVE_HUB]) == 3

    started = time.monotonic()
    closing = asyncio.create_task(client.server.close())
    for stream in streams:
        assert await ends_cleanly(stream, 2.0)
    await asyncio.wait_for(closing, 5.0)
    assert time.monotonic() - started < 2.0
    assert len(client.app[LIVE_HUB]) == 0


@pytest.fixture
def serve(database_url: str, api_keys: Keys, clean_state: None, tmp_path: Path) -> Iterator[Any]:
    """`python -m service serve` with a 1 s drain and a 10 s grace; killed at teardown."""
    port = free_port()
    log = tmp_path / "serve.log"
    environ = serve_environment(
        HITL_DATABASE_URL=database_url,
        HITL_REDIS_KEY_PREFIX=f"hitl-test:{RUN_ID}:",
        HITL_API_KEYS_FILE=str(api_keys.file),
        HITL_PORT=str(port),
        HITL_SHUTDOWN_DRAIN_SECONDS=str(DRAIN),
        HITL_SHUTDOWN_GRACE_SECONDS=str(GRACE),
    )
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve"],
            env=environ, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{url}/api/health/ready", timeout=1) as resp,  # loopback
            ):
                if resp.status == 200:
                    break
            time.sleep(0.05)
        yield process, url, log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


async def test_sigterm_ends_streams_at_the_drain_start_and_exits_without_the_grace(
    serve: Any, api_keys: Keys
) -> None:
    """SIGTERM with live streams open: each ends (cleanly) within 0.5 s of the signal,
    so the browser reconnects elsewhere while the drain runs; a stream opened during
    the drain is refused 503; the process exits 0 long before drain + grace (11 s),
    having waited for no request."""
    process, url, log = serve
    async with aiohttp.ClientSession() as session:
        streams = []
        for _ in range(2):
            resp = await session.get(f"{url}/console/live", headers=api_keys.auth("viewer"))
            assert resp.status == 200
            stream = SseStream(resp)
            assert (await stream.next(5.0)).event == "hello"
            streams.append(stream)

        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        for stream in streams:
            assert await ends_cleanly(stream, 2.0)
        ended = time.monotonic() - signalled
        resp = await session.get(f"{url}/console/live", headers=api_keys.auth("viewer"))
        assert resp.status == 503
        assert resp.headers.get("Retry-After") == "1"

    code = await asyncio.get_running_loop().run_in_executor(None, process.wait, 10)
    exited = time.monotonic() - signalled
    assert code == 0
    assert ended < 0.5 + 0.5, ended  # the signal's delivery and a loaded machine: +0.5
    assert exited < DRAIN + 3.0, exited
    events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    (finished,) = [e for e in events if e.get("event") == "shutdown_in_flight_finished"]
    assert finished["all_finished"] is True and finished["still_running"] == 0
