"""Service-only fixtures: app variants, and throwaway Redis / PostgreSQL servers that a
fault test may kill (the shared ones on 6379 / 5432 are never stopped)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from service.app import create_app
from service.config import Settings, telemetry_settings
from tests.conftest import free_port, require_tool
from tests.otlp_receiver import OtlpHttpReceiver

MakeClient = Callable[..., Awaitable[TestClient]]

@pytest.fixture
async def make_client(aiohttp_client, settings: Settings) -> MakeClient:  # type: ignore[no-untyped-def]
    """Build a test client on an app whose settings differ from the test settings."""

    async def make(**changes: object) -> TestClient:
        test_client: TestClient = await aiohttp_client(create_app(settings.with_changes(**changes)))
        return test_client

    return make


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    return free_port()


def _wait_for_port(port: int, deadline_seconds: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listened on port {port} within {deadline_seconds}s")


@dataclass
class ThrowawayRedis:
    port: int
    proc: subprocess.Popen[bytes]
    command: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def pause(self) -> None:
        """SIGSTOP: the kernel still accepts connections, nothing answers (a hung Redis)."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def start(self) -> None:
        """Start a new, empty server on the same port (after ``kill``)."""
        self.proc = subprocess.Popen(
            list(self.command), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _wait_for_port(self.port, 5, self.proc)


@pytest.fixture
def throwaway_redis() -> Iterator[ThrowawayRedis]:
    """A private redis-server on a free port; the test may kill it."""
    binary = require_tool("redis-server")
    port = free_port()
    command = (
        binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"
    )
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = ThrowawayRedis(port, proc, command)
    try:
        _wait_for_port(port, 5, proc)
        yield server
    finally:
        server.kill()


@dataclass
class ThrowawayPostgres:
    port: int
    datadir: Path
    pg_ctl: str
    as_user: str | None
    start_options: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/hitl"

    def _run(self, *args: str) -> None:
        command = [self.pg_ctl, "-D", str(self.datadir), *args]
        if self.as_user:
            command = ["su", self.as_user, "-c", subprocess.list2cmdline(command)]
        subprocess.run(command, check=True, capture_output=True, timeout=15, cwd="/tmp")

    def stop(self) -> None:
        """Stop at once (as a crash would): connections drop, new ones are refused."""
        self._run("stop", "-m", "immediate", "-w")

    def start(self) -> None:
        """Start it again (after ``stop``), waiting until it accepts connections."""
        self._run(*self.start_options)


@pytest.fixture
def throwaway_postgres() -> Iterator[ThrowawayPostgres]:
    """A private PostgreSQL cluster on a free port (initdb + pg_ctl); stopped and
    deleted afterwards."""
    initdb = require_tool("initdb")
    pg_ctl = require_tool("pg_ctl")
    # initdb refuses to run as root: run the server tools as the postgres user then.
    as_user = "postgres" if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="hitl-pg-"))
    datadir = root / "data"
    if as_user:
        shutil.chown(root, user=as_user)
    port = free_port()
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    start = ("start", "-w", "-t", "15", "-o", options, "-l", str(root / "log"))
    server = ThrowawayPostgres(port, datadir, pg_ctl, as_user, start)
    init = [initdb, "-D", str(datadir), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"]
    if as_user:
        init = ["su", as_user, "-c", subprocess.list2cmdline(init)]
    subprocess.run(init, check=True, capture_output=True, timeout=60, cwd="/tmp")
    try:
        server.start()
        yield server
    finally:
        subprocess.run(
            ["su", as_user, "-c", subprocess.list2cmdline([pg_ctl, "-D", str(datadir), "stop", "-m", "immediate"])]
            if as_user
            else [pg_ctl, "-D", str(datadir), "stop", "-m", "immediate"],
            capture_output=True,
            timeout=15,
            cwd="/tmp",
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def receiver() -> Iterator[OtlpHttpReceiver]:
    """An OTLP/HTTP receiver on loopback that decodes what the app exports."""
    with OtlpHttpReceiver() as rx:
        yield rx


def traced(settings: Settings, receiver: OtlpHttpReceiver, **changes: Any) -> Settings:
    """``settings`` exporting every span to ``receiver``, JSON logs."""
    return settings.with_changes(
        telemetry=telemetry_settings(
            service_version="test", log_format="json", otel_env=receiver.otel_env()
        ),
        **changes,
    )
