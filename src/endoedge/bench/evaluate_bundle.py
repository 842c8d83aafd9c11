"""``endoedge evaluate BUNDLE --data CSV``: score every artifact of a deployed bundle on labelled images.

This is how a user checks, on the box itself, that the INT8 or TensorRT artifact they deploy keeps its
accuracy on *their* images: no TensorFlow, only the edge backends. Each artifact that has a runtime
here is run on the same prepared pixels (preprocessing from the bundle's manifest, as the daemon does)
and gets the same report as a Keras run's evaluation: per-class accuracy, sensitivity, specificity,
PPV, NPV and F1 with 95 % bootstrap CIs, the confusion PNG, per-image predictions. Beside that, every
pair of artifacts is compared: top-1 agreement, largest ``|Δp|`` and the exact McNemar P on their
correctness.

Images are read through the dataset manifest loaded *against the bundle's label set*, so a label the
model does not know fails at once with the manifest's row; an unreadable image fails with its row too
(or is skipped and listed, with ``on_unreadable="skip"``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from endoedge.bench.parity import ArtifactResult
from endoedge.bench.parity_bundle import ParitySet, run_bundle_parity
from endoedge.core.bundle import Bundle, open_bundle
from endoedge.core.datasets import Dataset, load_dataset
from endoedge.core.errors import DatasetError, EndoedgeError
from endoedge.core.fileio import atomic_write_json
from endoedge.core.preprocess import prepare_pixels, read_image
from endoedge.train.evaluate import Predictions, evaluate_predictions, write_report
from endoedge.train.metrics import mcnemar_exact

SPLIT_CHOICES = ("auto", "all", "train", "val", "test")


@dataclass
class LabelledImages:
    """Prepared pixels of a labelled image set, in the bundle's input format.

    Attributes:
        pixels: ``uint8`` ``N×H×W×3`` (model channel order).
        labels: True class index per image.
        paths: Image paths as the manifest writes them.
        split: The split used (``all`` for every row).
        skipped: Unreadable images left out, as ``(manifest row place, reason)``.
    """

    pixels: np.ndarray
    labels: np.ndarray
    paths: list[str]
    split: str
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _select(dataset: Dataset, split: str) -> tuple[Dataset, str]:
    if split not in SPLIT_CHOICES:
        raise EndoedgeError(f"unknown split {split!r} (valid: {', '.join(SPLIT_CHOICES)})")
    if split == "auto":
        split = "test" if any(r.split == "test" for r in dataset.records) else "all"
    chosen = dataset if split == "all" else dataset.split(split)
    if len(chosen) == 0:
        raise DatasetError(f"no images in split {split!r}", dataset.source)
    return chosen, split


def load_labelled_images(
    bundle: Bundle, data: str | Path, split: str = "auto", on_unreadable: str = "error"
) -> LabelledImages:
    """Read a dataset manifest against the bundle's label set and prepare its images as the daemon would.

    Args:
        bundle: The opened bundle (its manifest gives the label set and preprocessing).
        data: Dataset manifest CSV (``path,label[,split,…]``).
        split: ``auto`` (the ``test`` split when the manifest has one, else every row), ``all`` or a split.
        on_unreadable: ``error`` (stop at the first, naming its row) or ``skip`` (list it and go on).

    Raises:
        DatasetError: A label outside the bundle's label set, an unreadable image (with ``error``), an
            empty selection; each names the manifest and row.
    """
    manifest = bundle.manifest
    dataset = load_dataset(data, labelset=manifest.labelset)
    chosen, used_split = _select(dataset, split)
    pixels: list[np.ndarray] = []
    labels: list[int] = []
    paths: list[str] = []
    skipped: list[tuple[str, str]] = []
    for record in chosen.records:
        where = f"{dataset.source}:row {record.row}"
        try:
            pixels.append(prepare_pixels(read_image(record.abspath), manifest.preprocess))
        except DatasetError as exc:
            if on_unreadable != "skip":
                raise DatasetError(f"image {record.path!r}: {exc.message}", where) from None
            skipped.append((where, exc.message))
            continue
        labels.append(record.label)
        paths.append(record.path)
    if not pixels:
        raise DatasetError(f"none of the {len(chosen)} images could be read (first: {skipped[0][1]})", data)
    return LabelledImages(np.stack(pixels), np.asarray(labels, dtype=np.int64), paths, used_split, skipped)


def agreement_rows(outputs: dict[str, np.ndarray], labels: np.ndarray) -> list[dict[str, Any]]:
    """Every pair of artifacts: top-1 agreement, largest ``|Δp|``, McNemar on correctness."""
    rows = []
    for (a, pa), (b, pb) in itertools.combinations(outputs.items(), 2):
        top_a, top_b = pa.argmax(axis=1), pb.argmax(axis=1)
        only_a, only_b, p_value = mcnemar_exact(top_a == labels, top_b == labels)
        rows.append(
            {
                "a": a,
                "b": b,
                "top1_agreement": float(np.mean(top_a == top_b)),
                "max_abs_diff": float(np.max(np.abs(pa - pb))),
                "only_a_correct": only_a,
                "only_b_correct": only_b,
                "mcnemar_p": p_value,
            }
        )
    return rows


def _agreement_markdown(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| artifact A | artifact B | top-1 agreement | max abs Δp | only A right | only B right | McNemar P |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['a']} | {r['b']} | {r['top1_agreement']:.3f} | {r['max_abs_diff']:.2e} | "
            f"{r['only_a_correct']} | {r['only_b_correct']} | {r['mcnemar_p']:.3g} |"
        )
    return "\n".join(lines)


def evaluate_bundle(
    bundle_path: str | Path,
    data: str | Path,
    out_dir: str | Path,
    *,
    formats: Sequence[str] | None = None,
    split: str = "auto",
    bootstrap: int = 1000,
    threads: int = 0,
    on_unreadable: str = "error",
) -> dict[str, Any]:
    """Score each artifact of a bundle against a labelled dataset and compare the artifacts with each other.

    Args:
        bundle_path: Bundle folder or ``.tar``.
        data: Labelled dataset manifest.
        out_dir: Output folder: one sub-folder per artifact (``report.md``/``.html``, ``metrics.json``,
            ``predictions.csv``, ``confusion.png``), plus ``agreement.md``, ``summary.json``.
        formats: Only these artifact formats (default: every one with a runtime here).
        split: See :func:`load_labelled_images`.
        bootstrap: Bootstrap resamples for the CIs.
        threads: CPU threads per backend (0: the runtime's default).
        on_unreadable: ``error`` or ``skip``.

    Returns:
        JSON-ready summary: per artifact its status and mean metrics; the pairwise agreement rows.

    Raises:
        BundleError: The bundle cannot be opened or verified.
        DatasetError: See :func:`load_labelled_images`.
    """
    bundle = open_bundle(bundle_path)
    images = load_labelled_images(bundle, data, split, on_unreadable)
    labelset = bundle.manifest.labelset
    parity_set = ParitySet(images.pixels, images.labels, images.paths)
    results, outputs = run_bundle_parity(bundle, parity_set, formats, threads=threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {
        "bundle": bundle.manifest.name,
        "bundle_path": str(bundle_path),
        "data": str(data),
        "split": images.split,
        "images": len(images.paths),
        "skipped": [f"{where}: {why}" for where, why in images.skipped],
        "artifacts": {},
    }
    for result in results:
        entry: dict[str, Any] = {"status": _status(result), "backend": result.backend, "reason": result.reason}
        probs = outputs.get(result.format)
        if probs is not None:
            preds = Predictions(result.format, images.paths, images.labels, probs, result.seconds)
            report = evaluate_predictions(
                preds,
                labelset,
                out / result.format,
                title=f"{bundle.manifest.name} {result.format} on {Path(data).name} ({images.split})",
                data_note=(
                    f"Data: `{data}`, split `{images.split}` ({len(images.paths)} images, label set {labelset.tag}); "
                    f"artifact `{result.format}` run by the `{result.backend}` backend, preprocessing from the "
                    "bundle's manifest."
                ),
                iterations=bootstrap,
            )
            entry["mean"] = report["mean"]
            entry["per_class_sensitivity"] = {
                key: report["per_class"][key]["sensitivity"]["value"] for key in report["labels"]
            }
        summary["artifacts"][result.format] = entry
    summary["agreement"] = agreement_rows(outputs, images.labels)
    if summary["agreement"]:
        body = (
            f"# Agreement between the artifacts of {bundle.manifest.name}\n\n"
            f"On `{data}`, split `{images.split}`, {len(images.paths)} images.\n\n"
            f"{_agreement_markdown(summary['agreement'])}\n"
        )
        write_report(out, "agreement", body, [])
        (out / "report.md").replace(out / "agreement.md")
        (out / "report.html").replace(out / "agreement.html")
    atomic_write_json(out / "summary.json", summary)
    return summary


def _status(result: ArtifactResult) -> str:
    # Without a float reference nothing is gated here: an artifact that ran is "scored".
    return "scored" if result.status == "loaded" else result.status


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The console summary: one line per artifact, then the agreement pairs."""
    lines = [
        f"{summary['bundle']}: {summary['images']} images ({summary['split']}) from {summary['data']}"
        + (f"; {len(summary['skipped'])} unreadable skipped" if summary["skipped"] else "")
    ]
    for fmt, entry in summary["artifacts"].items():
        if "mean" not in entry:
            lines.append(f"  {fmt:<12} {entry['status']}: {entry['reason']}")
            continue
        acc = entry["mean"]["overall_accuracy"]
        sens = ", ".join(f"{k} {v:.3f}" for k, v in entry["per_class_sensitivity"].items() if v is not None)
        lines.append(f"  {fmt:<12} top-1 {acc['value']:.3f} ({acc['low']:.3f}-{acc['high']:.3f})  sensitivity: {sens}")
    for row in summary["agreement"]:
        lines.append(
            f"  {row['a']} vs {row['b']}: top-1 agreement {row['top1_agreement']:.3f}, "
            f"max |Δp| {row['max_abs_diff']:.2e}, McNemar P {row['mcnemar_p']:.3g}"
        )
    return lines
