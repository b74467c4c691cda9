"""API keys: `Authorization: Bearer <key>`, each key with a name and roles.

The keys file holds only salted SHA-256 hashes. Keys are 256-bit random secrets, so
a fast hash is enough (there is nothing to brute-force); the comparison is constant
time. A key looks like ``hitl_<key id>_<secret>``: the id finds the entry without
trying every hash. An entry may carry an ``expires`` time (set by ``keys rotate``):
from then on the key is refused.

``ApiKeys`` is the live set of one keys file: ``poll()`` and ``reload()`` (called by
service/keyreload.py on a timer and on SIGHUP) swap in a whole new ``KeySet`` when the
file changed and is valid, and keep the last good one when it is not.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import structlog
from aiohttp import web

from . import keyfile
from .domain.errors import Forbidden, Unauthenticated
from .keys import API_KEYS

ROLES = ("producer", "reviewer", "viewer")

# A real key is 62 characters. Anything much longer is refused before hashing.
MAX_TOKEN_CHARS = 256

ReloadResult = Literal["ok", "error"]
RELOAD_RESULTS: tuple[ReloadResult, ...] = ("ok", "error")

log = structlog.get_logger("hitl.auth")


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    roles: frozenset[str]
    # Which key authenticated: the console's session keeps it to re-check the key.
    key_id: str = ""


@dataclass(frozen=True, slots=True)
class StoredKey:
    key_id: str
    name: str
    roles: frozenset[str]
    salt: bytes
    digest: bytes
    created: float | None = None
    expires: float | None = None

    def expired(self, now: float) -> bool:
        return self.expires is not None and now >= self.expires


class KeyFileError(ValueError):
    pass


class KeySet:
    """One immutable set of keys, as read from one version of the file."""

    def __init__(self, keys: Iterable[StoredKey]) -> None:
        self._by_id: dict[str, StoredKey] = {}
        for key in keys:
            if key.key_id in self._by_id:
                raise KeyFileError(f"key id {key.key_id} appears twice")
            self._by_id[key.key_id] = key

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> KeySet:
        entries = document.get("keys", [])
        if not isinstance(entries, list):
            raise KeyFileError("'keys' is not a list")
        return cls(_parse_entry(i, e) for i, e in enumerate(entries))

    @classmethod
    def from_bytes(cls, data: bytes) -> KeySet:
        try:
            document = keyfile.load_document(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise KeyFileError(f"not JSON ({exc})") from None
        return cls.from_document(document)

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[StoredKey]:
        return iter(self._by_id.values())

    def authenticate(self, authorization: str | None, now: float) -> Principal:
        if not authorization:
            raise Unauthenticated("missing Authorization: Bearer <API key>")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("expected Authorization: Bearer <API key>")
        # Keys are short printable ASCII. aiohttp hands undecodable header bytes over
        # as lone surrogates (surrogateescape); such a token cannot be a key.
        if len(token) > MAX_TOKEN_CHARS or not (token.isascii() and token.isprintable()):
            raise Unauthenticated("unknown API key")
        key_id = _key_id(token)
        stored = self._by_id.get(key_id) if key_id else None
        # Hash even when the id is unknown so both paths take the same time.
        salt = stored.salt if stored else b"\x00" * 16
        digest = _digest(salt, token)
        if stored is None or not hmac.compare_digest(digest, stored.digest):
            raise Unauthenticated("unknown API key")
        if stored.expired(now):
            raise Unauthenticated("unknown API key")
        return Principal(stored.name, stored.roles, stored.key_id)

    def find(self, key_id: str) -> StoredKey | None:
        return self._by_id.get(key_id)


class ApiKeys:
    """The keys of one file, as last read successfully; reloadable while serving."""

    def __init__(self, keys: KeySet, path: Path | None = None) -> None:
        self._keys = keys
        self.path = path
        self._version = keyfile.FileVersion(None, None, time.time())
        self._last_failure: str | None = None

    @classmethod
    def load(cls, path: Path) -> ApiKeys:
        """The keys in ``path`` (none if there is no file); KeyFileError if malformed."""
        data, version = keyfile.read(path)
        api_keys = cls(KeySet([]) if data is None else parse_keys(path, data), path)
        api_keys._version = version
        return api_keys

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[StoredKey]:
        return iter(self._keys)

    def valid_count(self, now: float | None = None) -> int:
        """How many keys would be accepted now (loaded and not expired)."""
        now = time.time() if now is None else now
        return sum(not key.expired(now) for key in self._keys)

    def authenticate(self, authorization: str | None, now: float | None = None) -> Principal:
        return self._keys.authenticate(authorization, time.time() if now is None else now)

    def current(self, key_id: str, now: float | None = None) -> StoredKey | None:
        """The key with this id if it is still loaded and not expired: None once it
        was revoked (removed from the file) or reached its ``expires`` time."""
        stored = self._keys.find(key_id)
        if stored is None or stored.expired(time.time() if now is None else now):
            return None
        return stored

    def poll(self) -> ReloadResult | None:
        """Reload if the file changed since it was last read; None if it did not.
        One stat when nothing changed; each version of the file is parsed once, so a
        bad file is reported once, not at every poll."""
        assert self.path is not None, "poll() needs keys loaded from a file"
        try:
            if keyfile.signature(self.path) == self._version.signature and not self._version.racy:
                return None
            data, version = keyfile.read(self.path)
        except OSError as exc:  # e.g. permission denied: keep the keys, say so once
            message = f"{self.path}: {exc.strerror}"
            return None if message == self._last_failure else self._failed(message, "change")
        if version.same_content(self._version):
            self._version = version  # read again later: no longer racy
            return None
        return self._apply(data, version, trigger="change")

    def reload(self, trigger: str = "sighup") -> ReloadResult:
        """Read the file again whether or not it changed (and report any error again)."""
        assert self.path is not None, "reload() needs keys loaded from a file"
        try:
            data, version = keyfile.read(self.path)
        except OSError as exc:
            return self._failed(f"{self.path}: {exc.strerror}", trigger)
        return self._apply(data, version, trigger=trigger)

    def _apply(
        self, data: bytes | None, version: keyfile.FileVersion, trigger: str
    ) -> ReloadResult:
        assert self.path is not None
        self._version = version  # even when bad: this version is not parsed again
        try:
            if data is None:
                raise KeyFileError(f"{self.path}: the file is missing")
            keys = parse_keys(self.path, data)
        except KeyFileError as exc:
            return self._failed(str(exc), trigger)
        self._keys = keys  # one assignment: a request sees the old set or the new one
        self._last_failure = None
        log.info("api_keys_reloaded", trigger=trigger, path=str(self.path), keys=len(keys))
        return "ok"

    def _failed(self, message: str, trigger: str) -> ReloadResult:
        self._last_failure = message
        log.error(
            "api_keys_reload_failed", trigger=trigger, error=message, kept_keys=len(self._keys)
        )
        return "error"


def require(request: web.Request, role: str) -> Principal:
    """The caller, if authenticated and holding ``role``; else 401/403."""
    values = request.headers.getall("Authorization", [])
    if len(values) > 1:
        # Which one a proxy or this server would read is ambiguous: take neither.
        raise Unauthenticated("more than one Authorization header")
    principal = request.app[API_KEYS].authenticate(values[0] if values else None)
    if role not in principal.roles:
        raise Forbidden(role)
    return principal


def new_key(
    name: str, roles: Iterable[str], *, now: float | None = None
) -> tuple[str, dict[str, Any]]:
    """A fresh key and the file entry that stores its hash."""
    roles = sorted(set(roles))
    unknown = set(roles) - set(ROLES)
    if not name.strip() or unknown or not roles:
        raise ValueError(
            f"expected a name and roles from {', '.join(ROLES)}; got {name!r}, {roles}"
        )
    key_id = secrets.token_hex(4)
    key = f"hitl_{key_id}_{secrets.token_urlsafe(32)}"
    salt = secrets.token_bytes(16)
    entry = {
        "key_id": key_id,
        "name": name,
        "roles": roles,
        "salt": salt.hex(),
        "sha256": _digest(salt, key).hex(),
        "created": keyfile.format_time(time.time() if now is None else now),
    }
    return key, entry


def append_key(path: Path, entry: Mapping[str, Any]) -> None:
    """Add one entry to the keys file (atomically, under the file's lock)."""
    with keyfile.update(path) as document:
        parse_keys(path, document)  # refuse to extend a file the service cannot read
        document["keys"].append(dict(entry))


def parse_keys(path: Path, content: bytes | Mapping[str, Any]) -> KeySet:
    """The keys in ``content`` (the bytes or the document of ``path``); KeyFileError
    naming the file and the bad field if they are not a valid keys file."""
    try:
        if isinstance(content, bytes):
            return KeySet.from_bytes(content)
        return KeySet.from_document(content)
    except KeyFileError as exc:
        raise KeyFileError(f"{path}: not a hitl API keys file ({exc})") from None


_HEX_ID = re.compile(r"^[0-9a-f]{8}$")
_HEX_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_HEX_SALT = re.compile(r"^(?:[0-9a-f]{2}){8,64}$")


def _parse_entry(index: int, entry: Any) -> StoredKey:
    """One entry, validated field by field. Messages name the field, never its value
    (it may be a hash)."""

    def bad(field: str, expected: str) -> KeyFileError:
        return KeyFileError(f"keys[{index}].{field}: expected {expected}")

    if not isinstance(entry, dict):
        raise KeyFileError(f"keys[{index}]: expected an object")
    key_id, name, roles = entry.get("key_id"), entry.get("name"), entry.get("roles")
    salt, digest = entry.get("salt"), entry.get("sha256")
    if not isinstance(key_id, str) or not _HEX_ID.match(key_id):
        raise bad("key_id", "8 lowercase hex digits")
    if not isinstance(name, str) or not name.strip():
        raise bad("name", "a non-empty string")
    if (
        not isinstance(roles, list)
        or not roles
        or not all(isinstance(r, str) and r in ROLES for r in roles)
    ):
        raise bad("roles", f"a non-empty list of {', '.join(ROLES)}")
    if not isinstance(salt, str) or not _HEX_SALT.match(salt):
        raise bad("salt", "8 to 64 bytes in lowercase hex")
    if not isinstance(digest, str) or not _HEX_SHA256.match(digest):
        raise bad("sha256", "64 lowercase hex digits")
    return StoredKey(
        key_id=key_id,
        name=name,
        roles=frozenset(roles),
        salt=bytes.fromhex(salt),
        digest=bytes.fromhex(digest),
        created=_optional_time(entry, "created", bad),
        expires=_optional_time(entry, "expires", bad),
    )


def _optional_time(
    entry: Mapping[str, Any], field: str, bad: Callable[[str, str], KeyFileError]
) -> float | None:
    value = entry.get(field)
    if value is None:
        return None
    try:
        if not isinstance(value, str):
            raise ValueError
        return keyfile.parse_time(value)
    except ValueError:
        raise bad(field, "an ISO 8601 time with a zone, e.g. 2026-11-28T21:40:00Z") from None


def _key_id(token: str) -> str | None:
    parts = token.split("_", 2)
    if len(parts) == 3 and parts[0] == "hitl" and len(parts[1]) == 8:
        return parts[1]
    return None


def _digest(salt: bytes, key: str) -> bytes:
    # surrogatepass: never raise on a str that came from undecodable bytes.
    return hashlib.sha256(salt + key.encode("utf-8", "surrogatepass")).digest()
