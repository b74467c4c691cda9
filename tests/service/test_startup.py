"""Start-up against an unreachable database: bounded retries, then one clear message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import free_port


def test_unreachable_database_is_retried_then_exits_clearly(tmp_path: Path) -> None:
    """`serve` retries a database that refuses connections with growing delays, then
    exits non-zero within its deadline, naming where it tried (without a password)."""
    dead = free_port()
    env = {
        **os.environ,
        "HITL_DATABASE_URL": f"postgresql://postgres:s3cret@127.0.0.1:{dead}/hitl",
        "HITL_DB_CONNECT_DEADLINE_SECONDS": "2",
        "HITL_PORT": str(free_port()),
        "HITL_API_KEYS_FILE": str(tmp_path / "keys.json"),
        "HITL_LOG_FORMAT": "json",
        "OTEL_SDK_DISABLED": "true",
    }
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "service", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert elapsed < 20
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith(
        f"hitl: PostgreSQL at postgresql://postgres:***@127.0.0.1:{dead}/hitl"
    )
    assert "did not accept connections" in message
    assert "s3cret" not in result.stderr + result.stdout
    retries = [
        json.loads(line)
        for line in result.stdout.splitlines()
        if '"database_unreachable_retrying"' in line
    ]
    assert len(retries) >= 2
    delays = [r["retry_in_seconds"] for r in retries]
    assert delays == sorted(delays) and delays[-1] > delays[0]
