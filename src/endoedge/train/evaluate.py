"""Evaluation reports: per-class metrics with bootstrap CIs, confusion matrices, reading time, Grad-CAM.

Outputs in an evaluation folder::

    metrics.json          everything below, for machines
    predictions.csv       path, truth, prediction, correct, per-class probabilities
    confusion.png         counts and row-normalised confusion matrices
    gradcam.png           original | heatmap | overlay rows
    report.md, report.html  for a clinician to read
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from endoedge.core.datasets import Dataset
from endoedge.core.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text
from endoedge.core.labels import LabelSet
from endoedge.core.manifest import ModelManifest
from endoedge.core.preprocess import PreprocessSpec, normalize
from endoedge.train.metrics import METRICS, Interval, bootstrap_metrics, confusion_matrix

Log = Callable[[str], None]


@dataclass
class Predictions:
    """A model's outputs on an evaluation set."""

    name: str
    paths: list[str]
    y_true: np.ndarray
    probabilities: np.ndarray
    seconds: float

    @property
    def y_pred(self) -> np.ndarray:
        """Top-1 class per image."""
        return np.asarray(self.probabilities.argmax(axis=1), dtype=np.int64)

    @property
    def correct(self) -> np.ndarray:
        """Per-image correctness."""
        return np.asarray(self.y_pred == self.y_true)


def model_inputs(pixels: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Float model inputs from prepared pixels, normalised only as the manifest says (``raw``: unchanged)."""
    return normalize(pixels, spec)


def predict(
    model: Any, pixels: np.ndarray, spec: PreprocessSpec, batch_size: int = 16, name: str = "model"
) -> tuple[np.ndarray, float]:
    """Run a Keras classifier on prepared pixels; return (probabilities, seconds including normalisation)."""
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def forward(x: Any) -> Any:
        return model(x, training=False)

    forward(model_inputs(pixels[:1], spec))  # trace outside the timed loop
    start = time.perf_counter()
    outs = [
        np.asarray(forward(model_inputs(pixels[i : i + batch_size], spec))) for i in range(0, len(pixels), batch_size)
    ]
    return np.concatenate(outs).astype(np.float32), time.perf_counter() - start


def _blues(value: float) -> tuple[int, int, int]:
    """A white-to-blue ramp (BGR) for a value in [0, 1]."""
    v = min(1.0, max(0.0, value))
    white, blue = np.array([251.0, 248.0, 247.0]), np.array([107.0, 48.0, 8.0])  # BGR
    return tuple(int(c) for c in white + (blue - white) * v)  # type: ignore[return-value]


def _confusion_panel(data: np.ndarray, labels: Sequence[str], title: str, fmt: str, vmax: float) -> np.ndarray:
    """One heat-map panel drawn with OpenCV: rows are the truth, columns the prediction."""
    import cv2

    n = len(labels)
    cell = 56 if n <= 6 else 40 if n <= 12 else 22
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.42
    row_names = [f"{i} {name}" for i, name in enumerate(labels)]
    left = 16 + max(cv2.getTextSize(t, font, scale, 1)[0][0] for t in row_names)
    top, width, height = 64, left + n * cell + 16, 64 + n * cell + 40
    panel = np.full((height, width, 3), 255, np.uint8)
    cv2.putText(panel, title, (10, 22), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(panel, "predicted (column = class index)", (left, 48), font, scale, (60, 60, 60), 1, cv2.LINE_AA)
    for i in range(n):
        y = top + i * cell
        size = cv2.getTextSize(row_names[i], font, scale, 1)[0]
        cv2.putText(
            panel, row_names[i], (left - 8 - size[0], y + cell // 2 + 5), font, scale, (0, 0, 0), 1, cv2.LINE_AA
        )
        cv2.putText(panel, str(i), (left + i * cell + cell // 2 - 4, top - 4), font, scale, (0, 0, 0), 1, cv2.LINE_AA)
        for j in range(n):
            x = left + j * cell
            share = float(data[i, j]) / vmax if vmax > 0 else 0.0
            cv2.rectangle(panel, (x, y), (x + cell - 1, y + cell - 1), _blues(share), -1)
            if n <= 12:
                text = format(data[i, j], fmt)
                colour = (255, 255, 255) if share > 0.5 else (0, 0, 0)
                size = cv2.getTextSize(text, font, scale, 1)[0]
                org = (x + (cell - size[0]) // 2, y + (cell + size[1]) // 2)
                cv2.putText(panel, text, org, font, scale, colour, 1, cv2.LINE_AA)
    cv2.rectangle(panel, (left, top), (left + n * cell - 1, top + n * cell - 1), (120, 120, 120), 1)
    cv2.putText(panel, "true (row)", (10, height - 14), font, scale, (60, 60, 60), 1, cv2.LINE_AA)
    return panel


def confusion_png(matrix: np.ndarray, labels: Sequence[str], title: str, path: Path) -> Path:
    """Write the counts and the row-normalised confusion matrix side by side as a PNG.

    Drawn with OpenCV (no matplotlib), so the TensorFlow-free edge install writes the same report.
    Hershey fonts are ASCII only: non-ASCII class names are replaced by their index.
    """
    import cv2

    counts = np.asarray(matrix, dtype=np.int64)
    rows = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.zeros_like(counts, dtype=np.float64), where=rows > 0)
    names = [name if name.isascii() else f"class {i}" for i, name in enumerate(labels)]
    caption = title if title.isascii() else "confusion matrix"
    left = _confusion_panel(counts, names, f"{caption} - counts", "d", float(max(1, counts.max())))
    right = _confusion_panel(normalised, names, f"{caption} - row-normalised", ".2f", 1.0)
    height = max(left.shape[0], right.shape[0])
    pad = [np.pad(p, ((0, height - p.shape[0]), (0, 0), (0, 0)), constant_values=255) for p in (left, right)]
    ok, encoded = cv2.imencode(".png", np.hstack(pad))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    atomic_write_bytes(path, encoded.tobytes())
    return path


def metrics_report(preds: Predictions, labelset: LabelSet, iterations: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Per-class and mean metrics with 95 % bootstrap CIs, confusion matrix and reading time (JSON-ready)."""
    n = len(labelset)
    matrix = confusion_matrix(preds.y_true, preds.y_pred, n)
    per_class, summary = bootstrap_metrics(preds.y_true, preds.y_pred, n, iterations=iterations, seed=seed)
    images = len(preds.y_true)
    return {
        "model": preds.name,
        "images": images,
        "labels": labelset.keys,
        "confusion_matrix": matrix.tolist(),
        "per_class": {
            key: {m: per_class[m][i].to_dict() for m in METRICS} | {"support": int(matrix[i].sum())}
            for i, key in enumerate(labelset.keys)
        },
        "mean": {m: summary[m].to_dict() for m in summary},
        "bootstrap_iterations": iterations,
        "reading_time": {
            "total_seconds": round(preds.seconds, 4),
            "images_per_second": round(images / preds.seconds, 2) if preds.seconds > 0 else None,
        },
    }


def _cell(entry: dict[str, Any]) -> str:
    return str(Interval(*(float("nan") if entry[k] is None else entry[k] for k in ("value", "low", "high"))))


def markdown_table(report: dict[str, Any], names: Sequence[str]) -> str:
    """Per-class table (metric with 95 % CI) plus the mean row, as Markdown."""
    head = "| class | n | " + " | ".join(m.upper() if m in ("ppv", "npv") else m for m in METRICS) + " |"
    lines = [head, "|" + "---|" * (len(METRICS) + 2)]
    for key, name in zip(report["labels"], names, strict=True):
        row = report["per_class"][key]
        lines.append(f"| {name} | {row['support']} | " + " | ".join(_cell(row[m]) for m in METRICS) + " |")
    mean = report["mean"]
    lines.append(f"| **mean** | {report['images']} | " + " | ".join(_cell(mean[m]) for m in METRICS) + " |")
    return "\n".join(lines)


def write_predictions(preds: Predictions, labelset: LabelSet, path: Path) -> None:
    """Per-image predictions CSV."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "truth", "prediction", "correct", *(f"p_{k}" for k in labelset.keys)])
    for i, p in enumerate(preds.paths):
        writer.writerow(
            [
                p,
                labelset.keys[int(preds.y_true[i])],
                labelset.keys[int(preds.y_pred[i])],
                int(preds.correct[i]),
                *(f"{v:.6f}" for v in preds.probabilities[i]),
            ]
        )
    atomic_write_text(path, buf.getvalue())


def gradcam_rows(
    model: Any,
    pixels: np.ndarray,
    spec: PreprocessSpec,
    preds: Predictions,
    labelset: LabelSet,
    count: int,
    layer: str | None = None,
) -> list[np.ndarray]:
    """Grad-CAM rows for up to ``count`` images: a spread over classes, correct and wrong ones."""
    from endoedge.train.gradcam import gradcam, overlay_sheet

    if count <= 0:
        return []
    chosen: list[int] = []
    for c in range(len(labelset)):
        members = [i for i in range(len(preds.y_true)) if preds.y_true[i] == c]
        chosen += members[: max(1, count // len(labelset))]
    wrong = [int(i) for i in np.flatnonzero(~preds.correct) if int(i) not in chosen]
    chosen = (chosen + wrong)[:count]
    if not chosen:
        return []
    heatmaps, probs = gradcam(model, model_inputs(pixels[chosen], spec), layer=layer)
    rows = []
    for k, i in enumerate(chosen):
        rgb = pixels[i] if spec.channel_order == "RGB" else pixels[i][..., ::-1]
        pred = int(np.argmax(probs[k]))
        caption = (
            f"true {labelset.names[int(preds.y_true[i])]} | predicted {labelset.names[pred]} "
            f"({probs[k][pred]:.2f}) | {Path(preds.paths[i]).name[:24]}"
        )
        rows.append(overlay_sheet(np.ascontiguousarray(rgb), heatmaps[k], caption))
    return rows


def write_report(out_dir: Path, title: str, body_md: str, images: Sequence[str]) -> None:
    """Write ``report.md`` and a self-contained-enough ``report.html`` (PNGs referenced beside it)."""
    atomic_write_text(out_dir / "report.md", body_md)
    parts = [
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:3px 6px;font-size:13px}</style>",
    ]
    in_table = False
    for line in body_md.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-: "):
                continue
            if not in_table:
                parts.append("<table>")
                in_table = True
            tag = "th" if len(parts) and parts[-1] == "<table>" else "td"
            parts.append(
                "<tr>" + "".join(f"<{tag}>{html.escape(c.replace('**', ''))}</{tag}>" for c in cells) + "</tr>"
            )
            continue
        if in_table:
            parts.append("</table>")
            in_table = False
        if line.startswith("#"):
            level = min(3, len(line) - len(line.lstrip("#")))
            parts.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("!["):
            src = line[line.index("(") + 1 : line.rindex(")")]
            parts.append(f"<p><img src='{html.escape(src)}' style='max-width:100%'></p>")
        elif line.strip():
            parts.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        parts.append("</table>")
    atomic_write_text(out_dir / "report.html", "\n".join(parts) + "\n")


def evaluate_predictions(
    preds: Predictions,
    labelset: LabelSet,
    out_dir: Path,
    *,
    title: str,
    data_note: str,
    iterations: int = 1000,
    gradcam_png: np.ndarray | None = None,
) -> dict[str, Any]:
    """Write metrics.json, predictions.csv, confusion.png, (gradcam.png) and the report for one model."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report = metrics_report(preds, labelset, iterations=iterations)
    write_predictions(preds, labelset, out_dir / "predictions.csv")
    confusion_png(np.asarray(report["confusion_matrix"]), labelset.names, preds.name, out_dir / "confusion.png")
    images = ["confusion.png"]
    if gradcam_png is not None:
        images.append("gradcam.png")
    atomic_write_json(out_dir / "metrics.json", report)
    rt = report["reading_time"]
    body = [
        f"# {title}",
        "",
        data_note,
        "",
        f"Top-1 accuracy {report['mean']['overall_accuracy']['value']:.3f} on {report['images']} images; "
        f"reading time {rt['total_seconds']:.2f} s ({rt['images_per_second']} images/s, batch inference on this "
        "machine). Values: point estimate (95 % bootstrap CI, "
        f"{iterations} resamples of the images); accuracy/specificity/NPV are one-vs-rest per class.",
        "",
        markdown_table(report, labelset.names),
        "",
        *(f"![{name}]({name})" for name in images),
        "",
    ]
    write_report(out_dir, title, "\n".join(body), images)
    return report


def evaluate_run(
    run_dir: Path, model: Any, manifest: ModelManifest, dataset: Dataset, recipe: Any, log: Log = print
) -> dict[str, Any]:
    """Evaluate a just-trained model on the recipe's held-out split; return summary metrics for the manifest."""
    from endoedge.train.data import load_split
    from endoedge.train.gradcam import write_sheet

    split = recipe.evaluate.split
    spec = manifest.preprocess
    prepared = load_split(dataset, split, spec, recipe.training.on_unreadable)
    probs, seconds = predict(model, prepared.pixels, spec, name=manifest.name)
    preds = Predictions(manifest.name, prepared.paths, prepared.labels.astype(np.int64), probs, seconds)
    out = run_dir / "evaluation"
    out.mkdir(exist_ok=True)
    rows = gradcam_rows(model, prepared.pixels, spec, preds, dataset.labelset, recipe.evaluate.gradcam_images)
    sheet = None
    if rows:
        write_sheet(rows, out / "gradcam.png")
        sheet = rows[0]
    note = (
        f"Data: split `{split}` of `{Path(str(dataset.source)).name}` ({len(preds.paths)} images, "
        f"label set {dataset.labelset.tag}), never used for training or model selection."
        + (f" {len(prepared.skipped)} unreadable image(s) skipped." if prepared.skipped else "")
    )
    report = evaluate_predictions(
        preds,
        dataset.labelset,
        out,
        title=f"{manifest.name}: evaluation on the {split} split",
        data_note=note,
        iterations=recipe.evaluate.bootstrap,
        gradcam_png=sheet,
    )
    mean = report["mean"]
    summary = {
        f"{split}_images": report["images"],
        f"{split}_accuracy": mean["overall_accuracy"]["value"],
        f"{split}_accuracy_ci95": [mean["overall_accuracy"]["low"], mean["overall_accuracy"]["high"]],
        **{f"{split}_mean_{m}": mean[m]["value"] for m in METRICS},
        f"{split}_images_per_second": report["reading_time"]["images_per_second"],
    }
    log(f"{split}: accuracy {mean['overall_accuracy']['value']:.3f} on {report['images']} images")
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in summary.items()}


def load_json(path: Path) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------------
# Comparing models (and readers) on the same images
# --------------------------------------------------------------------------------------------------


def load_reader_study(path: Path, labelset: LabelSet, paths: Sequence[str]) -> dict[str, np.ndarray]:
    """Read endoscopists' labels (CSV ``path,reader,label``) for the evaluated images.

    Paths match the evaluation set by their value as written or by file name. Every reader must label
    every evaluated image exactly once.

    Returns:
        ``{reader: predicted label index per evaluated image}``.

    Raises:
        DatasetError: Naming the CSV row: unknown image, unknown label, duplicate, or missing images.
    """
    from endoedge.core.errors import ConfigError, DatasetError

    index = {p: i for i, p in enumerate(paths)}
    by_name = {Path(p).name: i for i, p in enumerate(paths)}
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise DatasetError(f"cannot read reader-study CSV: {exc.strerror or exc}", path) from None
    reader = csv.DictReader(io.StringIO(text))
    missing = {"path", "reader", "label"} - set(reader.fieldnames or [])
    if missing:
        raise DatasetError(f"missing column(s) {', '.join(sorted(missing))} (need path,reader,label)", f"{path}:1")
    answers: dict[str, dict[int, int]] = {}
    for line, row in enumerate(reader, start=2):
        where = f"{path}:row {line}"
        image = (row.get("path") or "").strip()
        i = index.get(image, by_name.get(Path(image).name))
        if i is None:
            raise DatasetError(f"image {image!r} is not in the evaluated set", where)
        try:
            label = labelset.index_of((row.get("label") or "").strip())
        except ConfigError as exc:
            raise DatasetError(exc.message, where) from None
        name = (row.get("reader") or "").strip() or "reader"
        if i in answers.setdefault(name, {}):
            raise DatasetError(f"reader {name!r} labels {image!r} twice", where)
        answers[name][i] = label
    if not answers:
        raise DatasetError("reader-study CSV has no rows", path)
    out = {}
    for name, given in answers.items():
        if len(given) != len(paths):
            absent = next(p for i, p in enumerate(paths) if i not in given)
            raise DatasetError(
                f"reader {name!r} labelled {len(given)} of {len(paths)} evaluated images (e.g. not {absent!r})", path
            )
        out[name] = np.array([given[i] for i in range(len(paths))], dtype=np.int64)
    return out


def comparison_table(
    entries: Sequence[tuple[str, np.ndarray]], y_true: np.ndarray, labelset: LabelSet
) -> tuple[str, dict[str, Any]]:
    """Mean metrics of several predictors on the same images, with P values of each against the first.

    The site paper's Table 1 layout: one row per metric, one column per model (or reader), and P values.
    Overall accuracy is compared with McNemar's exact test on per-image correctness; each mean metric
    with a two-sided Wilcoxon signed-rank test over the paired per-class values.

    Args:
        entries: ``(name, predicted labels)``; the first is the reference the others are tested against.
        y_true: True labels.
        labelset: The label set.

    Returns:
        ``(markdown, json-ready dict)``.
    """
    from endoedge.train.metrics import mcnemar_exact, per_class_metrics, summary_metrics, wilcoxon_signed_rank

    n = len(labelset)
    per = {name: per_class_metrics(confusion_matrix(y_true, pred, n)) for name, pred in entries}
    summ = {name: summary_metrics(confusion_matrix(y_true, pred, n)) for name, pred in entries}
    ref_name, ref_pred = entries[0]
    rows = ["overall_accuracy", *METRICS]
    result: dict[str, Any] = {"reference": ref_name, "images": len(y_true), "metrics": {}, "p_values": {}}
    for name, pred in entries[1:]:
        b, c, p = mcnemar_exact(ref_pred == y_true, pred == y_true)
        pvals = {"overall_accuracy": p, "mcnemar_b": b, "mcnemar_c": c}
        for m in METRICS:
            pvals[m] = wilcoxon_signed_rank(per[ref_name][m], per[name][m])[1]
        result["p_values"][name] = pvals
    for m in rows:
        result["metrics"][m] = {name: summ[name][m] for name, _ in entries}
    heads = [name for name, _ in entries] + [f"P ({ref_name} vs {name})" for name, _ in entries[1:]]
    lines = ["| metric | " + " | ".join(heads) + " |", "|" + "---|" * (len(heads) + 1)]
    for m in rows:
        cells = [f"{summ[name][m]:.3f}" for name, _ in entries]
        cells += [_fmt_p(result["p_values"][name][m]) for name, _ in entries[1:]]
        label = "accuracy (top-1)" if m == "overall_accuracy" else f"mean {m.upper() if m in ('ppv', 'npv') else m}"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    notes = (
        "\nP values: McNemar's exact test on per-image correctness for top-1 accuracy; two-sided Wilcoxon "
        f"signed-rank test over the {n} paired per-class values for the mean metrics."
    )
    return "\n".join(lines) + "\n" + notes, result


def _fmt_p(p: float) -> str:
    if math.isnan(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"
