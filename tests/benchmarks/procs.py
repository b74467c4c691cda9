"""Child processes of the harness: each in its own process group, all stopped on exit.

Every server, load generator and profiler runs as a separate process (the issue asks
for it: the load must not share an interpreter, or a GIL, with what it measures).
Each gets its own session, so Ctrl-C reaches only the harness, which then stops them
itself; a ``finally`` stops every group still alive, on success, failure or signal.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import IO

PYTHON = sys.executable
# Children run `python -m tests.benchmarks...` and the service from the checkout.
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Until something accepts on 127.0.0.1:port. A TCP connect, not a request: a
    request would be traced and logged, and counted among the spans of the run."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def wait_for_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Until ``url`` answers 200 (for servers with a real readiness probe)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before ready")
        with (
            contextlib.suppress(OSError, urllib.error.URLError),
            urllib.request.urlopen(url, timeout=1) as answer,
        ):
            if answer.status == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout}s")


def http_get_json(url: str, timeout: float = 5.0) -> object:
    import json

    with urllib.request.urlopen(url, timeout=timeout) as answer:
        return json.loads(answer.read())


class Processes:
    """Starts children in their own process groups and stops whatever is left.

    ``source``: the checkout the children import ``service``, ``telemetry`` and these
    benchmarks from (their working directory, and first on PYTHONPATH, ahead of the
    venv's editable install); by default this one.
    """

    def __init__(self, source: Path = ROOT) -> None:
        self.source = source
        self._live: list[subprocess.Popen[bytes]] = []

    def _env(self, env: Mapping[str, str] | None) -> dict[str, str]:
        merged = dict(os.environ if env is None else env)
        if self.source != ROOT:
            merged["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(self.source), merged.get("PYTHONPATH", "")) if p
            )
        return merged

    def start(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        stdout: IO[bytes] | int | None = subprocess.DEVNULL,
        stderr: IO[bytes] | int | None = None,
        cpus: str | None = None,
    ) -> subprocess.Popen[bytes]:
        """``cpus``: a taskset CPU list ("0", "1") to pin the process to."""
        command = ["taskset", "-c", cpus, *argv] if cpus else list(argv)
        proc = subprocess.Popen(
            command,
            env=self._env(env),
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            cwd=self.source,
            start_new_session=True,  # own group: no stray Ctrl-C, and killpg reaches all
        )
        self._live.append(proc)
        return proc

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        env: Mapping[str, str] | None = None,
        cpus: str | None = None,
    ) -> str:
        """Run to completion and return stdout; raise when it fails or overruns."""
        proc = self.start(argv, env=env, stdout=subprocess.PIPE, cpus=cpus)
        try:
            out, _ = proc.communicate(timeout=timeout)
        finally:
            self.stop(proc)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited with {proc.returncode}")
        return out.decode()

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int | None:
        """SIGTERM to the group (servers flush their spans on the way out), then SIGKILL."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        if proc in self._live:
            self._live.remove(proc)
        return proc.returncode

    def stop_all(self) -> None:
        for proc in reversed(list(self._live)):
            self.stop(proc, timeout=5.0)


@contextlib.contextmanager
def managed(source: Path = ROOT) -> Iterator[Processes]:
    """A ``Processes`` whose children are stopped however the block ends.

    SIGTERM (and SIGHUP) become SystemExit so ``finally`` blocks run for them too,
    as they do for Ctrl-C's KeyboardInterrupt.
    """

    def exit_on(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, exit_on) for sig in (signal.SIGTERM, signal.SIGHUP)}
    procs = Processes(source)
    try:
        yield procs
    finally:
        procs.stop_all()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS (KiB), and the number of open file descriptors, of a live process."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return {"rss_kib": rss, "fds": len(os.listdir(f"/proc/{pid}/fd"))}


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process (all its threads) so far."""
    # Fields after the parenthesised command name, which may itself contain spaces.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def steal_ticks() -> tuple[int, int]:
    """(steal, total) CPU ticks of the machine so far: on a shared VM, the time the
    hypervisor gave our CPUs to someone else shows up as steal."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return values[7], sum(values[:8])


def steal_percent(before: tuple[int, int], after: tuple[int, int]) -> float:
    total = after[1] - before[1]
    return 100 * (after[0] - before[0]) / total if total else 0.0
