"""The API keys file on disk: versions, atomic locked updates, and the edits the CLI
makes (revoke, rotate). It knows JSON documents, not keys: service/auth.py parses and
validates the entries.

Writers (``hitl-api keys ...``) take an exclusive lock beside the file, write a
temporary file (mode 0600) in the same directory, fsync it and ``os.replace`` it over
the old one, so a reader sees the old file or the new one, never half of either.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# A file whose mtime is this close to the moment it was read may have been written
# again within the same timestamp tick (coarse on some filesystems): its content is
# compared again on the next check (git calls this "racily clean").
RACY_SECONDS = 2.0

Signature = tuple[int, int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns


@dataclass(frozen=True, slots=True)
class FileVersion:
    """What was read: the file's identity and size/times (None: no file), the content's
    hash, and when it was read."""

    signature: Signature | None
    sha256: bytes | None
    read_at: float

    def same_content(self, other: FileVersion) -> bool:
        return self.signature == other.signature and self.sha256 == other.sha256

    @property
    def racy(self) -> bool:
        if self.signature is None:
            return False
        return self.read_at - self.signature[3] / 1e9 < RACY_SECONDS


def signature(path: Path) -> Signature | None:
    """The file's cheap identity (one stat), None if it does not exist."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return _signature(st)


def read(path: Path) -> tuple[bytes | None, FileVersion]:
    """The file's bytes (None if it does not exist) and their version. The stat comes
    from the open file, so it describes the bytes read even if the file is replaced
    meanwhile."""
    now = time.time()
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            data = fh.read()
    except FileNotFoundError:
        return None, FileVersion(None, None, now)
    return data, FileVersion(_signature(st), hashlib.sha256(data).digest(), now)


def _signature(st: os.stat_result) -> Signature:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def load_document(data: bytes) -> dict[str, Any]:
    """The JSON object in ``data``; ValueError if it is not one."""
    document = json.loads(data)
    if not isinstance(document, dict):
        raise ValueError("expected a JSON object with a 'keys' list")
    return document


@contextlib.contextmanager
def update(path: Path) -> Iterator[dict[str, Any]]:
    """Edit the keys file: yields its document (``{"keys": []}`` if there is no file),
    and writes it back atomically when the block ends without an exception. Holds an
    exclusive lock on the file's directory meanwhile (the file itself is replaced, so
    it cannot carry the lock), so two CLI runs never lose each other's edits."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        data, _ = read(path)
        try:
            document = {"keys": []} if data is None else load_document(data)
        except ValueError as exc:
            raise ValueError(f"{path}: not a hitl API keys file ({exc})") from None
        document.setdefault("keys", [])
        yield document
        write_atomically(path, document)
    finally:
        os.close(fd)  # closing releases the lock


def write_atomically(path: Path, document: Mapping[str, Any]) -> None:
    # Owner-only permissions: hashes are not secrets, but names and roles are nobody
    # else's business. mkstemp creates the file 0600.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(document, fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# -- timestamps and durations ---------------------------------------------------------


def format_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> float:
    """Seconds since the epoch of an ISO 8601 time with a zone, e.g. 2026-11-28T21:40:00Z."""
    when = datetime.fromisoformat(text)
    if when.tzinfo is None:
        raise ValueError("a time needs a zone, e.g. 2026-11-28T21:40:00Z")
    return when.timestamp()


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in ``90s``, ``15m``, ``24h``, ``7d`` or a plain number of seconds."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"expected a duration like 24h, 15m, 90s or 0; got {text!r}")
    return float(match[1]) * _UNIT_SECONDS[match[2]]


# -- the CLI's edits, on a document already validated by auth.KeySet ------------------


def matching(document: Mapping[str, Any], ref: str) -> list[dict[str, Any]]:
    """Entries whose key id is ``ref``; failing that, every entry named ``ref``."""
    entries: list[dict[str, Any]] = document["keys"]
    by_id = [e for e in entries if e["key_id"] == ref]
    return by_id or [e for e in entries if e["name"] == ref]


def revoke(document: dict[str, Any], ref: str) -> list[dict[str, Any]]:
    """Remove the entries ``ref`` names (a key id, or a name: all its keys); the removed."""
    gone = matching(document, ref)
    document["keys"] = [e for e in document["keys"] if not any(e is g for g in gone)]
    return gone


def rotate(
    document: dict[str, Any], name: str, entry: Mapping[str, Any], *, expires: float, now: float
) -> list[dict[str, Any]]:
    """Add ``entry`` and make every still-valid key named ``name`` expire at ``expires``
    (never later than it already would); those older entries."""
    older = [e for e in document["keys"] if e["name"] == name and not _expired(e, now)]
    for e in older:
        current = parse_time(e["expires"]) if "expires" in e else None
        if current is None or expires < current:
            e["expires"] = format_time(expires)
    document["keys"].append(dict(entry))
    return older


def _expired(entry: Mapping[str, Any], now: float) -> bool:
    return "expires" in entry and parse_time(entry["expires"]) <= now
