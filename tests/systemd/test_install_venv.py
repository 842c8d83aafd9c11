"""The installer's real virtualenv step: venv --system-site-packages from the system Python, pip install of a
wheel, skipped when unchanged, replaced when the wheel changes. Slow (venv + pip, ~30 s)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from endoedge.__about__ import __version__
from endoedge.edge.box.install import tree_digest

ROOT = Path(__file__).resolve().parents[2]
PYTHON = "/usr/bin/python3"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(PYTHON).exists(), reason="needs the system Python /usr/bin/python3"),
]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot build the wheel here (build isolation needs PyPI): {done.stderr[-300:]}")
    return next(out.glob("endoedge-*.whl"))


def _install(root: Path, wheel: Path) -> str:
    done = subprocess.run(
        [str(ROOT / "systemd/install.sh"), "--prefix", str(root), "--wheel", str(wheel), "--no-bundle",
         "--pip-arg=--no-deps", "--pip-arg=--no-index"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHON": PYTHON},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_real_venv_from_a_wheel(tmp_path: Path, wheel: Path) -> None:
    root = tmp_path / "root"
    first = _install(root, wheel)
    venv = root / "opt/endoedge/venv"
    assert "include-system-site-packages = true" in (venv / "pyvenv.cfg").read_text()
    version = subprocess.run(
        [str(venv / "bin/endoedge"), "--version"], capture_output=True, text=True,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": ""},
    )  # fmt: skip
    assert version.stdout.strip() == f"endoedge {__version__}"
    assert "Successfully installed endoedge" in first

    digest = tree_digest(root)
    second = _install(root, wheel)
    assert "unchanged (same endoedge already installed)" in second and tree_digest(root) == digest

    # A rebuilt wheel of the same version number (an updated checkout) is installed, not skipped.
    changed = tmp_path / wheel.name
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(changed, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "endoedge/edge/box/install.py":
                data += b"\n# changed\n"
            dst.writestr(item, data)
    third = _install(root, changed)
    assert "--force-reinstall --no-deps" in third
    installed = next(venv.glob("lib/python3*/site-packages/endoedge/edge/box/install.py"))
    assert installed.read_text().endswith("# changed\n")
