"""Q/DQ INT8 recipe details and the mixed-precision search, on the tiny trained model's real ONNX."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from endoedge.export.calibration import load_plan, prepare_records
from endoedge.export.int8_search import node_sensitivity, run_onnx, search_mixed_precision
from endoedge.export.onnx_int8 import Int8Recipe, preprocess_for_quantization, quantize_int8

pytest.importorskip("tensorflow", reason="the tiny model's ONNX comes from an export (endoedge[train])")


@pytest.fixture(scope="module")
def material(full_export, export_dataset, tmp_path_factory):
    manifest = full_export.manifest
    work = tmp_path_factory.mktemp("int8")
    prepared = preprocess_for_quantization(full_export.bundle / "model.onnx", work / "prepared.onnx")
    # 48 + 24 images from the shared set; what the 12 committed sample images allow without it.
    from endoedge.core.datasets import load_dataset

    count = len(load_dataset(export_dataset, manifest.labelset))
    holdout = min(24, count // 3)
    plan = load_plan(export_dataset, manifest.labelset, calibration_size=min(48, count - holdout), holdout_size=holdout)
    spec = manifest.preprocess
    return prepared, prepare_records(plan.calibration, spec), prepare_records(plan.holdout, spec), spec, work


def _consumers_of_dequantized(path: Path) -> set[str]:
    import onnx

    model = onnx.load(str(path))
    dq_outputs = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {n.name for n in model.graph.node if any(i in dq_outputs for i in n.input)}


def test_excluded_nodes_stay_float_and_others_are_quantized(material):
    prepared, calibration, _, spec, work = material
    recipe = Int8Recipe()
    full = quantize_int8(prepared, work / "full.onnx", calibration, spec, recipe, cache_dir=work / "cache")
    quantized = _consumers_of_dequantized(full)
    convs = [n for n in quantized if "conv" in n.lower() or "Conv" in n]
    assert convs, quantized
    keep = sorted(convs)[:2]
    partial = quantize_int8(
        prepared, work / "partial.onnx", calibration, spec, recipe.with_excluded(keep), cache_dir=work / "cache"
    )
    still = _consumers_of_dequantized(partial)
    assert not set(keep) & still
    assert (quantized - set(keep)) <= still
    assert "2 node(s) kept float" in recipe.with_excluded(keep).describe()


@pytest.mark.slow
def test_calibration_method_changes_the_scales(material):
    prepared, calibration, holdout, spec, work = material
    minmax = quantize_int8(
        prepared, work / "mm.onnx", calibration, spec, Int8Recipe(calibration_method="minmax"), cache_dir=work / "c"
    )
    pct = quantize_int8(
        prepared,
        work / "pct.onnx",
        calibration,
        spec,
        Int8Recipe(calibration_method="percentile", percentile=99.0),
        cache_dir=work / "c",
    )
    assert minmax.read_bytes() != pct.read_bytes()
    reference = run_onnx(prepared, holdout, spec)
    for path in (minmax, pct):
        probs = run_onnx(path, holdout, spec)
        assert probs.shape == reference.shape
        assert (probs.argmax(1) == reference.argmax(1)).mean() >= 0.8


def test_sensitivity_ranks_every_quantized_node(material):
    prepared, calibration, _, spec, work = material
    qdq = quantize_int8(prepared, work / "s.onnx", calibration, spec, Int8Recipe(), cache_dir=work / "cache")
    ranking = node_sensitivity(prepared, qdq, calibration[:4], spec, Int8Recipe().op_types)
    names = [name for name, _ in ranking]
    assert len(names) == len(set(names)) >= 5
    scores = [score for _, score in ranking]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0
    assert all(np.isfinite(scores))


@pytest.mark.slow
def test_search_stops_at_the_target_or_returns_the_best_it_tried(material):
    prepared, calibration, _, spec, work = material
    easy, lines = search_mixed_precision(
        prepared, calibration, spec, Int8Recipe(), budget=4, target=0.5, work_dir=work / "easy", cache_dir=work / "c2"
    )
    assert easy.exclude_nodes == () and len(lines) == 1
    hard, lines = search_mixed_precision(
        prepared, calibration, spec, Int8Recipe(), budget=2, target=1.01, work_dir=work / "hard", cache_dir=work / "c2"
    )
    assert any("not reached" in line for line in lines)
    assert any(line.startswith("most sensitive:") for line in lines)
    assert len(hard.exclude_nodes) <= 2
