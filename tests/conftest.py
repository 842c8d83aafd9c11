"""Shared fixtures: real endoscopy images (the committed sample and the shared set when present)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# Load TensorFlow (when installed) before any test loads GStreamer's GstApp/GstVideo typelibs: in the
# other order, the first Keras fit in the same process aborts (C++ runtime clash, seen with the pinned
# TF 2.21 wheels and Debian's GStreamer 1.22). The daemon never loads TensorFlow; a desktop tool that
# needs both must import TensorFlow first, as this file does.
with contextlib.suppress(ImportError):
    import tensorflow  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DIR = ROOT / "tests" / "data" / "sample"
SHARED_DATA = Path(os.environ.get("ENDOEDGE_SHARED_DATA", ROOT.parent / "shared" / "data" / "endoscopy"))


@pytest.fixture(scope="session", autouse=True)
def _private_bundle_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Extract ``.tar`` bundles opened by tests (and their daemons) into the session's temporary folder."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ENDOEDGE_BUNDLE_CACHE", str(tmp_path_factory.mktemp("bundle-cache") / "cache"))
        yield


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The 12 committed GastroVision images (4 per class), folder per class."""
    return SAMPLE_DIR


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The GastroVision set beside the repository (1,610 images); skipped when absent."""
    if not (SHARED_DATA / "manifest.csv").is_file():
        pytest.skip(f"shared endoscopy images not found at {SHARED_DATA} (set ENDOEDGE_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def sample_images(sample_dir: Path) -> list[Path]:
    """Paths of the committed sample images, sorted."""
    return sorted(sample_dir.rglob("*.jpg"))


@pytest.fixture(scope="session")
def tiny_bundle(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real bundle (SavedModel, TFLite fp32/int8, ONNX) of a tiny CNN trained on the sample images.

    Built once per test session with real TensorFlow (about 20 s); needs the ``train`` extra.
    """
    pytest.importorskip("tensorflow", reason="building the tiny bundle needs TensorFlow (endoedge[train])")
    pytest.importorskip("tf2onnx", reason="building the tiny bundle needs tf2onnx (endoedge[train])")
    from _bundles import build_tiny_bundle

    return build_tiny_bundle(sample_dir, tmp_path_factory.mktemp("tiny") / "bundle")
