"""What the packaging tests read: setup.cfg's runtime requirements, the lock file, and
the third-party imports of service/ and telemetry/."""

from __future__ import annotations

import ast
import configparser
import re
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "ops" / "requirements" / "runtime.lock.txt"
FIRST_PARTY = ("service", "telemetry")


def install_requires() -> list[Requirement]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    lines = config["options"]["install_requires"].splitlines()
    return [Requirement(line.strip()) for line in lines if line.strip() and not line.strip().startswith("#")]


def declared_names() -> set[str]:
    return {canonicalize_name(r.name) for r in install_requires()}


_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def lock_pins() -> dict[str, str]:
    """``{canonical name: version}`` of every ``name==version`` line of the lock file."""
    pins: dict[str, str] = {}
    for line in LOCK.read_text().splitlines():
        match = _PIN.match(line)
        if match:
            pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def third_party_imports() -> dict[str, set[str]]:
    """``{imported module: {files}}`` for every absolute import of a module that is
    neither the standard library nor ours. ``from a import b`` yields ``a.b`` (``b``
    may be a submodule; the caller finds out), every node of the tree counts, so
    imports inside functions (the gRPC exporter) are included."""
    found: dict[str, set[str]] = {}

    def add(module: str, path: Path) -> None:
        top = module.split(".")[0]
        if top in sys.stdlib_module_names or top in FIRST_PARTY or top == "__future__":
            return
        found.setdefault(module, set()).add(str(path.relative_to(ROOT)))

    for package in FIRST_PARTY:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    for alias in node.names:
                        add(alias.name, path)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    for alias in node.names:
                        add(f"{node.module}.{alias.name}", path)
    return found
