"""requirements.lock, what scripts/_venv.sh installs, still satisfies pyproject.toml.

pyproject.toml keeps ranges (``pip install .`` resolves them by itself); the lock pins
each package, runtime and dev, to one version with its hashes (``scripts/lock`` makes it).
A dependency added to or changed in pyproject.toml without ``scripts/lock`` fails here
(``pip check`` in _venv.sh sees only the runtime ones).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).parent.parent


def locked() -> dict[str, tuple[str, list[str]]]:
    """Package name -> (version, hashes) of requirements.lock."""
    text = (ROOT / "requirements.lock").read_text()
    found: dict[str, tuple[str, list[str]]] = {}
    for entry in re.split(r"\n(?=[A-Za-z0-9])", text):
        if entry.startswith("#") or "==" not in entry:
            continue
        name, version = entry.split(" ", 1)[0].split("==")
        found[canonicalize_name(name)] = (
            version,
            re.findall(r"--hash=sha256:([0-9a-f]{64})", entry),
        )
    return found


def test_the_lock_pins_every_dependency_of_pyproject_within_its_range() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    wanted += [Requirement(r) for r in project["optional-dependencies"]["dev"]]
    pins = locked()
    assert len(pins) > len(wanted)  # their own dependencies too
    for requirement in wanted:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not in requirements.lock: run scripts/lock"
        version, _ = pins[name]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"requirements.lock has {name}=={version}, outside {requirement}: run scripts/lock"
        )
    for name, (version, hashes) in pins.items():
        assert hashes, f"{name}=={version} has no hash"
    assert "trio-sfu" not in pins  # the package itself is installed from the tree
