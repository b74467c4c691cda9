"""Dependencies inside service/ point one way: api -> domain <- storage."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SERVICE = Path(__file__).resolve().parents[2] / "service"
DOMAIN = SERVICE / "domain"

# What only storage (or the app factory) may touch: the drivers and the SQL modules.
STORAGE_ONLY = ("service.storage", "aiopg", "psycopg2", "redis")
SQL = re.compile(r"\b(SELECT\s.+\sFROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM)\b", re.S)


def imports_of(path: Path) -> set[str]:
    """Absolute names of every module the file imports (relative imports resolved)."""
    package = ".".join(path.relative_to(SERVICE.parent).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            names.add(module)
    return names


def test_the_domain_reaches_storage_only_through_its_own_protocols() -> None:
    """No module of service/domain imports storage or a database/cache driver."""
    offenders = {
        path.name: sorted(m for m in imports_of(path) if m.startswith(STORAGE_ONLY))
        for path in sorted(DOMAIN.glob("*.py"))
    }
    assert offenders, "service/domain not found"
    assert {name: mods for name, mods in offenders.items() if mods} == {}


def test_the_domain_holds_no_sql() -> None:
    """SQL statements live in service/storage only; the domain holds none and never
    reaches for a store's connection."""
    found = {
        path.name: [
            text
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant) and isinstance(text := node.value, str)
            if SQL.search(text.upper())
        ]
        + [line for line in path.read_text().splitlines() if re.search(r"\.db\b|\btx\.", line)]
        for path in sorted(DOMAIN.glob("*.py"))
    }
    assert {name: hits for name, hits in found.items() if hits} == {}


def test_storage_never_imports_the_api() -> None:
    """storage/ may use the domain's models and errors, never the HTTP layer."""
    offenders = {
        path.name: sorted(m for m in imports_of(path) if m.startswith("service.api"))
        for path in sorted((SERVICE / "storage").glob("*.py"))
    }
    assert {name: mods for name, mods in offenders.items() if mods} == {}
