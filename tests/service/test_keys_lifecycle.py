"""Key lifecycle: `keys list / revoke / rotate` on the file, and a running service that
follows the file (on change within the reload bound, and on SIGHUP) without restart,
keeping its last good keys when the file goes bad."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from service import keyfile
from service.__main__ import main
from service.auth import ApiKeys, append_key, new_key
from service.config import Settings
from service.domain.errors import Unauthenticated
from tests.conftest import REDIS_URL, RUN_ID, Keys, free_port
from tests.prom import parse_exposition
from tests.service.conftest import MakeClient

# The default poll interval is 1 s; a change must take effect well within this.
RELOAD_BOUND_SECONDS = 3.0
KEY_FIELDS_NEVER_LISTED = ("salt", "sha256")


@pytest.fixture
def keys_file(tmp_path: Path, api_keys: Keys) -> Path:
    """A private copy of the test keys (producer-bot, reviewer-bot, viewer-bot, alice)."""
    path = tmp_path / "keys" / "api-keys.json"
    path.parent.mkdir()
    shutil.copy(api_keys.file, path)
    path.chmod(0o600)
    return path


Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def cli(
    keys_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Cli:
    """Run `hitl-api <args>` in this process against ``keys_file``: (exit code, stdout,
    stderr). Log lines of a running app that land in stdout meanwhile are dropped."""
    monkeypatch.setenv("HITL_API_KEYS_FILE", str(keys_file))
    monkeypatch.setenv("HITL_LOG_FORMAT", "json")

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = 0
        try:
            main(list(args))
        except SystemExit as exc:
            code = 0 if exc.code is None else 1
            if isinstance(exc.code, str):
                print(exc.code, file=sys.stderr)
        out, err = capsys.readouterr()
        kept = [line for line in out.splitlines() if not line.startswith("{\"")]
        return code, "\n".join(kept), err

    return run


# Plain file operations, synchronous on purpose (tiny files; the app polls meanwhile).
def text_of(path: Path) -> str:
    return path.read_text()


def write_in_place(path: Path, text: str) -> None:
    path.write_text(text)


def remove(path: Path) -> None:
    path.unlink()


def file_entries(path: Path) -> list[dict[str, Any]]:
    return list(json.loads(path.read_text())["keys"])


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def status_of(client: TestClient, key: str) -> int:
    resp = await client.get("/api/reviews", headers=bearer(key))
    await resp.read()
    return resp.status


async def within(bound: float, check: Callable[[], Awaitable[bool]]) -> float:
    """Seconds until ``check()`` holds, polled every 50 ms; fails after ``bound``."""
    started = time.monotonic()
    while not await check():
        elapsed = time.monotonic() - started
        assert elapsed < bound, f"not within {bound}s"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def metrics(client: TestClient) -> Any:
    return parse_exposition(await (await client.get("/metrics")).text())


def log_events(capsys: pytest.CaptureFixture[str], event: str) -> list[dict[str, Any]]:
    lines = []
    for line in capsys.readouterr().out.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("event") == event:
                lines.append(record)
    return lines


# -- the CLI on the file ----------------------------------------------------------------


def test_list_shows_ids_names_roles_and_times_but_no_secret(
    cli: Cli, keys_file: Path, api_keys: Keys
) -> None:
    """`keys list` (table and --json) names every key with its roles and times; no key,
    secret, salt or digest appears."""
    code, new, _ = cli("keys", "add", "ci-bot", "--roles", "viewer,producer")
    assert code == 0
    code, table, _ = cli("keys", "list")
    assert code == 0
    code, as_json, _ = cli("keys", "list", "--json")
    assert code == 0
    listed = json.loads(as_json)["keys"]
    entries = file_entries(keys_file)
    assert [k["key_id"] for k in listed] == [e["key_id"] for e in entries]
    ci = listed[-1]
    assert ci["name"] == "ci-bot" and ci["roles"] == ["producer", "viewer"]
    assert ci["created"].endswith("Z") and ci["expires"] is None and ci["expired"] is False
    for entry in entries:
        assert entry["key_id"] in table and entry["name"] in table
    for text in (table, as_json):
        for key in (new, api_keys.admin, api_keys.viewer):
            assert key not in text and key.split("_", 2)[2] not in text
        for entry in entries:
            for field in KEY_FIELDS_NEVER_LISTED:
                assert entry[field] not in text


def test_rotate_prints_a_new_key_and_gives_the_old_one_a_grace(
    cli: Cli, keys_file: Path, api_keys: Keys
) -> None:
    """`keys rotate NAME --grace 2h`: one new key on stdout with the old key's roles;
    the old key stays valid until now + 2h and is refused after; the file stays 0600."""
    before = time.time()
    code, new, err = cli("keys", "rotate", "reviewer-bot", "--grace", "2h")
    assert code == 0, err
    assert new.count("\n") == 0 and new.startswith("hitl_") and new not in err
    keys = ApiKeys.load(keys_file)
    assert keys.authenticate(f"Bearer {new}").roles == frozenset({"reviewer"})
    old = next(k for k in keys if k.key_id == api_keys.reviewer[5:13])
    assert old.expires is not None and before + 7200 - 1 <= old.expires <= time.time() + 7200
    assert keys.authenticate(f"Bearer {api_keys.reviewer}").name == "reviewer-bot"
    with pytest.raises(Unauthenticated):
        keys.authenticate(f"Bearer {api_keys.reviewer}", now=old.expires + 1)
    assert keys.authenticate(f"Bearer {new}", now=old.expires + 1).name == "reviewer-bot"
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    assert sorted(os.listdir(keys_file.parent)) == [keys_file.name]  # no temp files left

    # The default grace is stated: 24 h.
    code, _, _ = cli("keys", "rotate", "reviewer-bot")
    assert code == 0
    keys = ApiKeys.load(keys_file)
    previous = next(k for k in keys if k.key_id == new[5:13])
    assert previous.expires is not None and abs(previous.expires - (time.time() + 86400)) < 60
    # An earlier expiry is never extended by a later rotation.
    assert next(k for k in keys if k.key_id == old.key_id).expires == old.expires


def test_rotate_with_no_grace_refuses_the_old_key_at_once(cli: Cli, keys_file: Path, api_keys: Keys) -> None:
    """--grace 0 ends the old key now; `keys list` marks it expired."""
    code, new, _ = cli("keys", "rotate", "viewer-bot", "--grace", "0")
    assert code == 0
    keys = ApiKeys.load(keys_file)
    with pytest.raises(Unauthenticated):
        keys.authenticate(f"Bearer {api_keys.viewer}")
    assert keys.authenticate(f"Bearer {new}").name == "viewer-bot"
    _, listed, _ = cli("keys", "list", "--json")
    expired = {k["key_id"]: k["expired"] for k in json.loads(listed)["keys"]}
    assert expired[api_keys.viewer[5:13]] is True and expired[new[5:13]] is False


def test_revoke_by_id_or_by_name(cli: Cli, keys_file: Path, api_keys: Keys) -> None:
    """`keys revoke ID` removes that key; `keys revoke NAME` every key of the name; the
    rest keep working."""
    _, second_alice, _ = cli("keys", "add", "alice", "--roles", "viewer")
    code, _, err = cli("keys", "revoke", api_keys.producer[5:13])
    assert code == 0 and api_keys.producer[5:13] in err
    keys = ApiKeys.load(keys_file)
    with pytest.raises(Unauthenticated):
        keys.authenticate(f"Bearer {api_keys.producer}")
    assert keys.authenticate(f"Bearer {api_keys.admin}").name == "alice"

    code, _, err = cli("keys", "revoke", "alice")
    assert code == 0
    keys = ApiKeys.load(keys_file)
    for gone in (api_keys.admin, second_alice):
        with pytest.raises(Unauthenticated):
            keys.authenticate(f"Bearer {gone}")
    assert {k.name for k in keys} == {"reviewer-bot", "viewer-bot"}
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    "args",
    [("keys", "revoke", "nobody"), ("keys", "rotate", "nobody"), ("keys", "rotate", "alice", "--grace", "soon")],
    ids=["revoke unknown", "rotate unknown", "bad grace"],
)
def test_refused_edits_change_nothing(cli: Cli, keys_file: Path, args: tuple[str, ...]) -> None:
    """A revoke or rotate that names no key, or a bad --grace, exits non-zero, prints no
    key and leaves the file byte for byte as it was."""
    before = keys_file.read_bytes()
    code, out, err = cli(*args)
    assert code != 0 and out == "" and err
    assert keys_file.read_bytes() == before


@pytest.mark.parametrize("command", [("keys", "add", "x", "--roles", "viewer"), ("keys", "revoke", "alice"), ("keys", "rotate", "alice"), ("keys", "list")])
def test_cli_refuses_a_malformed_file(cli: Cli, keys_file: Path, command: tuple[str, ...]) -> None:
    """Every keys command on a file the service could not read says so (naming the file)
    and writes nothing: an edit never turns a bad file into a worse one."""
    document = json.loads(keys_file.read_text())
    document["keys"][0]["roles"] = ["root"]
    keys_file.write_text(json.dumps(document))
    before = keys_file.read_bytes()
    code, out, err = cli(*command)
    assert code != 0 and out == ""
    assert str(keys_file) in err and "roles" in err
    assert keys_file.read_bytes() == before


def test_concurrent_edits_lose_nothing(keys_file: Path) -> None:
    """Eight writers adding 15 keys each at once: all 120 are in the file (the edits are
    serialised by the lock, each written by rename)."""
    before = len(file_entries(keys_file))

    def add_many(worker: int) -> None:
        for i in range(15):
            append_key(keys_file, new_key(f"w{worker}-{i}", ["viewer"])[1])

    threads = [threading.Thread(target=add_many, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(file_entries(keys_file)) == before + 120
    assert sorted(os.listdir(keys_file.parent)) == [keys_file.name]


# -- a running service follows the file ----------------------------------------------


async def test_added_key_works_within_the_reload_bound(
    make_client: MakeClient, keys_file: Path, cli: Cli
) -> None:
    """A key added while the app runs is accepted within 3 s (default 1 s poll)."""
    client = await make_client(api_keys_file=keys_file)
    _, key, _ = cli("keys", "add", "late-bot", "--roles", "viewer")
    assert await status_of(client, key) == 401  # the app has not looked yet
    took = await within(RELOAD_BOUND_SECONDS, lambda: _is(client, key, 200))
    print(f"added key accepted after {took:.2f}s")
    exposition = await metrics(client)
    assert exposition.value("hitl_api_keys_reload_total", result="ok") >= 1
    assert exposition.value("hitl_api_keys_reload_total", result="error") == 0
    assert exposition.value("hitl_api_keys_loaded") == 5


async def test_revoked_key_is_refused_within_the_reload_bound(
    make_client: MakeClient, keys_file: Path, cli: Cli, api_keys: Keys
) -> None:
    """A key revoked while the app runs is refused within 3 s; the others keep working
    throughout."""
    client = await make_client(api_keys_file=keys_file)
    assert await status_of(client, api_keys.viewer) == 200
    code, _, _ = cli("keys", "revoke", api_keys.viewer[5:13])
    assert code == 0
    took = await within(RELOAD_BOUND_SECONDS, lambda: _is(client, api_keys.viewer, 401))
    print(f"revoked key refused after {took:.2f}s")
    assert await status_of(client, api_keys.admin) == 200
    assert (await metrics(client)).value("hitl_api_keys_loaded") == 3


async def test_rotation_while_serving(
    make_client: MakeClient, keys_file: Path, cli: Cli, api_keys: Keys
) -> None:
    """Rotate with a grace: old and new key both work; rotate again with --grace 0:
    the first two are refused within the bound, the newest works."""
    client = await make_client(api_keys_file=keys_file)
    _, first, _ = cli("keys", "rotate", "alice", "--grace", "1h")
    await within(RELOAD_BOUND_SECONDS, lambda: _is(client, first, 200))
    assert await status_of(client, api_keys.admin) == 200
    _, second, _ = cli("keys", "rotate", "alice", "--grace", "0")
    await within(RELOAD_BOUND_SECONDS, lambda: _is(client, second, 200))
    assert await status_of(client, api_keys.admin) == 401
    assert await status_of(client, first) == 401


async def test_malformed_file_keeps_the_last_good_keys_and_logs_once(
    make_client: MakeClient,
    keys_file: Path,
    api_keys: Keys,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A file that stops parsing (truncated JSON, a bad field, a missing file) is
    reported once per bad version — one error line, one count — while the keys loaded
    before keep working; a fixed file is picked up again."""
    client = await make_client(api_keys_file=keys_file, api_keys_reload_interval_seconds=0.1)
    good = text_of(keys_file)
    bad_versions = [
        good[: len(good) // 2],  # a half-written file
        json.dumps({"keys": [{**file_entries(keys_file)[0], "sha256": "zz"}]}),
    ]
    capsys.readouterr()
    for errors, bad in enumerate(bad_versions, start=1):
        write_in_place(keys_file, bad)
        await within(RELOAD_BOUND_SECONDS, functools.partial(_counter, client, "error", errors))
        await asyncio.sleep(0.5)  # five more polls of the same bad version
        assert (await metrics(client)).value("hitl_api_keys_reload_total", result="error") == errors
        for key in (api_keys.viewer, api_keys.admin):
            assert await status_of(client, key) == 200
    failures = log_events(capsys, "api_keys_reload_failed")
    assert len(failures) == 2, failures
    assert all(f["level"] == "error" and f["kept_keys"] == 4 for f in failures)
    assert "sha256" in failures[1]["error"]
    assert not any(key in json.dumps(failures) for key in (api_keys.viewer, api_keys.admin))
    assert all(e["sha256"] not in json.dumps(failures) for e in json.loads(good)["keys"])

    # A missing file is not "no keys": the last good set stays too.
    remove(keys_file)
    await within(RELOAD_BOUND_SECONDS, lambda: _counter(client, "error", 3))
    assert await status_of(client, api_keys.viewer) == 200

    # Fixed (with one key fewer): in use within the bound.
    document = json.loads(good)
    document["keys"] = [e for e in document["keys"] if e["name"] != "viewer-bot"]
    keyfile.write_atomically(keys_file, document)
    await within(RELOAD_BOUND_SECONDS, lambda: _is(client, api_keys.viewer, 401))
    assert await status_of(client, api_keys.admin) == 200
    assert (await metrics(client)).value("hitl_api_keys_reload_total", result="error") == 3


def test_poll_is_one_stat_and_sees_a_rewrite_its_stat_missed(
    keys_file: Path, api_keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unchanged file costs one stat per poll and no read. A file read moments after
    it was written is compared by content at the next poll, so a same-size rewrite in
    the same timestamp tick (which a stat on a coarse-mtime filesystem cannot tell
    apart) is still seen."""
    real_signature, real_read = keyfile.signature, keyfile.read
    reads: list[Path] = []
    monkeypatch.setattr(keyfile, "read", lambda path: reads.append(path) or real_read(path))

    long_ago = time.time() - 60
    os.utime(keys_file, (long_ago, long_ago))
    keys = ApiKeys.load(keys_file)
    reads.clear()
    assert [keys.poll() for _ in range(3)] == [None, None, None]
    assert reads == []

    keys_file.write_text(keys_file.read_text())
    keys = ApiKeys.load(keys_file)  # read within the same second as written: racy
    frozen = real_signature(keys_file)
    monkeypatch.setattr(keyfile, "signature", lambda path: frozen)
    viewer = next(e for e in file_entries(keys_file) if e["name"] == "viewer-bot")
    flipped = viewer["sha256"][:-1] + ("0" if viewer["sha256"][-1] != "0" else "1")
    keys_file.write_text(keys_file.read_text().replace(viewer["sha256"], flipped))
    assert keys.poll() == "ok"
    with pytest.raises(Unauthenticated):
        keys.authenticate(f"Bearer {api_keys.viewer}")
    assert keys.authenticate(f"Bearer {api_keys.admin}").name == "alice"


async def test_sighup_reloads_at_once(
    make_client: MakeClient, keys_file: Path, cli: Cli
) -> None:
    """With polling all but off (1 h), SIGHUP to the process reloads the file at once;
    when the app stops, SIGHUP's default disposition is back."""
    client = await make_client(api_keys_file=keys_file, api_keys_reload_interval_seconds=3600)
    # Only send the signal if the app installed its handler (the default kills pytest).
    assert signal.getsignal(signal.SIGHUP) not in (signal.SIG_DFL, signal.SIG_IGN, None)
    _, key, _ = cli("keys", "add", "hup-bot", "--roles", "viewer")
    await asyncio.sleep(0.3)
    assert await status_of(client, key) == 401
    os.kill(os.getpid(), signal.SIGHUP)
    took = await within(1.0, lambda: _is(client, key, 200))
    print(f"SIGHUP reload took {took:.3f}s")
    assert (await metrics(client)).value("hitl_api_keys_reload_total", result="ok") == 1
    await client.close()
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL


def test_sighup_reloads_a_served_process(
    tmp_path: Path, database_url: str, api_keys: Keys, keys_file: Path
) -> None:
    """The real thing: `python -m service serve` with polling off, a key added by the
    CLI, `kill -HUP`: accepted within 2 s, without a restart."""
    port = free_port()
    env = {
        **os.environ,
        "HITL_PORT": str(port),
        "HITL_DATABASE_URL": database_url,
        "HITL_REDIS_URL": REDIS_URL,
        "HITL_REDIS_KEY_PREFIX": f"hitl-test:{RUN_ID}:",
        "HITL_API_KEYS_FILE": str(keys_file),
        "HITL_API_KEYS_RELOAD_INTERVAL_SECONDS": "3600",
        "HITL_LOG_FORMAT": "json",
        "OTEL_SDK_DISABLED": "true",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        asyncio.run(_served_sighup(proc, port, env))
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=20)
    events = [json.loads(line)["event"] for line in out.decode().splitlines() if line.startswith("{")]
    assert "api_keys_reloaded" in events, err.decode()[-2000:]


async def _served_sighup(proc: subprocess.Popen[bytes], port: int, env: dict[str, str]) -> None:
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:

        async def status(key: str) -> int:
            try:
                async with session.get(f"{base}/api/reviews", headers=bearer(key)) as resp:
                    return resp.status
            except aiohttp.ClientConnectionError:
                return 0

        deadline = time.monotonic() + 30
        while await status("x") != 401:
            assert proc.poll() is None, "serve exited"
            assert time.monotonic() < deadline, "serve did not start within 30 s"
            await asyncio.sleep(0.1)
        added = subprocess.run(
            [sys.executable, "-m", "service", "keys", "add", "hup-bot", "--roles", "viewer"],
            env=env, capture_output=True, text=True, timeout=60, check=True,
        )
        key = added.stdout.strip()
        assert await status(key) == 401
        proc.send_signal(signal.SIGHUP)
        await within(2.0, lambda: _status_is(status, key, 200))


async def _status_is(status: Callable[[str], Awaitable[int]], key: str, expected: int) -> bool:
    return await status(key) == expected


async def _is(client: TestClient, key: str, expected: int) -> bool:
    return await status_of(client, key) == expected


async def _counter(client: TestClient, result: str, expected: float) -> bool:
    return (await metrics(client)).value("hitl_api_keys_reload_total", result=result) == expected


def test_reload_interval_is_configurable() -> None:
    """HITL_API_KEYS_RELOAD_INTERVAL_SECONDS sets the poll; 1 s by default."""
    assert Settings().api_keys_reload_interval_seconds == 1.0
    env = {"HITL_API_KEYS_RELOAD_INTERVAL_SECONDS": "0.5"}
    assert Settings.from_env(env).api_keys_reload_interval_seconds == 0.5
