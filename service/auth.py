"""API keys: `Authorization: Bearer <key>`, each key with a name and roles.

The keys file holds only salted SHA-256 hashes. Keys are 256-bit random secrets, so
a fast hash is enough (there is nothing to brute-force); the comparison is constant
time. A key looks like ``hitl_<key id>_<secret>``: the id finds the entry without
trying every hash.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from .domain.errors import Forbidden, Unauthenticated
from .keys import API_KEYS

ROLES = ("producer", "reviewer", "viewer")


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    roles: frozenset[str]


@dataclass(frozen=True, slots=True)
class StoredKey:
    key_id: str
    name: str
    roles: frozenset[str]
    salt: bytes
    digest: bytes


class KeyFileError(ValueError):
    pass


class ApiKeys:
    def __init__(self, keys: Iterable[StoredKey]) -> None:
        self._by_id = {k.key_id: k for k in keys}

    @classmethod
    def load(cls, path: Path) -> ApiKeys:
        if not path.exists():
            return cls([])
        try:
            document = json.loads(path.read_text())
            return cls(_parse_entry(e) for e in document.get("keys", []))
        except (ValueError, KeyError, TypeError) as exc:
            raise KeyFileError(f"{path}: not a hitl API keys file ({exc})") from None

    def __len__(self) -> int:
        return len(self._by_id)

    def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise Unauthenticated("missing Authorization: Bearer <API key>")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("expected Authorization: Bearer <API key>")
        key_id = _key_id(token.strip())
        stored = self._by_id.get(key_id) if key_id else None
        # Hash even when the id is unknown so both paths take the same time.
        salt = stored.salt if stored else b"\x00" * 16
        digest = _digest(salt, token.strip())
        if stored is None or not hmac.compare_digest(digest, stored.digest):
            raise Unauthenticated("unknown API key")
        return Principal(stored.name, stored.roles)


def require(request: web.Request, role: str) -> Principal:
    """The caller, if authenticated and holding ``role``; else 401/403."""
    principal = request.app[API_KEYS].authenticate(request.headers.get("Authorization"))
    if role not in principal.roles:
        raise Forbidden(role)
    return principal


def new_key(name: str, roles: Iterable[str]) -> tuple[str, dict[str, Any]]:
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
    }
    return key, entry


def append_key(path: Path, entry: Mapping[str, Any]) -> None:
    document: dict[str, Any] = {"keys": []}
    if path.exists():
        document = json.loads(path.read_text())
    document.setdefault("keys", []).append(dict(entry))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    # Written with owner-only permissions: hashes are not secrets, but names and roles
    # are nobody else's business.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(document, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)


def _parse_entry(entry: Mapping[str, Any]) -> StoredKey:
    return StoredKey(
        key_id=str(entry["key_id"]),
        name=str(entry["name"]),
        roles=frozenset(entry["roles"]),
        salt=bytes.fromhex(entry["salt"]),
        digest=bytes.fromhex(entry["sha256"]),
    )


def _key_id(token: str) -> str | None:
    parts = token.split("_", 2)
    if len(parts) == 3 and parts[0] == "hitl" and len(parts[1]) == 8:
        return parts[1]
    return None


def _digest(salt: bytes, key: str) -> bytes:
    return hashlib.sha256(salt + key.encode()).digest()
