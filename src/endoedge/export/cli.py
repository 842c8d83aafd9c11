"""``endoedge export``: a trained model to a verified bundle.

Examples::

    endoedge export train/results/gastrovision3-efficientnet-lite0 \\
        -o export/bundles/gastrovision3-efficientnet-lite0 --dataset train/data/gastrovision3-full.csv \\
        --formats tflite-int8,tflite-fp32,onnx,onnx-int8
    endoedge export runs/resenet/model.keras --manifest runs/resenet/manifest.json -o bundles/resenet \\
        --dataset data/egd30.csv --formats all-cpu --tar
    endoedge export --formats-table
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from endoedge.core.formats import formats_markdown_table
from endoedge.export.calibration import DEFAULT_CALIBRATION_SIZE
from endoedge.export.onnx_int8 import CALIBRATION_METHODS, TRT_OP_TYPES, Int8Recipe
from endoedge.export.source import ExportError


def build_parser(prog: str) -> argparse.ArgumentParser:
    """The argument parser (kept separate for documentation and tests)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Export a trained model to a bundle: artifacts, sha256 manifest, parity against the float model.",
    )
    parser.add_argument("source", nargs="?", help="training run folder (model.keras + manifest.json) or a .keras file")
    parser.add_argument("-o", "--output", help="bundle folder to create")
    parser.add_argument("--manifest", help="model manifest of a bare .keras file (default: manifest.json beside it)")
    parser.add_argument("--dataset", help="dataset manifest CSV: calibration and held-out parity images")
    parser.add_argument(
        "--formats",
        default="all-cpu",
        help="comma-separated format keys, or all-cpu (default) for every format that runs here",
    )
    parser.add_argument("--formats-table", action="store_true", help="print the format table (Markdown) and exit")
    parser.add_argument("--calibration-size", type=int, default=DEFAULT_CALIBRATION_SIZE, help="calibration images")
    parser.add_argument("--holdout-size", type=int, help="held-out parity images (default: 1/4 of the images, <= 512)")
    parser.add_argument("--split", choices=("train", "val", "test"), help="use only this split of the dataset")
    parser.add_argument("--seed", type=int, default=0, help="image order seed")
    parser.add_argument(
        "--allow-parity-loss", action="store_true", help="keep artifacts that miss their parity target (marked)"
    )
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17)")
    int8 = parser.add_argument_group("ONNX INT8 (onnx-int8)")
    int8.add_argument(
        "--calibration-method", choices=CALIBRATION_METHODS, help="activation range method (default: percentile)"
    )
    int8.add_argument("--percentile", type=float, help="percentile of |activation| kept (default: 99.99)")
    int8.add_argument("--int8-exclude", default="", help="comma-separated ONNX node names to keep float")
    int8.add_argument(
        "--int8-ops",
        help=f"comma-separated op types to quantize (default: {','.join(TRT_OP_TYPES)}; 'all' = every supported op)",
    )
    int8.add_argument(
        "--int8-search-budget",
        type=int,
        default=0,
        help="let a sensitivity search keep up to N nodes float to reach the parity target (0 = off)",
    )
    int8.add_argument(
        "--int8-reduce-range", action="store_true", help="7-bit weights (x86 CPUs without VNNI; costs precision)"
    )
    int8.add_argument(
        "--int8-for",
        choices=("tensorrt", "ort-cpu"),
        default="tensorrt",
        help="tensorrt (default): symmetric INT8 Q/DQ; ort-cpu: uint8 asymmetric activations and 7-bit "
        "weights, what ONNX Runtime's CPU kernels on x86 without VNNI need (not loadable as TensorRT INT8)",
    )
    parser.add_argument(
        "--tflite-int8-float-layers",
        type=int,
        default=0,
        help="keep the N TFLite int8 layers with the largest quantization error float (0 = full-integer)",
    )
    parser.add_argument("--name", help="model name in the bundle manifest (default: the source's)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing bundle folder")
    parser.add_argument("--tar", action="store_true", help="also write <bundle>.tar")
    parser.add_argument("--threads", type=int, help="runtime threads for the parity gate")
    parser.add_argument("-q", "--quiet", action="store_true", help="only print the result table")
    return parser


def _recipe(args: argparse.Namespace) -> Int8Recipe:
    defaults = Int8Recipe()
    if args.percentile is not None and args.calibration_method not in (None, "percentile"):
        raise ExportError("--percentile only applies with --calibration-method percentile")
    ops: tuple[str, ...] = defaults.op_types
    if args.int8_ops:
        ops = () if args.int8_ops.strip() == "all" else tuple(o.strip() for o in args.int8_ops.split(",") if o.strip())
    return Int8Recipe(
        calibration_method=args.calibration_method or defaults.calibration_method,
        percentile=args.percentile if args.percentile is not None else defaults.percentile,
        reduce_range=args.int8_reduce_range or args.int8_for == "ort-cpu",
        symmetric_activations=args.int8_for == "tensorrt",
        op_types=ops,
        exclude_nodes=tuple(n.strip() for n in args.int8_exclude.split(",") if n.strip()),
    )


def main(argv: Sequence[str], prog: str = "endoedge export") -> int:
    """Run ``endoedge export``."""
    parser = build_parser(prog)
    args = parser.parse_args(list(argv))
    if args.formats_table:
        print(formats_markdown_table())
        return 0
    if not args.source or not args.output or not args.dataset:
        parser.error("SOURCE, -o/--output and --dataset are required (see --help)")
    from endoedge.export.pipeline import ExportSettings, export_bundle, parse_formats

    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    settings = ExportSettings(
        formats=parse_formats(args.formats),
        dataset=Path(args.dataset),
        calibration_size=args.calibration_size,
        holdout_size=args.holdout_size,
        split=args.split,
        seed=args.seed,
        allow_parity_loss=args.allow_parity_loss,
        opset=args.opset,
        int8_recipe=_recipe(args),
        int8_search_budget=args.int8_search_budget,
        tflite_int8_float_layers=args.tflite_int8_float_layers,
        name=args.name,
        overwrite=args.overwrite,
        tar=args.tar,
        threads=args.threads,
    )
    result = export_bundle(args.source, args.output, settings, manifest_path=args.manifest)
    print(f"bundle: {result.bundle} ({result.seconds:.0f} s)")
    if result.tar:
        print(f"archive: {result.tar}")
    width = max(len(k) for k in result.parity) if result.parity else 8
    for key, parity in result.parity.items():
        state = "dropped" if key in result.dropped else "written" if parity.passed else "marked"
        print(f"  {key.ljust(width)}  {state:7}  {parity.summary()}")
    if any(not p.passed and k not in result.dropped for k, p in result.parity.items()):
        print("marked: kept despite missing its parity target (parity_loss_allowed in the manifest)")
    if result.dropped:
        print(f"not written (missed parity; --allow-parity-loss keeps them marked): {', '.join(result.dropped)}")
        return 1
    return 0
