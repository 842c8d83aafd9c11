"""``endoedge bench``: parity, latency and pipeline benchmarks, and the machine fingerprint.

::

    endoedge bench parity BUNDLE --data DATASET.csv [--split test] [--clip clip.mp4] [--out benchmarks/results]
    endoedge bench latency BUNDLE [--data DATASET.csv] [--threads 1,2] [--batches 1,2,4,8] [--keras model.keras]
        [--compare OTHER_BUNDLE]
    endoedge bench pipeline BUNDLE --clip clip.mp4 [--fps 30,60] [--seconds 20]
    endoedge bench fingerprint

``parity`` exits 1 when an artifact fails its gate (or a ``--require``d format is not validated), so CI
and installers can gate on it; errors in the command line or the files exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from endoedge.core.errors import ConfigError
from endoedge.core.fileio import atomic_write_text


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected non-negative integers, got {text!r}")
    return values


def _float_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def _str_list(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def build_parser(prog: str) -> argparse.ArgumentParser:
    """The argument parser of ``endoedge bench``."""
    parser = argparse.ArgumentParser(prog=prog, description="Parity and latency benchmarks of endoedge bundles.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("bundle", help="bundle folder, manifest.json or .tar")
        p.add_argument("--formats", type=_str_list, default=(), help="artifact formats to include (default: all)")
        p.add_argument("--out", help="file results under OUT/<machine-id>/<bundle>/ (JSON, Markdown, PNG)")
        p.add_argument("--json", action="store_true", help="print the JSON report instead of the table")
        p.add_argument("--force", action="store_true", help="write into an --out folder of another machine")
        p.add_argument(
            "--wait-quiet",
            type=float,
            default=0.0,
            metavar="S",
            help="on a shared machine, wait up to S seconds for CPU pressure below 10%% before measuring",
        )

    p = sub.add_parser("parity", help="every artifact against the float reference (exit 1 on a failed gate)")
    common(p)
    p.add_argument("--data", required=True, help="dataset manifest CSV with the parity images")
    p.add_argument("--split", help="use only this split of the dataset (train/val/test)")
    p.add_argument("--limit", type=int, help="at most this many images (every k-th, keeping the class mix)")
    p.add_argument(
        "--reference",
        default="auto",
        choices=("auto", "savedmodel", "bundle", "none"),
        help="float reference: SavedModel run here, the bundle's recorded reference, or none (default: auto)",
    )
    p.add_argument("--clip", help="video clip for video-level parity (displayed-site sequence after smoothing)")
    p.add_argument("--clip-frames", type=int, help="use only the first N frames of the clip")
    p.add_argument("--smoothing", default="hmm", choices=("hmm", "ema"), help="smoother of the video parity")
    p.add_argument("--threads", type=int, default=0, help="CPU threads per runtime (default: all cores)")
    p.add_argument("--require", type=_str_list, default=(), help="formats that must be validated (else exit 1)")

    p = sub.add_parser("latency", help="latency and throughput of every backend and precision, with peers")
    common(p)
    p.add_argument("--data", help="dataset CSV or image folder to take input images from (default: random pixels)")
    p.add_argument("--threads", type=_int_list, default=(0,), help="thread counts to measure, e.g. 1,2 (0: all)")
    p.add_argument("--batches", type=_int_list, default=(1, 2, 4, 8), help="batch sizes of the throughput sweep")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3)")
    p.add_argument("--runs", type=int, default=30, help="at least this many timed runs (default 30)")
    p.add_argument("--seconds", type=float, default=3.0, help="and at least this many measured seconds (default 3)")
    p.add_argument("--max-seconds", type=float, default=60.0, help="stop a measurement after this long")
    p.add_argument(
        "--peers",
        type=_str_list,
        default=("raw", "tf-function", "keras", "polygraphy", "trtexec"),
        help="peers to run: raw,tf-function,keras,polygraphy,trtexec (or 'none')",
    )
    p.add_argument("--keras", type=Path, help=".keras model for the Keras predict/predict_on_batch peers")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        help="extra batch-1 row with backend options, e.g. tflite:xnnpack=false or onnxruntime:optimization=basic",
    )
    p.add_argument("--no-peak", action="store_true", help="skip measuring the CPU's sgemm peak")
    p.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="BUNDLE",
        help="also measure this bundle in the same run (same settings, no peers) and print batch-1 p50 per "
        "format side by side; repeatable",
    )

    p = sub.add_parser("pipeline", help="the daemon on a replayed clip: fps, added video delay, overlay delay")
    common(p)
    p.add_argument("--clip", help="clip to replay (default: synthetic 1080p tower frames)")
    p.add_argument("--fps", type=_float_list, default=(30.0, 60.0), help="source frame rates (default 30,60)")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds per run (default 10)")
    p.add_argument("--backend", default="auto", help="backend (default auto)")
    p.add_argument(
        "--slow-ms",
        type=float,
        default=0.0,
        help="also run with inference slowed to at least this many ms (a model slower than one frame)",
    )
    p.add_argument(
        "--fresh",
        action="store_true",
        help="with --slow-ms, also run the slowed model with run.ai_pacing=fresh (results sooner, fewer of them)",
    )
    p.add_argument("--threads", type=int, default=0, help="CPU threads of the backend (default: all cores)")

    sub.add_parser("fingerprint", help="print this machine's fingerprint as JSON")
    return parser


def main(argv: Sequence[str], prog: str = "endoedge bench") -> int:
    """Run ``endoedge bench``; returns the exit code."""
    parser = build_parser(prog)
    args = parser.parse_args(list(argv))
    if args.command == "fingerprint":
        from endoedge.bench.fingerprint import machine_fingerprint

        print(json.dumps(machine_fingerprint(), indent=2))
        return 0
    if args.command == "parity":
        return _parity(args)
    if args.command == "latency":
        return _latency(args)
    return _pipeline(args)


def _say(line: str) -> None:
    print(f"... {line}", file=sys.stderr, flush=True)


def _emit(args: argparse.Namespace, kind: str, report: dict[str, Any], text: str, md: str, chart: Any) -> None:
    from endoedge.bench.report import write_results

    print(json.dumps(report, indent=2) if args.json else text)
    if args.out:
        png = chart() if chart else None  # None without matplotlib (not part of endoedge[edge])
        folder = write_results(args.out, kind, report, md, png, force=args.force)
        print(f"results written to {folder}/{kind}.json, .md" + (", .png" if png else ""), file=sys.stderr)


def _conditions(args: argparse.Namespace) -> dict[str, Any]:
    from endoedge.bench.resources import load_conditions, wait_until_quiet

    if args.wait_quiet > 0:
        return wait_until_quiet(args.wait_quiet)
    return load_conditions()


def _finish_conditions(before: dict[str, Any]) -> dict[str, Any]:
    from endoedge.bench.resources import load_conditions

    after = load_conditions()
    return {
        "load_before": before.get("load_avg"),
        "load_after": after.get("load_avg"),
        "cpu_pressure_before": before.get("cpu_pressure"),
        "cpu_pressure_after": after.get("cpu_pressure"),
        "waited_s": before.get("waited_s", 0.0),
        "quiet_at_start": before.get("quiet"),
    }


def _parity(args: argparse.Namespace) -> int:
    from endoedge.bench import report as rep
    from endoedge.bench.fingerprint import machine_fingerprint
    from endoedge.bench.parity import exit_code, status_label
    from endoedge.bench.parity_bundle import (
        ParityReport,
        build_parity_set,
        run_bundle_parity,
        run_video_parity,
    )
    from endoedge.core.bundle import open_bundle

    bundle = open_bundle(args.bundle, verify=False)  # per-file checks are reported per artifact
    parity_set = build_parity_set(bundle, args.data, args.split, args.limit, args.reference, args.threads)
    _say(f"{len(parity_set.names)} parity images; reference: {parity_set.reference_source}")
    results, _outputs = run_bundle_parity(bundle, parity_set, args.formats or None, threads=args.threads)
    video: dict[str, Any] = {}
    if args.clip:
        _say(f"video parity on {args.clip}")
        video = run_video_parity(bundle, args.clip, results, args.threads, args.clip_frames, {"method": args.smoothing})
    report = ParityReport(
        bundle=bundle.manifest.name,
        bundle_path=str(bundle.path),
        data=str(args.data),
        reference_source=parity_set.reference_source,
        images=len(parity_set.names),
        results=results,
        video=video,
        problems=parity_set.problems,
    ).to_dict()
    report["machine"] = machine_fingerprint()
    _emit(
        args,
        "parity",
        report,
        rep.parity_text(report),
        rep.parity_markdown(report),
        lambda: rep.parity_chart(report),
    )
    code = exit_code(results, args.require)
    if code:
        failed = [f"{r.format} ({r.stage}: {r.reason})" for r in results if r.status == "failed"]
        missing = [f for f in args.require if f not in {r.format for r in results if r.status == "validated"}]
        status = {r.format: status_label(r.status) for r in results}
        detail = "; ".join(failed + [f"{f} required but {status.get(f, 'absent')}" for f in missing if f not in failed])
        print(f"parity FAILED: {detail}", file=sys.stderr)
    return code


def latency_pixels(data: str | None, spec: Any, count: int = 8) -> tuple[np.ndarray, str]:
    """Input pixels for latency runs: real images from a dataset CSV or folder, else seeded random pixels."""
    from endoedge.core.datasets import load_dataset
    from endoedge.core.preprocess import load_pixels

    if data is None:
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (count, spec.height, spec.width, 3), dtype=np.uint8), "random pixels (seed 0)"
    path = Path(data)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:count]
    else:
        files = load_dataset(path).paths[:count]
    if not files:
        raise ConfigError("no images found", path)
    return load_pixels(files, spec), f"{len(files)} images from {path}"


def _latency(args: argparse.Namespace) -> int:
    from endoedge.bench import report as rep
    from endoedge.bench.fingerprint import machine_fingerprint
    from endoedge.bench.latency import PEERS, LatencySettings, parse_variant, run_latency
    from endoedge.bench.stats import RunPlan
    from endoedge.core.bundle import open_bundle

    peers = () if args.peers == ("none",) else args.peers
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        raise ConfigError(f"unknown peer(s) {', '.join(unknown)} (valid: {', '.join(PEERS)}, none)", "--peers")
    try:
        plan = RunPlan(args.warmup, args.runs, args.seconds, args.max_seconds)
    except ValueError as exc:
        raise ConfigError(str(exc), "--warmup/--runs/--seconds") from None
    if any(b < 1 for b in args.batches):
        raise ConfigError("batch sizes must be >= 1", "--batches")
    bundle = open_bundle(args.bundle)
    others = [open_bundle(path) for path in args.compare]  # fail on a bad bundle before measuring anything
    settings = LatencySettings(
        formats=tuple(args.formats),
        threads=tuple(args.threads),
        batches=tuple(args.batches),
        plan=plan,
        peers=tuple(peers),
        keras_path=args.keras,
        variants=tuple(parse_variant(v) for v in args.variant),
        measure_peak=not args.no_peak,
    )

    def measure(target: Any, target_settings: LatencySettings) -> dict[str, Any]:
        """Run and file one bundle's latency report (its own inputs, the shared plan)."""
        target_pixels, source = latency_pixels(args.data, target.manifest.preprocess)
        before = _conditions(args)
        rows, extra = run_latency(target, target_pixels, target_settings, progress=_say)
        report: dict[str, Any] = {
            "bundle": target.manifest.name,
            "bundle_path": str(target.path),
            "inputs": source,
            "plan": plan.to_dict(),
            "rows": [r.to_dict() for r in rows],
            **extra,
            "conditions": _finish_conditions(before),
            "machine": machine_fingerprint(),
        }
        _emit(
            args,
            "latency",
            report,
            rep.latency_text(report),
            rep.latency_markdown(report),
            lambda: rep.latency_chart(report),
        )
        return report

    report = measure(bundle, settings)
    # Each compared bundle right after, on the same machine, with the same plan: the comparison is
    # between models, not between sessions. Peers and variants are the first bundle's business.
    compared = replace(settings, formats=(), peers=(), keras_path=None, variants=(), measure_peak=False)
    reports = [report, *(measure(other, compared) for other in others)]
    if len(reports) > 1:
        comparison = rep.latency_comparison_markdown(reports)
        print(comparison)
        if args.out:
            target = Path(args.out) / report["machine"]["machine_id"] / report["bundle"]
            name = "latency-vs-" + "-".join(r["bundle"] for r in reports[1:]) + ".md"
            atomic_write_text(target / name, comparison)
            print(f"comparison written to {target / name}", file=sys.stderr)
    return 0


def _pipeline(args: argparse.Namespace) -> int:
    from endoedge.bench.pipeline import pipeline_main

    return pipeline_main(args, _say, _emit, _conditions, _finish_conditions)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main(sys.argv[1:]))
