"""``endoedge evaluate``: evaluate trained models (Keras run folders) or deployed bundles on labelled images.

* Run folders (``model.keras`` + ``manifest.json``; needs TensorFlow): one or two models, with Grad-CAM,
  reader-study labels and a Table-1 comparison.
* A bundle (folder with a bundle ``manifest.json``, or ``.tar``; no TensorFlow): every artifact that
  has a runtime here, scored on the same images, and compared with each other
  (:mod:`endoedge.bench.evaluate_bundle`). This is the check to run on the box.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from endoedge.core.errors import ConfigError


def _open_run(path: Path) -> tuple[Any, Any]:
    """Load ``model.keras`` and ``manifest.json`` from a run (or results) folder."""
    from endoedge.core.manifest import ModelManifest
    from endoedge.train.models import load_trained_model

    folder = Path(path)
    if not folder.is_dir():
        raise ConfigError("not a run folder (expected model.keras and manifest.json inside)", folder)
    manifest = ModelManifest.load(folder / "manifest.json")
    return load_trained_model(folder / "model.keras"), manifest


def _display_name(run: Path, manifest_name: str, seen: set[str], names: Sequence[str] | None) -> str:
    if names:
        return names[len(seen)]
    if manifest_name not in seen:
        return manifest_name
    # Same model name twice (e.g. two runs of one recipe): tell them apart by their folders.
    return "/".join(run.resolve().parts[-2:])


def evaluate_models(
    runs: Sequence[Path],
    out_dir: Path,
    *,
    dataset: Path | None = None,
    split: str = "test",
    bootstrap: int = 1000,
    gradcam_images: int = 6,
    gradcam_layer: str | None = None,
    readers: Path | None = None,
    on_unreadable: str = "skip",
    names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Evaluate models on the same images and write per-model reports plus a comparison.

    Args:
        runs: One or two run folders (``model.keras`` + ``manifest.json``); the first is the reference.
        out_dir: Output folder (one sub-folder per model, ``comparison.md``/``.html``/``.json``).
        dataset: Dataset manifest (default: the first run's frozen ``dataset.csv``).
        split: Split to evaluate.
        bootstrap: Bootstrap resamples for the CIs.
        gradcam_images: Images in each Grad-CAM sheet (0: none).
        gradcam_layer: Backbone layer for Grad-CAM (default: the backbone output).
        readers: Optional reader-study CSV (``path,reader,label``).
        on_unreadable: ``skip`` or ``error`` for unreadable images.
        names: Display names of the models (default: manifest names, made unique with the run path).

    Returns:
        JSON-ready summary (per-model mean metrics and, with several predictors, the comparison).
    """
    from endoedge.core.datasets import load_dataset
    from endoedge.core.fileio import atomic_write_json
    from endoedge.train.data import load_split
    from endoedge.train.evaluate import (
        Predictions,
        comparison_table,
        evaluate_predictions,
        gradcam_rows,
        load_reader_study,
        predict,
        write_report,
    )
    from endoedge.train.gradcam import write_sheet

    if not 1 <= len(runs) <= 2:
        raise ConfigError(f"give one or two run folders, got {len(runs)}")
    if names is not None and (len(names) != len(runs) or len(set(names)) != len(names)):
        raise ConfigError(f"--names needs {len(runs)} distinct names, got {list(names)}")
    loaded = [_open_run(r) for r in runs]
    first_manifest = loaded[0][1]
    data_file = Path(dataset) if dataset else Path(runs[0]) / "dataset.csv"
    if not data_file.is_file():
        raise ConfigError("dataset manifest does not exist (pass --dataset)", data_file)
    ds = load_dataset(data_file, labelset=first_manifest.labelset)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"dataset": str(data_file), "split": split, "models": {}}
    entries: list[tuple[str, np.ndarray]] = []
    y_true: np.ndarray | None = None
    paths: list[str] = []
    names_seen: set[str] = set()
    for run, (model, manifest) in zip(runs, loaded, strict=True):
        if manifest.labelset.keys != first_manifest.labelset.keys:
            raise ConfigError(f"label set {manifest.labelset.tag} differs from {first_manifest.labelset.tag}", run)
        prepared = load_split(ds, split, manifest.preprocess, on_unreadable)
        probs, seconds = predict(model, prepared.pixels, manifest.preprocess)
        name = _display_name(Path(run), manifest.name, names_seen, names)
        names_seen.add(name)
        preds = Predictions(name, prepared.paths, prepared.labels.astype(np.int64), probs, seconds)
        if y_true is not None and (paths != preds.paths):
            raise ConfigError("the models saw different images (unreadable images differ?)", run)
        y_true, paths = preds.y_true, preds.paths
        rows = gradcam_rows(
            model, prepared.pixels, manifest.preprocess, preds, ds.labelset, gradcam_images, gradcam_layer
        )
        sub = out_dir / name.replace("/", "_")
        sub.mkdir(parents=True, exist_ok=True)
        if rows:
            write_sheet(rows, sub / "gradcam.png")
        report = evaluate_predictions(
            preds,
            ds.labelset,
            sub,
            title=f"{name} on the {split} split of {data_file.name}",
            data_note=f"Data: split `{split}` of `{data_file}` ({len(paths)} images, label set {ds.labelset.tag}).",
            iterations=bootstrap,
            gradcam_png=rows[0] if rows else None,
        )
        summary["models"][name] = report["mean"]
        entries.append((name, preds.y_pred))
    assert y_true is not None
    if readers is not None:
        for reader, labels in load_reader_study(readers, ds.labelset, paths).items():
            entries.append((f"reader:{reader}", labels))
    if len(entries) > 1:
        table, result = comparison_table(entries, y_true, ds.labelset)
        summary["comparison"] = result
        body = f"# Comparison on the {split} split ({len(paths)} images)\n\n{table}\n"
        write_report(out_dir, "comparison", body, [])
        (out_dir / "report.md").rename(out_dir / "comparison.md")
        (out_dir / "report.html").rename(out_dir / "comparison.html")
        print(body)
    atomic_write_json(out_dir / "summary.json", summary)
    return summary


def is_bundle(path: Path) -> bool:
    """A bundle (``.tar``, or a folder whose manifest lists artifacts) rather than a training run folder."""
    if path.suffix == ".tar" and path.is_file():
        return True
    return path.is_dir() and (path / "manifest.json").is_file() and not (path / "model.keras").is_file()


def main(argv: Sequence[str], prog: str = "endoedge evaluate") -> int:
    """CLI entry."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Evaluate trained models or deployed bundles: per-class metrics with 95 percent bootstrap CIs, "
        "confusion matrices, reading time. Run folders (TensorFlow): Grad-CAM sheets and, with two models (or "
        "reader-study labels), a Table-1 style comparison with McNemar and Wilcoxon P values. A bundle (no "
        "TensorFlow needed): every artifact scored on the same images, and their agreement with each other.",
    )
    parser.add_argument(
        "runs", nargs="+", type=Path, help="one or two run folders (model.keras + manifest.json), or one bundle"
    )
    parser.add_argument(
        "-o", "--out", type=Path, help="output folder (default: evaluation/<model or bundle name> in the working dir)"
    )
    parser.add_argument(
        "--dataset",
        "--data",
        dest="dataset",
        type=Path,
        help="dataset manifest CSV (default for runs: the first run's dataset.csv; required for a bundle)",
    )
    parser.add_argument(
        "--split",
        default=None,
        choices=("auto", "all", "train", "val", "test"),
        help="runs: default test; bundles: default auto (test when the manifest has splits, else every row)",
    )
    parser.add_argument("--formats", help="bundle only: comma-separated artifact formats (default: all runnable)")
    parser.add_argument("--threads", type=int, default=0, help="bundle only: CPU threads per backend (0: default)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs")
    parser.add_argument("--gradcam", type=int, default=6, help="images per Grad-CAM sheet (0: none)")
    parser.add_argument("--gradcam-layer", help="backbone layer for Grad-CAM (default: the last conv block)")
    parser.add_argument("--readers", type=Path, help="reader-study CSV: path,reader,label")
    parser.add_argument(
        "--on-unreadable", choices=("skip", "error"), help="runs: default skip; bundles: default error (names the row)"
    )
    parser.add_argument("--names", help="comma-separated display names of the models, e.g. RESENet,IRv2")
    args = parser.parse_args(list(argv))
    if args.bootstrap < 0:
        parser.error("--bootstrap must be >= 0")
    if any(is_bundle(p) for p in args.runs):
        return _main_bundle(parser, args)
    if args.formats or args.threads:
        parser.error("--formats and --threads apply to a bundle only")
    split = args.split or "test"
    if split not in ("train", "val", "test"):
        parser.error(f"--split {split} applies to a bundle only (runs: train, val or test)")
    out = args.out or Path("evaluation") / args.runs[0].resolve().name
    summary = evaluate_models(
        args.runs,
        out,
        dataset=args.dataset,
        split=split,
        bootstrap=args.bootstrap,
        gradcam_images=args.gradcam,
        gradcam_layer=args.gradcam_layer,
        readers=args.readers,
        on_unreadable=args.on_unreadable or "skip",
        names=args.names.split(",") if args.names else None,
    )
    for name, mean in summary["models"].items():
        acc = mean["overall_accuracy"]
        print(f"{name}: top-1 {acc['value']:.3f} ({acc['low']:.3f}-{acc['high']:.3f}) -> {out / name}")
    return 0


def _main_bundle(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``endoedge evaluate BUNDLE --data CSV``: TensorFlow-free scoring of every artifact."""
    if len(args.runs) != 1:
        parser.error("give one bundle (compare formats within it with --formats)")
    if args.dataset is None:
        parser.error("a bundle needs --data: a labelled dataset manifest CSV")
    for option in ("readers", "names", "gradcam_layer"):
        if getattr(args, option):
            parser.error(f"--{option.replace('_', '-')} applies to run folders only")
    from endoedge.bench.evaluate_bundle import evaluate_bundle, summary_lines

    bundle = args.runs[0]
    out = args.out or Path("evaluation") / bundle.resolve().name.removesuffix(".tar")
    summary = evaluate_bundle(
        bundle,
        args.dataset,
        out,
        formats=args.formats.split(",") if args.formats else None,
        split=args.split or "auto",
        bootstrap=args.bootstrap,
        threads=args.threads,
        on_unreadable=args.on_unreadable or "error",
    )
    print("\n".join(summary_lines(summary)))
    print(f"reports: {out}")
    failed = [fmt for fmt, entry in summary["artifacts"].items() if entry["status"] == "failed"]
    return 1 if failed else 0
