"""telemetry/ is the part another aiohttp service could adopt unchanged."""

from __future__ import annotations

import ast
from pathlib import Path

TELEMETRY = Path(__file__).resolve().parents[2] / "telemetry"


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_telemetry_never_imports_the_service() -> None:
    """No module of telemetry/ imports service/, at any depth of the file."""
    offenders = {
        path.name: sorted(m for m in imported_modules(path) if m.split(".")[0] == "service")
        for path in TELEMETRY.glob("*.py")
    }
    assert sorted(TELEMETRY.glob("*.py")), "telemetry/ not found"
    assert {name: mods for name, mods in offenders.items() if mods} == {}


def test_telemetry_ships_its_type_marker() -> None:
    """py.typed is present, so users of the package get its type hints."""
    assert (TELEMETRY / "py.typed").exists()
