"""Soak: 1080p30 tower frames through the real daemon process; memory, threads, descriptors and the
display backlog must not grow. Two minutes in the default suite, one hour with ``-m slow`` (the same
function as ``benchmarks/soak/soak.py``, which prints the figures for the record)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytest.importorskip("endoedge.edge.service.daemon", reason="the daemon module is not built yet")
pytest.importorskip("ai_edge_litert", reason="the soak runs the real LiteRT backend")

ROOT = Path(__file__).resolve().parents[2]
DEMO_BUNDLE = ROOT / "export" / "bundles" / "gastrovision3-efficientnet-lite0"


def _soak_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("endoedge_soak", ROOT / "benchmarks" / "soak" / "soak.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def soak_bundle(tiny_bundle: Path) -> Path:
    """The shipped demo bundle when present (a real MobileNetV3), else the tiny test bundle."""
    return DEMO_BUNDLE if (DEMO_BUNDLE / "manifest.json").is_file() else tiny_bundle


def _check(result: dict[str, Any]) -> None:
    summary = {k: v for k, v in result.items() if k != "samples"}
    print("[figure] soak: " + json.dumps(summary))
    assert result["rss_growth_pct"] < 5.0, summary
    assert result["threads"]["final"] <= result["threads"]["baseline"] + 2, summary
    assert result["threads"]["max"] <= result["threads"]["baseline"] + 6, summary
    assert result["fds"]["final"] <= result["fds"]["baseline"] + 2, summary
    assert result["backlog"]["max"] <= 2, summary  # frames read but not yet shown: never a queue
    assert result["backend_errors"] == 0 and result["sink_errors"] == 0, summary
    assert result["tracebacks_in_log"] == 0, summary
    assert result["frames_shown"] >= 5 * result["duration_s"], summary  # the video kept flowing (any load)


def test_soak_two_minutes(tmp_path: Path, soak_bundle: Path) -> None:
    result = _soak_module().soak(soak_bundle, 120.0, tmp_path, sample_every_s=5.0, warmup_s=60.0)
    _check(result)


@pytest.mark.slow
@pytest.mark.timeout(5400)
def test_soak_one_hour(tmp_path: Path, soak_bundle: Path) -> None:
    result = _soak_module().soak(soak_bundle, 3600.0, tmp_path, sample_every_s=30.0, warmup_s=300.0)
    _check(result)
