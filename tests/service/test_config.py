"""Settings from the environment, and the `keys add` command line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from service.auth import ApiKeys
from service.config import PARSERS, Settings, SettingsError
from tests.conftest import Keys
from tests.service.conftest import MakeClient
from tests.service.helpers import KEY_SHAPE, submit

REPO = Path(__file__).resolve().parents[2]


def test_defaults() -> None:
    """An empty environment gives the documented defaults."""
    settings = Settings.from_env({})
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.database_url == "postgresql://postgres@127.0.0.1:5432/hitl"
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.max_body_bytes == 1024 * 1024
    assert settings.enable_test_routes is False


def test_values_are_read() -> None:
    """Each variable sets its field, parsed to the right type."""
    settings = Settings.from_env({
        "HITL_HOST": "0.0.0.0",
        "HITL_PORT": "9000",
        "HITL_DATABASE_URL": "postgresql://u:p@db:5433/x",
        "HITL_REDIS_URL": "redis://cache:6380/2",
        "HITL_API_KEYS_FILE": "/etc/hitl/keys.json",
        "HITL_DB_POOL_MIN": "2",
        "HITL_DB_POOL_MAX": "4",
        "HITL_REVIEW_CACHE_TTL_SECONDS": "60",
        "HITL_MAX_BODY_BYTES": "2048",
        "HITL_ANOMALY_THRESHOLD": "0.7",
        "HITL_ENABLE_TEST_ROUTES": "yes",
    })
    assert settings.host == "0.0.0.0" and settings.port == 9000
    assert settings.database_url == "postgresql://u:p@db:5433/x"
    assert settings.redis_url == "redis://cache:6380/2"
    assert settings.api_keys_file == Path("/etc/hitl/keys.json")
    assert (settings.db_pool_min, settings.db_pool_max) == (2, 4)
    assert settings.review_cache_ttl_seconds == 60
    assert settings.max_body_bytes == 2048
    assert settings.anomaly_threshold == 0.7
    assert settings.enable_test_routes is True


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("HITL_PORT", "eighty"),
        ("HITL_PORT", "70000"),
        ("HITL_DATABASE_URL", "mysql://root@db/hitl"),
        ("HITL_DATABASE_URL", "postgresql:///no-host"),
        ("HITL_REDIS_URL", "http://cache:6379"),
        ("HITL_DB_POOL_MIN", "-1"),
        ("HITL_DB_POOL_MAX", "0"),
        ("HITL_DB_TIMEOUT_SECONDS", "soon"),
        ("HITL_REDIS_TIMEOUT_SECONDS", "0"),
        ("HITL_REVIEW_CACHE_TTL_SECONDS", "1.5"),
        ("HITL_MAX_BODY_BYTES", "1MB"),
        ("HITL_ANOMALY_THRESHOLD", "1.5"),
        ("HITL_ENABLE_TEST_ROUTES", "maybe"),
        ("HITL_DECISION_WEBHOOK_URL", "ftp://example.org/x"),
    ],
)
def test_bad_value_names_the_variable(variable: str, value: str) -> None:
    """A wrong value raises SettingsError with one line naming the variable, the value and
    the expected form."""
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({variable: value})
    message = str(caught.value)
    assert variable in message
    assert value in message
    assert "expected" in message
    assert "\n" not in message


def test_pool_min_above_max_names_both() -> None:
    """HITL_DB_POOL_MIN > HITL_DB_POOL_MAX is refused naming both variables."""
    with pytest.raises(SettingsError, match=r"HITL_DB_POOL_MIN.*HITL_DB_POOL_MAX"):
        Settings.from_env({"HITL_DB_POOL_MIN": "5", "HITL_DB_POOL_MAX": "2"})


def _cli_env(keys_file: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HITL_")}
    env["HITL_API_KEYS_FILE"] = str(keys_file)
    return env


def test_bad_setting_stops_the_cli_with_the_variable(tmp_path: Path) -> None:
    """The command line exits non-zero with a one-line message naming the bad variable."""
    env = {**_cli_env(tmp_path / "keys.json"), "HITL_PORT": "none"}
    proc = subprocess.run(
        [sys.executable, "-m", "service", "migrate"], env=env, cwd=REPO,
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode != 0
    assert proc.stdout == ""
    assert "HITL_PORT" in proc.stderr


async def test_keys_add_prints_only_the_key(
    tmp_path: Path, api_keys: Keys, make_client: MakeClient, client: TestClient
) -> None:
    """`python -m service keys add NAME --roles reviewer` prints the key alone on stdout,
    stores only its salted hash, and the new key decides reviews under its own name."""
    keys_file = tmp_path / "keys.json"
    shutil.copy(api_keys.file, keys_file)
    proc = subprocess.run(
        [sys.executable, "-m", "service", "keys", "add", "ci-bot", "--roles", "reviewer"],
        env=_cli_env(keys_file), cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.endswith("\n") and proc.stdout.count("\n") == 1
    key = proc.stdout.strip()
    assert KEY_SHAPE.match(key), key
    assert "ci-bot" in proc.stderr and key not in proc.stderr

    stored = keys_file.read_text()
    assert key not in stored and key.split("_", 2)[2] not in stored
    entry = json.loads(stored)["keys"][-1]
    assert entry["name"] == "ci-bot" and entry["roles"] == ["reviewer"]
    assert entry["key_id"] == key.split("_")[1]
    assert oct(keys_file.stat().st_mode & 0o777) == "0o600"

    principal = ApiKeys.load(keys_file).authenticate(f"Bearer {key}")
    assert principal.name == "ci-bot" and principal.roles == frozenset({"reviewer"})

    app_client = await make_client(api_keys_file=keys_file)
    rid = (await submit(app_client, api_keys.auth("producer")))["id"]
    resp = await app_client.post(
        f"/api/reviews/{rid}/decision", json={"decision": "approve"},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["decisions"][0]["reviewer"] == "ci-bot"
    resp = await app_client.get("/api/reviews", headers={"Authorization": f"Bearer {key}"})
    assert resp.status == 403
    # The app built before the key existed does not know it.
    resp = await client.get("/api/reviews", headers={"Authorization": f"Bearer {key}"})
    assert resp.status == 401


@pytest.mark.parametrize("roles", ["admin", "", "reviewer,root"])
def test_keys_add_refuses_unknown_roles(tmp_path: Path, roles: str) -> None:
    """An unknown or empty role list prints no key and writes no file."""
    keys_file = tmp_path / "keys.json"
    proc = subprocess.run(
        [sys.executable, "-m", "service", "keys", "add", "x", "--roles", roles],
        env=_cli_env(keys_file), cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode != 0
    assert proc.stdout == ""
    assert not keys_file.exists()


def test_every_setting_is_configurable() -> None:
    """Each Settings field but telemetry has an HITL_* variable and a parser, and the
    README's configuration table names every one of those variables."""
    names = {f.name for f in fields(Settings)} - {"telemetry"}
    assert set(PARSERS) == names
    readme = (REPO / "README.md").read_text()
    assert [n for n in names if f"HITL_{n.upper()}" not in readme] == []
