"""Command line: `python -m service [serve|migrate|createdb|keys add|list|revoke|rotate|dev-key]`.

Messages go to stderr; only what a script would capture (a new key) goes to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import structlog

from telemetry import configure_logging

from . import keyfile
from .auth import ROLES, KeyFileError, KeySet, append_key, new_key, parse_keys
from .config import Settings, SettingsError
from .storage.db import DatabaseUnreachable, redact_dsn
from .storage.migrate import apply_migrations, create_database

DEV_KEY_NAME = "local-dev"
DEFAULT_GRACE = "24h"

log = structlog.get_logger("hitl.main")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="hitl-api", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="serve the API (default)")
    commands.add_parser("migrate", help="apply pending database migrations")
    commands.add_parser("createdb", help="create the database if it does not exist")
    commands.add_parser("dev-key", help="make a local development key (make run does this)")
    keys = commands.add_parser("keys", help="manage API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    add = key_commands.add_parser("add", help="create a key; prints it once on stdout")
    add.add_argument("name")
    add.add_argument("--roles", required=True, help=f"comma-separated: {','.join(ROLES)}")
    listing = key_commands.add_parser(
        "list", help="show each key's id, name, roles, created and expiry (never secrets)"
    )
    listing.add_argument("--json", action="store_true", help="one JSON document on stdout")
    revoke = key_commands.add_parser("revoke", help="remove a key by id, or every key of a name")
    revoke.add_argument("ref", metavar="ID_OR_NAME")
    rotate = key_commands.add_parser(
        "rotate",
        help="new key for a name, printed once on stdout; the old keys expire after --grace",
    )
    rotate.add_argument("name")
    rotate.add_argument(
        "--grace",
        default=DEFAULT_GRACE,
        type=_duration,
        help=f"how long the old keys stay valid, e.g. 1h, 30m, 0 (default {DEFAULT_GRACE})",
    )
    args = parser.parse_args(argv)

    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        sys.exit(f"hitl: configuration error: {exc}")
    configure_logging(settings.telemetry)

    command = args.command or "serve"
    if command == "serve":
        serve(settings)
    elif command == "migrate":
        versions = asyncio.run(apply_migrations(settings.database_url))
        _say(f"applied migrations: {versions}" if versions else "database schema is up to date")
    elif command == "createdb":
        created = asyncio.run(create_database(settings.database_url))
        where = redact_dsn(settings.database_url)
        _say(f"created database {where}" if created else f"database {where} exists")
    elif command == "dev-key":
        dev_key(settings.api_keys_file)
    elif command == "keys":
        try:
            KEY_COMMANDS[args.keys_command](settings.api_keys_file, args)
        except (KeyFileError, ValueError) as exc:
            sys.exit(f"hitl: {exc}")


def serve(settings: Settings) -> None:
    from .app import create_app
    from .server import run

    try:
        app = create_app(settings)
    except KeyFileError as exc:
        sys.exit(f"hitl: {exc}")
    try:
        # service/server.py: connection limits, timeouts, and the drain on SIGTERM.
        run(app, settings)
    except DatabaseUnreachable as exc:
        sys.exit(f"hitl: {exc}")


def dev_key(keys_file: Path) -> None:
    """A key with every role for local use, kept beside the keys file so `make run`
    can show how to use it. Created once; later runs only say where it is."""
    key_path = keys_file.with_name("dev-api-key")
    if not key_path.exists():
        key, entry = new_key(DEV_KEY_NAME, ROLES)
        append_key(keys_file, entry)
        key_path.write_text(key + "\n")
        key_path.chmod(0o600)
    _say(
        f"local API key (all roles) is in {key_path}; use it as\n"
        f'  curl -H "Authorization: Bearer $(cat {key_path})" '
        "http://127.0.0.1:8000/api/reviews"
    )


# -- keys -------------------------------------------------------------------------------
# Each edit holds the file's lock, validates what is there, and writes atomically; a
# running service picks the change up within HITL_API_KEYS_RELOAD_INTERVAL_SECONDS, or
# at once on SIGHUP.


def keys_add(path: Path, args: argparse.Namespace) -> None:
    key, entry = new_key(args.name, [r.strip() for r in args.roles.split(",") if r.strip()])
    append_key(path, entry)
    print(key)
    _say(
        f"added key {entry['key_id']} '{args.name}' ({', '.join(entry['roles'])}) to {path}; "
        "it is shown only this once"
    )


def keys_list(path: Path, args: argparse.Namespace) -> None:
    data, _ = keyfile.read(path)
    keys = KeySet([]) if data is None else parse_keys(path, data)
    now = time.time()
    if args.json:
        rows = [
            {
                "key_id": k.key_id,
                "name": k.name,
                "roles": sorted(k.roles),
                "created": _when(k.created),
                "expires": _when(k.expires),
                "expired": k.expired(now),
            }
            for k in keys
        ]
        print(json.dumps({"keys": rows}, indent=2))
        return
    print(f"{'ID':<8}  {'NAME':<20}  {'ROLES':<25}  {'CREATED':<20}  EXPIRES")
    for k in keys:
        expires = (_when(k.expires) or "-") + (" (expired)" if k.expired(now) else "")
        print(
            f"{k.key_id:<8}  {k.name:<20}  {','.join(sorted(k.roles)):<25}  "
            f"{_when(k.created) or '-':<20}  {expires}"
        )


def _when(epoch: float | None) -> str | None:
    return None if epoch is None else keyfile.format_time(epoch)


def keys_revoke(path: Path, args: argparse.Namespace) -> None:
    with keyfile.update(path) as document:
        parse_keys(path, document)
        gone = keyfile.revoke(document, args.ref)
        if not gone:
            raise ValueError(f"no key with id or name {args.ref!r} in {path}")
    described = ", ".join(f"{e['key_id']} '{e['name']}'" for e in gone)
    _say(f"revoked {described}; a running service refuses it within seconds (or at SIGHUP)")


def keys_rotate(path: Path, args: argparse.Namespace) -> None:
    now = time.time()
    with keyfile.update(path) as document:
        current = [k for k in parse_keys(path, document) if k.name == args.name]
        valid = [k for k in current if not k.expired(now)]
        if not valid:
            raise ValueError(f"no valid key named {args.name!r} in {path}: use keys add")
        # The newest key's roles carry over.
        newest = max(valid, key=lambda k: k.created or 0.0)
        key, entry = new_key(args.name, newest.roles, now=now)
        older = keyfile.rotate(document, args.name, entry, expires=now + args.grace, now=now)
    print(key)
    until = keyfile.format_time(now + args.grace)
    _say(
        f"rotated '{args.name}': new key {entry['key_id']} ({', '.join(entry['roles'])}) is "
        f"shown only this once; old key(s) {', '.join(e['key_id'] for e in older)} "
        f"valid until {until}"
    )


KEY_COMMANDS = {"add": keys_add, "list": keys_list, "revoke": keys_revoke, "rotate": keys_rotate}


def _duration(text: str) -> float:
    try:
        return keyfile.parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _say(message: str) -> None:
    print(message, file=sys.stderr)


if __name__ == "__main__":
    main()
