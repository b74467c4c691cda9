"""Command line: `python -m service [serve|migrate|createdb|keys add|dev-key]`.

Messages go to stderr; only what a script would capture (a new key) goes to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import structlog

from telemetry import configure_logging

from .auth import ROLES, KeyFileError, append_key, new_key
from .config import Settings, SettingsError
from .storage.db import DatabaseUnreachable, redact_dsn
from .storage.migrate import apply_migrations, create_database

DEV_KEY_NAME = "local-dev"

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
            key, entry = new_key(args.name, [r.strip() for r in args.roles.split(",") if r.strip()])
        except ValueError as exc:
            sys.exit(f"hitl: {exc}")
        append_key(settings.api_keys_file, entry)
        print(key)
        _say(
            f"added key '{args.name}' ({', '.join(entry['roles'])}) to {settings.api_keys_file}; "
            "it is shown only this once"
        )


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


def _say(message: str) -> None:
    print(message, file=sys.stderr)


if __name__ == "__main__":
    main()
