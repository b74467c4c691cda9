"""telemetry/ is the part another aiohttp service could adopt unchanged."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TELEMETRY = ROOT / "telemetry"
SERVICE = ROOT / "service"


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def names_imported_from(path: Path, module: str) -> set[str]:
    """Names taken with ``from <module> import ...``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == module:
            names.update(alias.name for alias in node.names)
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


def test_the_service_uses_only_telemetrys_public_surface() -> None:
    """service/ imports ``telemetry`` itself (never a submodule such as
    telemetry.tracing), and only names listed in its ``__all__``."""
    import telemetry

    public = set(telemetry.__all__)
    submodules: dict[str, list[str]] = {}
    private: dict[str, list[str]] = {}
    for path in sorted(SERVICE.rglob("*.py")):
        name = str(path.relative_to(ROOT))
        deep = sorted(m for m in imported_modules(path) if m.startswith("telemetry."))
        if deep:
            submodules[name] = deep
        outside = sorted(names_imported_from(path, "telemetry") - public)
        if outside:
            private[name] = outside
    assert submodules == {}
    assert private == {}


def test_telemetry_knows_no_service_by_name() -> None:
    """No module of telemetry/ names hitl: the service passes its names in settings."""
    mentions = {
        path.name: [n for n, line in enumerate(path.read_text().splitlines(), 1) if "hitl" in line.lower()]
        for path in TELEMETRY.glob("*.py")
    }
    assert {name: lines for name, lines in mentions.items() if lines} == {}
