"""constraints.txt stays consistent with pyproject.toml for every platform endoedge is installed on.

The pins are applied with ``pip install -c constraints.txt`` by ``make test``/``make demo`` and the Jetson
installer. A pin outside pyproject's range, or two pins of one package that both apply to one platform,
makes that install fail on the box where it matters (a Jetson on JetPack 6 has Python 3.10 on aarch64),
which this machine (Python 3.11, x86_64) would never notice by installing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads pyproject.toml with tomllib")

ROOT = Path(__file__).resolve().parents[1]

# (python_version, platform_machine): this machine, JetPack 6, JetPack 7 (Ubuntu 24.04), a py3.10 desktop.
PLATFORMS = [("3.11", "x86_64"), ("3.10", "aarch64"), ("3.12", "aarch64"), ("3.10", "x86_64")]


def _constraints() -> list[Requirement]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    return [Requirement(line) for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        specs.extend(extra)
    return [Requirement(spec) for spec in specs]


def _environment(python: str, machine: str) -> dict[str, str]:
    env = default_environment()
    env.update(python_version=python, python_full_version=f"{python}.0", platform_machine=machine, extra="")
    return env


@pytest.mark.parametrize(("python", "machine"), PLATFORMS)
def test_every_pin_is_unique_and_inside_pyprojects_range(python: str, machine: str) -> None:
    env = _environment(python, machine)
    pins: dict[str, str] = {}
    for pin in _constraints():
        if pin.marker is not None and not pin.marker.evaluate(env):
            continue
        (spec,) = pin.specifier  # a constraint is one exact version
        assert spec.operator == "==", f"{pin}: constraints pin exact versions"
        name = canonicalize_name(pin.name)
        assert name not in pins, f"{name} pinned twice for Python {python} on {machine}: {pins[name]} and {spec}"
        pins[name] = spec.version
    assert {"numpy", "onnxruntime", "opencv-python-headless", "pydantic"} <= set(pins), "the edge stack is pinned"
    for requirement in _project_requirements():
        if requirement.marker is not None and not requirement.marker.evaluate(env):
            continue
        version = pins.get(canonicalize_name(requirement.name))
        if version is not None:
            assert requirement.specifier.contains(version, prereleases=True), (
                f"constraints.txt pins {requirement.name}=={version} for Python {python} on {machine}, "
                f"outside pyproject's {requirement}"
            )
