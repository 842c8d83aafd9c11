"""The emulated aarch64 run (``benchmarks/arm64/run.sh``, ``make arm64``) stays runnable and its results stay filed.

The run itself needs root, Debian's archive and PyPI and takes many minutes, so it is not part of the
default suite; these checks are cheap: the script parses, its report renders from what a failed run
leaves, and the committed results and the README's pointer to them exist.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARM64 = ROOT / "benchmarks" / "arm64"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_script_parses() -> None:
    done = subprocess.run(["bash", "-n", str(ARM64 / "run.sh")], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


def test_helpers_compile() -> None:
    for name in ("probe.py", "report.py"):
        compile((ARM64 / name).read_text(), name, "exec")


def test_report_renders_a_run_that_stopped_early(tmp_path: Path) -> None:
    (tmp_path / "run.env").write_text("mode=chroot\ntotal_seconds=12\nrootfs_seconds=3\ndate=2026-12-07\n")
    (tmp_path / "steps.tsv").write_text("step\trc\tseconds\nvenv\t0\t4.0\npip-install\t1\t30.5\n")
    (tmp_path / "pip-install.log").write_text("ERROR: No matching distribution found for foo\n")
    done = subprocess.run(
        [sys.executable, str(ARM64 / "report.py"), str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert '| `pip install -c constraints.txt ".[edge]"` | 1 | 30.5 |' in done.stdout
    assert "not a Jetson" in done.stdout


def test_results_are_committed_and_linked() -> None:
    results = (ARM64 / "RESULTS.md").read_text()
    assert "emulated" in results and "aarch64" in results
    assert "benchmarks/arm64/RESULTS.md" in (ROOT / "README.md").read_text()
    assert "arm64:" in (ROOT / "Makefile").read_text()
