"""setup.cfg declares what the code imports, and the lock file pins all of it.

Quick, offline checks beside the slow install test (test_wheel.py): every third-party
module that service/ or telemetry/ imports belongs to a distribution named in
``install_requires`` (mapped through the files the installed distributions own), every
named distribution is imported, and the lock file pins each at an allowed version, with
hashes and nothing but index downloads.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from functools import cache
from pathlib import Path

from packaging.utils import canonicalize_name

from .requirements import LOCK, declared_names, install_requires, lock_pins, third_party_imports


@cache
def _owners() -> dict[Path, str]:
    """Installed file -> the distribution that owns it."""
    owners: dict[Path, str] = {}
    for dist in importlib.metadata.distributions():
        for file in dist.files or []:
            owners[Path(str(dist.locate_file(file))).resolve()] = canonicalize_name(dist.metadata["Name"])
    return owners


def distribution_of(module: str) -> str | None:
    """The distribution providing ``module``; ``a.b`` (from ``from a import b``) is the
    submodule ``a.b`` when there is one, else ``a``."""
    for name in (module, module.rpartition(".")[0]):
        if not name:
            continue
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        if spec is None or not spec.origin or not Path(spec.origin).is_file():
            continue  # absent, or a namespace package: only the submodule tells
        return _owners().get(Path(spec.origin).resolve())
    return None


def test_every_third_party_import_is_declared() -> None:
    declared = declared_names()
    unknown: list[str] = []
    undeclared: dict[str, set[str]] = {}
    for module, files in sorted(third_party_imports().items()):
        dist = distribution_of(module)
        if dist is None:
            unknown.append(f"{module} ({', '.join(sorted(files))})")
        elif dist not in declared:
            undeclared.setdefault(dist, set()).update(f"{module} in {f}" for f in files)
    assert not unknown, f"no installed distribution provides: {unknown}"
    assert not undeclared, (
        "imported by service/ or telemetry/ but not in setup.cfg install_requires "
        f"(a plain `pip install .` would miss them): {undeclared}"
    )


def test_every_declared_distribution_is_imported() -> None:
    imported = {distribution_of(module) for module in third_party_imports()}
    unused = declared_names() - imported
    assert not unused, f"install_requires names distributions nothing imports: {sorted(unused)}"


def test_lock_pins_every_runtime_requirement_at_an_allowed_version() -> None:
    pins = lock_pins()
    problems = []
    for requirement in install_requires():
        version = pins.get(canonicalize_name(requirement.name))
        if version is None:
            problems.append(f"{requirement.name} is not in the lock")
        elif not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"lock pins {requirement.name}=={version}, setup.cfg says {requirement}")
    assert not problems, f"{LOCK.name} is stale; run `make lock`: {problems}"
    assert "hitl" not in pins, "the lock holds the dependencies, not the service itself"


def test_lock_has_hashes_and_no_local_sources() -> None:
    text = LOCK.read_text()
    assert "make lock" in text.splitlines()[1], "the header names the command that refreshes it"
    pins = lock_pins()
    hashed = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==\S+ \\\n\s+--hash=sha256:[0-9a-f]{64}", text, re.M)
    assert len(hashed) == len(pins), "every pin carries its hashes (pip --require-hashes)"
    local = re.findall(r"file:|/opt/|/tmp/|/work/|/root/|/home/|^\s*-[ef] |--(?:extra-)?index-url|--find-links",
                       text, re.M)
    assert not local, f"the lock must resolve against the public index alone: {local}"
