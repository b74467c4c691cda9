"""The wheel, installed without extras the way a new user (and the Dockerfile) does, serves.

Builds the wheel from the files the Dockerfile copies, then installs it into fresh
virtualenvs, concurrently:

* ``debian-pip``: ``/usr/bin/python3 -m venv``, whose pip is the one Debian ships
  (23.0.1 on Debian 12, from python3-pip-whl; ops/local/install-tools.sh installs
  python3-venv), resolving from the index;
* ``newest-pip``: a venv upgraded to the newest pip, resolving from the index;
* ``lock``: the Dockerfile's steps: the lock file with ``--require-hashes``, the wheel
  with ``--no-deps``, then ``pip check``.

In each it runs ``hitl-api --help``, imports every module, runs ``hitl-api createdb``
and ``migrate`` against a throwaway database on the shared PostgreSQL and ``hitl-api
serve`` until ``/api/health/ready`` answers 200, fetches the console's sign-in page
and static files (package data), then stops it with SIGTERM as
``docker stop`` would. Installs need the package index (PyPI); the machine's pip
configuration files (local indexes, constraints) are ignored, so pip sees what a
user's pip would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from service.storage.migrate import drop_database
from tests.conftest import PG_BASE, REDIS_URL, RUN_ID, free_port

from .requirements import LOCK, ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

DEBIAN_PYTHON = "/usr/bin/python3"
# What the Dockerfile's build stage copies.
SOURCES = ("setup.cfg", "pyproject.toml", "README.md", "service", "telemetry")
INSTALL_TIMEOUT_S = 300.0
READY_TIMEOUT_S = 45.0
# Environment a pip of the user's may keep (TLS trust, proxy, a chosen index); every
# other PIP_* (find-links, extra indexes, constraints) is this machine's, not a user's.
PIP_VARS_KEPT = {
    "PIP_CERT", "PIP_CLIENT_CERT", "PIP_DEFAULT_TIMEOUT", "PIP_DISABLE_PIP_VERSION_CHECK",
    "PIP_INDEX_URL", "PIP_PROXY", "PIP_RETRIES", "PIP_TRUSTED_HOST",
}


def user_env(**extra: str) -> dict[str, str]:
    """The environment of a user outside the development virtualenv."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key in PIP_VARS_KEPT
        or not key.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV", "HITL_", "OTEL_", "UV_"))
    }
    env["PIP_CONFIG_FILE"] = os.devnull  # no config file at all: pip's defaults
    env.update(extra)
    return env


@dataclass
class Venv:
    name: str
    path: Path
    log: list[str] = field(default_factory=list)
    error: str | None = None
    pip_version: str = "?"

    @property
    def bin(self) -> Path:
        return self.path / "bin"

    def run(self, argv: list[str], *, timeout: float, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        started = time.monotonic()
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env=env or user_env(),
            cwd=cwd or self.path.parent, check=False,
        )
        self.log.append(
            f"$ {' '.join(argv)}  # exit {result.returncode} after {time.monotonic() - started:.1f}s\n"
            f"{result.stdout[-3000:]}{result.stderr[-6000:]}"
        )
        return result

    def step(self, argv: list[str], *, timeout: float = INSTALL_TIMEOUT_S) -> str:
        result = self.run(argv, timeout=timeout)
        if result.returncode != 0:
            raise StepFailed(argv)
        return result.stdout

    def report(self) -> str:
        return f"[{self.name}] " + "\n".join(self.log)


class StepFailed(Exception):
    pass


def debian_pip_version() -> str:
    """The version of the pip wheel Debian bundles for ``python3 -m venv``."""
    result = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "python3-pip-whl"],
                            capture_output=True, text=True, check=True)
    return result.stdout.split("+")[0].split("-")[0]  # 23.0.1+dfsg-1 -> 23.0.1


def debian_python_missing() -> str | None:
    """Why /usr/bin/python3 cannot make a venv with Debian's pip, or None when it can."""
    if Path(DEBIAN_PYTHON).exists():
        probe = subprocess.run([DEBIAN_PYTHON, "-c", "import ensurepip, venv"], capture_output=True,
                               check=False)
        if probe.returncode == 0:
            return None
    return (f"{DEBIAN_PYTHON} with venv/ensurepip is not installed "
            "(make test installs python3-venv via ops/local/install-tools.sh)")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """hitl's wheel, built (with build isolation, as the Dockerfile's `pip wheel .`)
    from a copy of the files the Dockerfile copies, so the work tree stays clean."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "--wheel-dir",
         str(work / "dist"), str(source)],
        capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, env=user_env(), cwd=work, check=False,
    )
    assert result.returncode == 0, f"building the wheel failed:\n{result.stdout}{result.stderr}"
    (built,) = (work / "dist").glob("hitl-*.whl")
    return built


def _install(venv: Venv, python: str, wheel: Path) -> Venv:
    pip = [str(venv.bin / "python"), "-m", "pip"]
    try:
        venv.step([python, "-m", "venv", str(venv.path)], timeout=120)
        if venv.name != "debian-pip":
            venv.step([*pip, "install", "--no-cache-dir", "--upgrade", "pip"])
        venv.pip_version = venv.step([*pip, "--version"]).split()[1]
        if venv.name == "lock":  # the Dockerfile's RUN, step by step
            venv.step([*pip, "install", "--no-cache-dir", "--require-hashes", "--no-deps", "-r", str(LOCK)])
            venv.step([*pip, "install", "--no-cache-dir", "--no-deps", str(wheel)])
        else:  # no extras: what `pip install hitl` would give a user
            venv.step([*pip, "install", "--no-cache-dir", str(wheel)])
        venv.step([*pip, "check"])
    except (StepFailed, subprocess.TimeoutExpired) as exc:
        venv.error = f"{type(exc).__name__}: {exc}"
    venv.path.with_suffix(".log").write_text(venv.report())  # kept beside the venv for a look
    return venv


@pytest.fixture(scope="module")
def venvs(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Venv]:
    """The three installs, run side by side (they mostly wait on the network)."""
    base = tmp_path_factory.mktemp("venvs")
    pythons = {"newest-pip": sys.executable, "lock": sys.executable}
    if debian_python_missing() is None:
        pythons["debian-pip"] = DEBIAN_PYTHON
    with ThreadPoolExecutor(max_workers=len(pythons)) as pool:
        futures = [pool.submit(_install, Venv(name, base / name), python, wheel)
                   for name, python in pythons.items()]
        return {venv.name: venv for venv in (f.result() for f in futures)}


@pytest.fixture
def throwaway_database(request: pytest.FixtureRequest) -> Iterator[str]:
    """A throwaway database name, created by `hitl-api createdb`; dropped at the end."""
    name = request.node.callspec.id.replace("-", "_")
    url = f"{PG_BASE}/hitl_pkg_{RUN_ID}_{name}"
    yield url
    asyncio.run(drop_database(url))


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    prefix = f"hitl-test:{RUN_ID}:pkg:"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def _wait_ready(url: str, process: subprocess.Popen[str], timeout: float) -> tuple[int, str]:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return -1, f"hitl-api serve exited {process.returncode}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # loopback only
                return int(response.status), response.read().decode()
        except urllib.error.HTTPError as exc:  # 503 while a store is not yet reachable
            last = f"{exc.code} {exc.read().decode(errors='replace')}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.2)
    return 0, f"not ready after {timeout}s: {last}"


@pytest.mark.parametrize("flavour", ["debian-pip", "newest-pip", "lock"])
def test_installed_wheel_migrates_and_serves(
    flavour: str, venvs: dict[str, Venv], throwaway_database: str, redis_prefix: str, tmp_path: Path
) -> None:
    if flavour == "debian-pip" and (missing := debian_python_missing()):
        if os.environ.get("CI") == "true":  # CI installs it: missing there is a failure
            pytest.fail(missing)
        pytest.skip(missing)
    venv = venvs[flavour]
    assert venv.error is None, f"install failed: {venv.error}\n{venv.report()}"
    if flavour == "debian-pip":  # really the old pip, not an upgraded one
        assert venv.pip_version == debian_pip_version(), venv.report()
    hitl_api = str(venv.bin / "hitl-api")
    closed_port = free_port()  # nothing listens: spans are exported nowhere, quietly
    env = user_env(
        HITL_DATABASE_URL=throwaway_database,
        HITL_REDIS_URL=REDIS_URL,
        HITL_REDIS_KEY_PREFIX=redis_prefix,
        HITL_API_KEYS_FILE=str(tmp_path / "api-keys.json"),
        HITL_HOST="127.0.0.1",
        HITL_PORT=str(free_port()),
        HITL_LOG_FORMAT="json",
        HITL_DB_CONNECT_DEADLINE_SECONDS="10",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{closed_port}",
    )

    def check(argv: list[str], expect: str) -> None:
        result = venv.run(argv, timeout=60, env=env, cwd=tmp_path)
        assert result.returncode == 0 and expect in result.stdout + result.stderr, venv.report()

    check([hitl_api, "--help"], "serve")
    # Every module, so an import that only some code path reaches still has its package.
    check([str(venv.bin / "python"), "-c",
           "import importlib, pkgutil, service, telemetry\n"
           "for p in (service, telemetry):\n"
           "    for m in pkgutil.walk_packages(p.__path__, p.__name__ + '.'):\n"
           "        importlib.import_module(m.name)\n"
           "print('imported all', service.__file__)"],
          f"imported all {venv.path}")
    check([hitl_api, "createdb"], "created database")
    check([hitl_api, "migrate"], "applied migrations")

    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        process = subprocess.Popen([hitl_api, "serve"], stdout=log, stderr=subprocess.STDOUT, text=True,
                                   env=env, cwd=tmp_path, start_new_session=True)
    try:
        status, body = _wait_ready(f"http://127.0.0.1:{env['HITL_PORT']}/api/health/ready", process,
                                   READY_TIMEOUT_S)
        assert status == 200, f"{body}\n{log_path.read_text()[-4000:]}\n{venv.report()}"
        assert '"ready"' in body or '"ok"' in body, body
        # The console's templates and static files are package data: the installed
        # wheel, not the work tree, serves them.
        base = f"http://127.0.0.1:{env['HITL_PORT']}/console"
        for path, expect in (
            ("/sign-in", 'id="sign-in-form"'),
            ("/static/console.css", "table.diff"),
            ("/static/console.js", "keydown"),
        ):
            with urllib.request.urlopen(base + path, timeout=5) as response:  # loopback only
                served = response.read().decode()
            assert response.status == 200 and expect in served, (path, served[:500])
        process.terminate()  # SIGTERM, as `docker stop` sends
        returncode = process.wait(timeout=20)
        assert returncode == 0, f"exit {returncode} on SIGTERM:\n{log_path.read_text()[-4000:]}"
    finally:
        if process.poll() is None:
            process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
