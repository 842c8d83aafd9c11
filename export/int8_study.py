"""INT8 study: how each quantization recipe and each way of *running* a Q/DQ model agrees with float.

Usage (the numbers in export/README.md come from runs like these)::

    nice -n 10 .venv/bin/python export/int8_study.py --onnx MODEL.onnx --spec inception:299 \\
        --dataset train/data/gastrovision3.csv --calibration 64 --holdout 96 \\
        --variants ort-default,ort-default@opt,ort-u8s8-rr@opt,trt,trt@opt,trt-percentile,trt-entropy

A variant is a recipe name, optionally with ``@opt``: by default the Q/DQ model runs with ONNX
Runtime's graph optimisations *off* (every QuantizeLinear/DequantizeLinear executed literally:
the arithmetic a TensorRT INT8 engine reproduces with 32-bit accumulation); ``@opt`` runs it with
optimisations on, i.e. with ONNX Runtime's fused integer CPU kernels.

Prints one Markdown row per variant: top-1 agreement with the float ONNX model, max |Δp|, mean |Δp|.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from endoedge.core.labels import get_labelset  # noqa: E402
from endoedge.core.preprocess import PreprocessSpec, normalize  # noqa: E402
from endoedge.export.calibration import load_plan, prepare_records  # noqa: E402
from endoedge.export.onnx_int8 import Int8Recipe, preprocess_for_quantization, quantize_int8  # noqa: E402

RECIPES = {
    # What the 2026-11 probe ran: every quantizable op, per-channel symmetric weights, S8 activations.
    "ort-default": Int8Recipe(op_types=(), calibration_method="minmax"),
    # ONNX Runtime's advice for x86 without VNNI: U8 asymmetric activations, 7-bit weights.
    "ort-u8s8-rr": Int8Recipe(op_types=(), calibration_method="minmax", symmetric_activations=False, reduce_range=True),
    "ort-default-rr": Int8Recipe(op_types=(), calibration_method="minmax", reduce_range=True),
    "ort-asym": Int8Recipe(op_types=(), calibration_method="minmax", symmetric_activations=False),
    # Diagnostic only: TensorRT needs symmetric activations.
    "trt-asym": Int8Recipe(calibration_method="minmax", symmetric_activations=False),
    "trt-entropy-asym": Int8Recipe(calibration_method="entropy", symmetric_activations=False),
    # TensorRT-friendly placement: Q/DQ only on inputs of Conv/Gemm/MatMul and residual Add.
    "trt": Int8Recipe(calibration_method="minmax"),
    "trt-conv-only": Int8Recipe(calibration_method="minmax", op_types=("Conv", "ConvTranspose", "Gemm", "MatMul")),
    "trt-rr": Int8Recipe(calibration_method="minmax", reduce_range=True),
    "trt-percentile": Int8Recipe(calibration_method="percentile", percentile=99.99),
    "trt-p999": Int8Recipe(calibration_method="percentile", percentile=99.9),
    "trt-p995": Int8Recipe(calibration_method="percentile", percentile=99.5),
    "trt-p99": Int8Recipe(calibration_method="percentile", percentile=99.0),
    "trt-p99999": Int8Recipe(calibration_method="percentile", percentile=99.999),
    "trt-entropy": Int8Recipe(calibration_method="entropy"),
    "trt-per-tensor": Int8Recipe(calibration_method="minmax", per_channel=False),
    "trt-entropy-all-ops": Int8Recipe(op_types=(), calibration_method="entropy"),
}


def run(onnx_path: Path, pixels: np.ndarray, spec: PreprocessSpec, optimize: bool) -> np.ndarray:
    """Probabilities of an ONNX model on prepared pixels (batch 1, 2 threads)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: normalize(p[None], spec)})[0] for p in pixels])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--onnx", required=True, type=Path)
    parser.add_argument("--spec", default="inception:299", help="normalization:size of the model input")
    parser.add_argument("--dataset", required=True, type=Path)
    parser.add_argument("--labelset", default="gastrovision3")
    parser.add_argument("--calibration", type=int, default=64)
    parser.add_argument("--holdout", type=int, default=96)
    parser.add_argument("--variants", default="ort-default,ort-default@opt,trt,trt@opt")
    parser.add_argument("--exclude", default="", help="node names kept float in every variant")
    args = parser.parse_args()
    family, size = args.spec.split(":")
    spec = PreprocessSpec.for_family(family, int(size))
    plan = load_plan(args.dataset, get_labelset(args.labelset), args.calibration, args.holdout)
    holdout = prepare_records(plan.holdout, spec)
    calibration = prepare_records(plan.calibration, spec)
    exclude = tuple(n for n in args.exclude.split(",") if n)
    print(f"model {args.onnx.name}: {len(calibration)} calibration, {len(holdout)} held-out images", flush=True)
    with tempfile.TemporaryDirectory(prefix="int8-study-") as tmp_name:
        tmp = Path(tmp_name)
        prepared = preprocess_for_quantization(args.onnx, tmp / "prepared.onnx")
        t0 = time.time()
        reference = run(prepared, holdout, spec, optimize=True)
        print(f"float reference: {time.time() - t0:.0f} s", flush=True)
        print("| variant | run as | agreement | max abs dp | mean abs dp | quantize s |")
        print("|---|---|---|---|---|---|")
        built: dict[str, tuple[Path, float]] = {}
        for variant in args.variants.split(","):
            name, _, how = variant.partition("@")
            recipe = RECIPES[name].with_excluded(exclude)
            if name not in built:
                t0 = time.time()
                out = tmp / f"{name}.onnx"
                quantize_int8(prepared, out, calibration, spec, recipe, cache_dir=tmp / "cache")
                built[name] = (out, time.time() - t0)
            path, seconds = built[name]
            probs = run(path, holdout, spec, optimize=how == "opt")
            agree = float((probs.argmax(1) == reference.argmax(1)).mean())
            delta = np.abs(probs - reference)
            mode = "ORT integer kernels" if how == "opt" else "Q/DQ literal (TensorRT arithmetic)"
            print(
                f"| {name} | {mode} | {agree * 100:.1f} % | {delta.max():.3f} | {delta.mean():.4f} | {seconds:.0f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
