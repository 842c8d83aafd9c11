"""Fixtures of the exporter's tests: a tiny model trained on real images, and its full export."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from _tiny_run import build_tiny_run, write_dataset_csv

ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("ENDOEDGE_SHARED_DATA", ROOT.parent / "shared" / "data" / "endoscopy"))


@pytest.fixture(scope="session")
def export_image_root(sample_dir: Path) -> Path:
    """The shared GastroVision images (the first 410 are used) when present, else the 12 committed samples."""
    return SHARED_DATA if (SHARED_DATA / "manifest.csv").is_file() else sample_dir


@pytest.fixture(scope="session")
def export_dataset(export_image_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset manifest CSV over the real images."""
    return write_dataset_csv(export_image_root, tmp_path_factory.mktemp("data") / "images.csv")


@pytest.fixture(scope="session")
def tiny_run(export_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A training run folder (model.keras + manifest.json) of a tiny CNN trained on real images."""
    pytest.importorskip("tensorflow", reason="exporting needs TensorFlow (endoedge[train])")
    return build_tiny_run(export_dataset, tmp_path_factory.mktemp("run") / "tiny")


@pytest.fixture(scope="session")
def full_export(tiny_run: Path, export_dataset: Path, tmp_path_factory: pytest.TempPathFactory):
    """Every CPU format; artifacts that miss their target are kept (marked) so each can be inspected."""
    from endoedge.export.pipeline import DEFAULT_FORMATS, ExportSettings, export_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    settings = ExportSettings(formats=DEFAULT_FORMATS, dataset=export_dataset, allow_parity_loss=True, tar=True)
    return export_bundle(tiny_run, out, settings)
