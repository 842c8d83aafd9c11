"""Output formats and the parsers of external tools' reports (fed recorded output lines)."""

from __future__ import annotations

import pytest

from endoedge.bench import report as rep
from endoedge.bench.latency import (
    parse_polygraphy,
    parse_trtexec,
    parse_variant,
    polygraphy_runtimes,
    sweep_plan,
    tile_pixels,
)
from endoedge.bench.stats import RunPlan
from endoedge.core.errors import EndoedgeError

POLYGRAPHY_LOG = (
    "[I] onnxrt-runner-N0-11/22/26-04:08:33  | Completed 3 iteration(s) in 866 ms | Average inference time: 288.7 ms.\n"
)
TRTEXEC_LOG = "\n".join(
    [
        "[11/22/2026-10:00:00] [I] === Performance summary ===",
        "[11/22/2026-10:00:00] [I] Throughput: 1402.32 qps",
        "[11/22/2026-10:00:00] [I] H2D Latency: min = 0.0239258 ms, max = 0.0551758 ms, mean = 0.0257852 ms, "
        "median = 0.0256348 ms, percentile(90%) = 0.0266113 ms, percentile(99%) = 0.0319824 ms",
        "[11/22/2026-10:00:00] [I] GPU Compute Time: min = 0.561279 ms, max = 1.00879 ms, mean = 0.580455 ms, "
        "median = 0.573486 ms, percentile(90%) = 0.587402 ms, percentile(99%) = 0.722778 ms",
        "[11/22/2026-10:00:00] [I] D2H Latency: min = 0.00341797 ms, max = 0.0102539 ms, mean = 0.00395508 ms, "
        "median = 0.00390625 ms, percentile(90%) = 0.00415039 ms, percentile(99%) = 0.00634766 ms",
    ]
)


def test_parse_polygraphy_log_and_results():
    assert parse_polygraphy(POLYGRAPHY_LOG) == {"iterations": 3.0, "total_ms": 866.0, "mean_ms": 288.7}
    assert parse_polygraphy("nothing") == {}
    results = {"lst": [["onnxrt-runner", [{"runtime": 0.4, "outputs": {}}, {"runtime": 0.5}]]]}
    assert polygraphy_runtimes(results) == [0.4, 0.5]
    assert polygraphy_runtimes({"lst": "bad"}) == [] and polygraphy_runtimes([]) == []


def test_parse_trtexec_summary():
    parsed = parse_trtexec(TRTEXEC_LOG)
    assert parsed["median_ms"] == pytest.approx(0.573486)
    assert parsed["p90_ms"] == pytest.approx(0.587402) and parsed["p99_ms"] == pytest.approx(0.722778)
    assert parsed["h2d_ms"] == pytest.approx(0.0256348) and parsed["d2h_ms"] == pytest.approx(0.00390625)


def test_parse_variant():
    assert parse_variant("tflite:xnnpack=false,threads=1") == ("tflite", {"xnnpack": False, "threads": 1})
    assert parse_variant("onnxruntime:optimization=basic") == ("onnxruntime", {"optimization": "basic"})
    assert parse_variant("onnxruntime:spinning=false") == ("onnxruntime", {"spinning": False})
    with pytest.raises(EndoedgeError, match=r"unknown option 'xnpack' for backend 'tflite' \(valid: threads, xnnpack"):
        parse_variant("tflite:xnpack=false")
    for bad in ("tflite", "tflite:", ":a=b", "tflite:xnnpack", "openvino:threads=1"):
        with pytest.raises(EndoedgeError):
            parse_variant(bad)


def test_sweep_plan_and_tiling():
    plan = RunPlan(warmup_runs=3, min_runs=40, min_seconds=2)
    assert sweep_plan(plan, 1) is plan
    assert sweep_plan(plan, 8).min_runs == 5 and sweep_plan(plan, 8).warmup_runs == 2
    import numpy as np

    pixels = np.arange(3).reshape(3, 1, 1, 1).astype(np.uint8)
    assert tile_pixels(pixels, 7)[:, 0, 0, 0].tolist() == [0, 1, 2, 0, 1, 2, 0]


def test_table_aligns_numbers_and_markdown_escapes():
    text = rep.table(["name", "ms"], [["a", 1.23456], ["bb", float("nan")], ["c", None]])
    lines = text.splitlines()
    assert lines[0].split() == ["name", "ms"]
    assert lines[2].endswith("1.23") and lines[3].endswith("-") and lines[4].endswith("-")
    assert len({len(line) for line in lines[:2]}) == 1
    md = rep.markdown_table(["a", "b"], [["x|y", 2.0]])
    assert md.splitlines()[2] == "| x\\|y | 2 |"


def _latency_report(jetson: str = ""):
    timing = {"runs": 30, "p50_ms": 10.0, "p90_ms": 11.0, "p99_ms": 12.0, "mean_ms": 10.2, "throughput": 98.0}
    row = {
        "subject": "endoedge",
        "format": "onnx",
        "threads": 2,
        "batch": 1,
        "timing": timing,
        "resources": {"cpu_percent": 190.0, "peak_rss_mib": 300.0, "peak_rss_scope": "measurement"},
        "status": "ok",
        "reason": "",
        "copy_ms": {},
        "achieved_gflops": None,
    }
    peer = {**row, "subject": "raw-onnxruntime", "timing": {**timing, "p50_ms": 9.0}}
    skipped = {**row, "subject": "endoedge", "format": "trt-int8", "timing": None, "status": "skipped"}
    skipped["reason"] = "tensorrt runtime not installed here"
    machine = {"machine_id": "m", "cpu_model": "cpu", "cpu_cores": 2, "gpu": "none", "jetson_model": jetson}
    return {"bundle": "b", "rows": [row, peer, skipped], "plan": {}, "machine": machine}


def test_latency_table_shows_ratios_statuses_and_mlperf_only_on_jetsons():
    text = rep.latency_text(_latency_report())
    assert "0.90x" in text  # the raw runtime's p50 relative to endoedge's on the same format
    assert "skipped: tensorrt runtime not installed here" in text
    assert "MLPerf" not in text
    orin = rep.latency_text(_latency_report("NVIDIA Jetson AGX Orin Developer Kit"))
    assert "p90 0.64 ms on Jetson AGX Orin" in orin and "Orin NX" not in orin


def test_parity_markdown_and_chart():
    report = {
        "bundle": "b",
        "data": "d.csv",
        "images": 2,
        "reference_source": "savedmodel run here (2 images)",
        "results": [
            {
                "format": "onnx",
                "backend": "onnxruntime",
                "status": "validated",
                "reason": "",
                "metrics": {"top1_agreement": 1.0},
            },
            {"format": "trt-int8", "backend": "", "status": "exported", "reason": "no tensorrt", "metrics": None},
        ],
        "video": {},
        "machine": {"machine_id": "m"},
    }
    md = rep.parity_markdown(report)
    assert "| onnx | onnxruntime | validated | 1 |" in md and "| trt-int8 | - | exported |" in md
    png = rep.parity_chart(report)
    assert png is not None and png[:4] == b"\x89PNG"


def test_nominal_peak_follows_the_simd_flags(monkeypatch):
    from endoedge.bench import flops

    monkeypatch.setattr(flops, "_clock_ghz", lambda: (2.0, "test clock"))
    assert flops.theoretical_peak_gflops(2, ["avx", "avx2", "fma"], "x86_64")[0] == 2 * 32 * 2.0
    assert flops.theoretical_peak_gflops(4, ["avx512f", "avx2", "fma"], "x86_64")[0] == 4 * 64 * 2.0
    assert flops.theoretical_peak_gflops(8, ["asimd"], "aarch64")[0] == 8 * 16 * 2.0
    assert flops.theoretical_peak_gflops(2, [], "x86_64") is None
    assert "test clock" in flops.theoretical_peak_gflops(2, ["avx"], "x86_64")[1]
