"""The dependency rules: core and edge never import TensorFlow; core imports no other endoedge package;
inside edge, the pure stages import no video, service or box code, video imports no stage, and the task
worker never imports the display loop that drives it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "endoedge"

BLOCK_TF = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('tensorflow', 'keras', 'tf2onnx', 'tf_keras'):
            raise ImportError('blocked for the boundary test: ' + name)
        return None
sys.meta_path.insert(0, Block())
import pkgutil, importlib
import endoedge.{package} as pkg
for info in pkgutil.walk_packages(pkg.__path__, 'endoedge.{package}.'):
    importlib.import_module(info.name)
print('ok', sorted(m for m in sys.modules if m.startswith('endoedge.{package}')).__len__())
"""


@pytest.mark.parametrize("package", ["core", "edge"])
def test_package_imports_without_tensorflow(package: str) -> None:
    done = subprocess.run([sys.executable, "-c", BLOCK_TF.format(package=package)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("ok")


def imported_modules(path: Path) -> set[str]:
    """Every absolute module an import statement names (``from a import b`` names ``a`` and ``a.b``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


#: Inside ``endoedge.edge``: the folders (or modules) each folder must not import from. The pure stages
#: stay pure (no video, threads, service or box code under them), video knows nothing of the stages, and
#: the task worker never takes from the display loop that drives it.
EDGE_LAYERS: dict[str, tuple[str, ...]] = {
    "edge/stages": ("endoedge.edge.video", "endoedge.edge.service", "endoedge.edge.box"),
    "edge/video": ("endoedge.edge.stages",),
    "edge/service/worker.py": ("endoedge.edge.service.daemon",),
}


def _names(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _forbidden(package: str, name: str, layers: list[str]) -> bool:
    if name.split(".")[0] in ("tensorflow", "keras", "tf2onnx", "tf_keras"):
        return True
    if package == "core" and name.startswith("endoedge."):
        return not (_names(name, "endoedge.core") or _names(name, "endoedge.__about__"))
    return any(_names(name, prefix) for prefix in layers)


def boundary_violations(root: Path) -> list[str]:
    """Every import that breaks the rule, as ``file: module``."""
    bad = []
    for package in ("core", "edge"):
        for file in sorted((root / package).rglob("*.py")):
            relative = file.relative_to(root).as_posix()
            layers = [
                prefix
                for where, prefixes in EDGE_LAYERS.items()
                if relative == where or relative.startswith(where + "/")
                for prefix in prefixes
            ]
            names = [name for name in sorted(imported_modules(file)) if _forbidden(package, name, layers)]
            # ``from a.b import c`` names a.b and a.b.c: report the import once, by its module.
            bad += [f"{relative}: {n}" for n in names if not any(_names(n, other) for other in names if other != n)]
    return bad


def test_no_forbidden_imports_in_source() -> None:
    assert boundary_violations(SRC) == []


def test_boundary_check_catches_a_forbidden_import(tmp_path) -> None:
    for package in ("core", "edge"):
        (tmp_path / package).mkdir()
    (tmp_path / "core" / "ok.py").write_text("import numpy\nfrom endoedge.core import labels\n")
    (tmp_path / "core" / "sneaky.py").write_text("from endoedge.edge.service import daemon\n")
    (tmp_path / "edge" / "heavy.py").write_text("def f():\n    import tensorflow as tf\n")
    assert boundary_violations(tmp_path) == ["core/sneaky.py: endoedge.edge.service", "edge/heavy.py: tensorflow"]


def _edge_tree(root: Path, files: dict[str, str]) -> Path:
    for package in ("core", "edge/stages", "edge/video", "edge/service", "edge/box"):
        (root / package).mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / name).write_text(text)
    return root


def test_layer_check_allows_the_layout_as_built(tmp_path) -> None:
    root = _edge_tree(
        tmp_path,
        {
            "edge/stages/tasks.py": "from endoedge.edge.config import SmoothingConfig\n"
            "from endoedge.edge.stages import coverage\n",
            "edge/video/sinks.py": "from endoedge.edge.types import Sink\n"
            "from endoedge.edge.video.sources import split_uri\n",
            "edge/service/worker.py": "from endoedge.edge.stages.tasks import ExamSession\n"
            "from endoedge.edge.service import meters\n",
            "edge/service/daemon.py": "from endoedge.edge.service.worker import TaskWorker\n"
            "from endoedge.edge.video import sources\n",
        },
    )
    assert boundary_violations(root) == []


def test_layer_check_catches_a_stage_importing_video_service_or_box(tmp_path) -> None:
    root = _edge_tree(
        tmp_path,
        {
            "edge/stages/overlay.py": "def f():\n    from endoedge.edge.video.sinks import open_sink\n",
            "edge/stages/tasks.py": "from endoedge.edge.service import report\n",
            "edge/stages/coverage.py": "import endoedge.edge.box.bundle_store\n",
        },
    )
    assert boundary_violations(root) == [
        "edge/stages/coverage.py: endoedge.edge.box.bundle_store",
        "edge/stages/overlay.py: endoedge.edge.video.sinks",
        "edge/stages/tasks.py: endoedge.edge.service",
    ]


def test_layer_check_catches_video_importing_a_stage_and_the_worker_importing_the_loop(tmp_path) -> None:
    root = _edge_tree(
        tmp_path,
        {
            "edge/video/sources.py": "from endoedge.edge.stages.types import OverlayState\n",
            "edge/service/worker.py": "from endoedge.edge.service.daemon import log_event\n",
        },
    )
    assert boundary_violations(root) == [
        "edge/service/worker.py: endoedge.edge.service.daemon",
        "edge/video/sources.py: endoedge.edge.stages.types",
    ]
