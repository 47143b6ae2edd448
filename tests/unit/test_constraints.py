"""constraints.txt is the set of versions the suite passes with: what runs the tests must be
exactly that set, and it must cover everything pyproject.toml asks for.

A failure here means the environment drifted from the lock (reinstall: `make test` does it when
constraints.txt is newer than the venv) or pyproject.toml changed without `make lock`.
"""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
CONSTRAINTS = ROOT / "constraints.txt"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)$")


def pins() -> dict[str, str]:
    pinned: dict[str, str] = {}
    for number, line in enumerate(CONSTRAINTS.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = PIN.match(line)
        assert match, f"constraints.txt:{number}: not a `name==version` pin: {line!r}"
        pinned[canonicalize_name(match[1])] = match[2]
    return pinned


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        listed.extend(extra)
    return [Requirement(text) for text in listed]


def marker_holds(marker: Marker | None, extras: set[str]) -> bool:
    if marker is None:
        return True
    return any(marker.evaluate({"extra": extra}) for extra in extras or {""})


def test_every_pin_is_the_installed_version() -> None:
    drifted = {}
    for name, version in pins().items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = "not installed"
        if installed != version:
            drifted[name] = f"pinned {version}, installed {installed}"
    assert not drifted, f"the environment is not constraints.txt: {drifted}"


def test_pyproject_dependencies_are_pinned_within_their_ranges() -> None:
    pinned = pins()
    missing, outside = [], []
    for requirement in project_requirements():
        name = canonicalize_name(requirement.name)
        if name not in pinned:
            missing.append(requirement.name)
        elif not requirement.specifier.contains(pinned[name], prereleases=True):
            outside.append(f"{requirement} (pinned {pinned[name]})")
    assert not missing, f"in pyproject.toml, not in constraints.txt (run `make lock`): {missing}"
    assert not outside, f"pins outside pyproject.toml's ranges (run `make lock`): {outside}"


def test_everything_installed_for_the_project_is_pinned() -> None:
    """The lock is complete: every distribution the project's requirements pull in (with their
    extras, e.g. uvicorn[standard]) is pinned, so no transitive library floats."""
    pinned = pins()
    unpinned: set[str] = set()
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(requirement.name, set(requirement.extras)) for requirement in project_requirements()]
    while todo:
        name, extras = todo.pop()
        key = (canonicalize_name(name), frozenset(extras))
        if key in seen:
            continue
        seen.add(key)
        if key[0] not in pinned:
            unpinned.add(key[0])
        for text in importlib.metadata.requires(name) or []:
            requirement = Requirement(text)
            if marker_holds(requirement.marker, extras):
                todo.append((requirement.name, set(requirement.extras)))
    assert not unpinned, f"installed for the project but not pinned (run `make lock`): {unpinned}"
