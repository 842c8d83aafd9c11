"""Benchmark outputs: a terminal table, JSON, Markdown and a PNG chart, filed per machine.

Every JSON result embeds the machine fingerprint. :func:`write_results` files results under
``<root>/<machine_id>/<bundle>/`` and refuses to write into a folder whose ``machine.json`` describes
another machine (different hardware, power mode or runtime versions) unless told to, so results from
different boxes are never mixed silently.
"""

from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from endoedge.bench.fingerprint import fingerprint_differences
from endoedge.bench.parity import status_label
from endoedge.core.errors import EndoedgeError
from endoedge.core.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text

#: MLPerf Inference v3.1 Edge, ResNet-50 SingleStream p90 latency, TensorRT INT8 (closed division).
MLPERF_REFERENCE: Mapping[str, dict[str, Any]] = {
    "Jetson AGX Orin": {"benchmark": "MLPerf Inference v3.1 ResNet-50 SingleStream", "p90_ms": 0.64},
    "Jetson Orin NX": {"benchmark": "MLPerf Inference v3.1 ResNet-50 SingleStream", "p90_ms": 1.08},
}


def fmt_number(value: Any, digits: int = 3) -> str:
    """A compact cell: ``-`` for missing/NaN, ``g`` format otherwise."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e5 else f"{value:.3e}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table with aligned columns (numbers right-aligned)."""
    cells = [[fmt_number(c) if not isinstance(c, str) else c for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    numeric = [all(_looks_numeric(r[i]) for r in cells) and bool(cells) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric, strict=True))

    out = [line(list(headers)), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells]
    return "\n".join(s.rstrip() for s in out)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table (``|`` in cells escaped)."""

    def cell(value: Any) -> str:
        text = value if isinstance(value, str) else fmt_number(value)
        return text.replace("|", "\\|")

    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def _looks_numeric(text: str) -> bool:
    if text == "-":
        return True
    try:
        float(text.rstrip("%x"))
    except ValueError:
        return False
    return True


# ------------------------------------------------------------------------------------------------
# parity
# ------------------------------------------------------------------------------------------------

PARITY_HEADERS = (
    "format",
    "backend",
    "status",
    "agree",
    "max|dp|",
    "mean|dp|",
    "acc",
    "sens",
    "spec",
    "PPV",
    "NPV",
    "worst dSens pt",
    "video agree",
    "reason",
)


def parity_rows(report: Mapping[str, Any]) -> list[list[Any]]:
    """One row per artifact from a parity report's JSON form."""
    rows = []
    for r in report["results"]:
        m = r.get("metrics") or {}
        video = report.get("video", {}).get(r["format"], {})
        worst = m.get("worst_sensitivity_delta")
        rows.append(
            [
                r["format"],
                r.get("backend") or "-",
                status_label(r["status"]),
                m.get("top1_agreement"),
                m.get("max_abs_diff"),
                m.get("mean_abs_diff"),
                m.get("accuracy"),
                m.get("mean_sensitivity"),
                m.get("mean_specificity"),
                m.get("mean_ppv"),
                m.get("mean_npv"),
                None if worst is None else 100 * worst,
                video.get("displayed_agreement"),
                r.get("reason") or "",
            ]
        )
    return rows


def parity_text(report: Mapping[str, Any]) -> str:
    """Terminal form of a parity report."""
    head = (
        f"parity: {report['bundle']} — {report['images']} images from {report['data']}; "
        f"reference: {report['reference_source']}"
    )
    lines = [head, table(PARITY_HEADERS, parity_rows(report))]
    ref = report.get("video", {}).get("_reference")
    if ref:
        lines.append(_video_line(ref))
    if report.get("problems"):
        lines.append(f"{len(report['problems'])} images left out; first: {report['problems'][0]}")
    return "\n".join(lines)


def _video_line(ref: Mapping[str, Any]) -> str:
    if "error" in ref:
        return f"video parity: {ref['error']}"
    return (
        f"video parity: {ref['frames']} frames of {ref['clip']} at {ref['fps']:.3g} fps, reference {ref['format']} "
        f"({ref['reference_changes']} displayed-site changes)"
    )


def parity_markdown(report: Mapping[str, Any]) -> str:
    """Markdown form of a parity report (with the machine it ran on)."""
    machine = report.get("machine", {})
    lines = [
        f"# Parity: `{report['bundle']}`",
        "",
        f"{report['images']} images from `{report['data']}`; reference: {report['reference_source']}.",
        f"Machine: `{machine.get('machine_id', '?')}` ({machine.get('cpu_model', '?')}, "
        f"{machine.get('cpu_cores', '?')} cores, GPU {machine.get('gpu', '?')}).",
        "",
        markdown_table(PARITY_HEADERS, parity_rows(report)),
    ]
    ref = report.get("video", {}).get("_reference")
    if ref:
        lines += ["", _video_line(ref) + "."]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------
# latency
# ------------------------------------------------------------------------------------------------

LATENCY_HEADERS = (
    "subject",
    "format",
    "thr",
    "batch",
    "runs",
    "min ms",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "mean ms",
    "img/s",
    "CPU%",
    "RSS MiB",
    "GFLOP/s",
    "vs endoedge",
    "note",
)


def latency_rows(report: Mapping[str, Any]) -> list[list[Any]]:
    """One row per measured configuration, with each peer's p50 as a ratio to endoedge's on the same format."""
    ours = {
        (r["format"], r["threads"]): r["timing"]["p50_ms"]
        for r in report["rows"]
        if r["subject"] == "endoedge" and r["batch"] == 1 and r.get("timing")
    }
    rows = []
    for r in report["rows"]:
        t = r.get("timing") or {}
        res = r.get("resources") or {}
        same_format = [v for (f, _t), v in ours.items() if f == r["format"]]
        base = ours.get((r["format"], r["threads"])) or (min(same_format) if same_format else None)
        if base is None and r["format"] in ("keras", "savedmodel"):  # TF peers: compare with the fp32 runtimes
            base = ours.get(("tflite-fp32", r["threads"])) or ours.get(("onnx", r["threads"]))
        ratio = f"{t['p50_ms'] / base:.2f}x" if t and base and r["subject"] != "endoedge" else ""
        note = r.get("reason") or ""
        if r.get("copy_ms"):
            note = (note + " " + ", ".join(f"{k} {v:.3g}" for k, v in r["copy_ms"].items())).strip()
        if r["status"] != "ok":
            note = f"{r['status']}: {note}"
        subject = r["subject"]
        if subject == "endoedge-variant" and r.get("options"):
            subject = "endoedge " + ",".join(f"{k}={v}" for k, v in r["options"].items())
        rows.append(
            [
                subject,
                r["format"],
                r["threads"] or "dflt",
                r["batch"],
                t.get("runs"),
                t.get("min_ms"),
                t.get("p50_ms"),
                t.get("p90_ms"),
                t.get("p99_ms"),
                t.get("mean_ms"),
                t.get("throughput"),
                res.get("cpu_percent"),
                res.get("peak_rss_mib") if res.get("peak_rss_scope") == "measurement" else None,
                r.get("achieved_gflops"),
                ratio,
                note,
            ]
        )
    return rows


def latency_comparison_markdown(reports: Sequence[Mapping[str, Any]]) -> str:
    """Batch-1 p50 of endoedge's own rows, one row per format and thread count, one column per bundle."""
    names = [r["bundle"] for r in reports]
    cells: dict[tuple[str, Any], dict[str, float]] = {}
    for report in reports:
        for row in report["rows"]:
            if row["subject"] == "endoedge" and row["batch"] == 1 and row.get("timing"):
                cells.setdefault((row["format"], row["threads"]), {})[report["bundle"]] = row["timing"]["p50_ms"]
    headers = ["format", "threads", *(f"{n} p50 ms" for n in names)]
    if len(names) == 2:
        headers.append(f"{names[0]} / {names[1]}")
    rows = []
    for (fmt, threads), by_bundle in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        line: list[Any] = [fmt, threads or "dflt", *(by_bundle.get(n) for n in names)]
        if len(names) == 2:
            a, b = by_bundle.get(names[0]), by_bundle.get(names[1])
            line.append(f"{a / b:.2f}x" if a and b else "")
        rows.append(line)
    machine = reports[0]["machine"]
    lines = [
        f"# Latency, batch 1: {' vs '.join(names)}",
        "",
        f"Measured one after the other in one `endoedge bench latency --compare` run on "
        f"{machine.get('cpu_model', 'this CPU')} ({machine['machine_id']}); median (p50) of each format's "
        "own backend (input conversion included; field crop and resize excluded).",
        "",
        markdown_table(headers, rows),
        "",
    ]
    return "\n".join(lines)


def _conditions(report: Mapping[str, Any]) -> str:
    c = report.get("conditions", {})
    if not c:
        return ""
    return (
        f"conditions: load average {c.get('load_before')} before, {c.get('load_after')} after; "
        f"CPU pressure (some, avg10) {c.get('cpu_pressure_before')} before, {c.get('cpu_pressure_after')} after"
    )


def latency_text(report: Mapping[str, Any]) -> str:
    """Terminal form of a latency report."""
    m = report.get("machine", {})
    lines = [
        f"latency: {report['bundle']} on {m.get('machine_id', '?')} ({m.get('cpu_model', '?')}, "
        f"{m.get('cpu_cores', '?')} cores, GPU {m.get('gpu', '?')})",
        table(LATENCY_HEADERS, latency_rows(report)),
    ]
    if report.get("model_gflop"):
        lines.append(f"model: {report['model_gflop']:.3g} GFLOP per image ({report.get('flop_source', '')})")
    if report.get("cpu_peak_gflops"):
        lines.append(f"measured sgemm peak of this CPU: {report['cpu_peak_gflops']:.4g} GFLOP/s")
    if report.get("cpu_nominal_peak_gflops"):
        lines.append(
            f"nominal fp32 peak: {report['cpu_nominal_peak_gflops']:.4g} GFLOP/s = {report['cpu_nominal_peak_basis']}"
        )
    if cond := _conditions(report):
        lines.append(cond)
    jetson = m.get("jetson_model", "")
    for name, ref in MLPERF_REFERENCE.items():
        if jetson and name.lower().replace("jetson ", "") in jetson.lower():
            lines.append(f"reference: {ref['benchmark']} p90 {ref['p90_ms']} ms on {name} (TensorRT INT8)")
    return "\n".join(lines)


def latency_markdown(report: Mapping[str, Any]) -> str:
    """Markdown form of a latency report."""
    m = report.get("machine", {})
    lines = [
        f"# Latency: `{report['bundle']}`",
        "",
        f"Machine `{m.get('machine_id', '?')}`: {m.get('cpu_model', '?')}, {m.get('cpu_cores', '?')} cores "
        f"({', '.join(m.get('cpu_flags', []))}), {m.get('ram_gib', '?')} GiB, GPU {m.get('gpu', '?')}; "
        f"versions: {', '.join(f'{k} {v}' for k, v in m.get('versions', {}).items())}.",
        "",
        markdown_table(LATENCY_HEADERS, latency_rows(report)),
        "",
    ]
    if report.get("model_gflop"):
        lines.append(f"Model: {report['model_gflop']:.3g} GFLOP per image ({report.get('flop_source', '')}).")
    if report.get("cpu_peak_gflops"):
        lines.append(f"Measured sgemm peak of this CPU: {report['cpu_peak_gflops']:.4g} GFLOP/s.")
    if report.get("cpu_nominal_peak_gflops"):
        lines.append(
            f"Nominal fp32 peak: {report['cpu_nominal_peak_gflops']:.4g} GFLOP/s = {report['cpu_nominal_peak_basis']}."
        )
    if cond := _conditions(report):
        lines.append(cond[0].upper() + cond[1:] + ".")
    lines.append(f"Plan: {json.dumps(report.get('plan', {}))}.")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------
# charts
# ------------------------------------------------------------------------------------------------


def matplotlib_available() -> bool:
    """True when matplotlib is installed (charts are skipped otherwise)."""
    return importlib.util.find_spec("matplotlib") is not None


def bar_chart_png(
    labels: Sequence[str], values: Sequence[float], title: str, xlabel: str, marks: Sequence[float] = ()
) -> bytes | None:
    """A horizontal bar chart as PNG bytes (``None`` without matplotlib)."""
    if not matplotlib_available():
        return None
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.45 * len(labels) + 1.4), dpi=100)
    try:
        ax.barh(range(len(labels)), values, color="#3b7dd8")
        ax.set_yticks(range(len(labels)), labels)
        ax.invert_yaxis()
        for mark in marks:
            ax.axvline(mark, color="#c0392b", linestyle="--", linewidth=1)
        for i, v in enumerate(values):
            ax.text(v, i, f" {v:.3g}", va="center", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
    return buffer.getvalue()


def parity_chart(report: Mapping[str, Any]) -> bytes | None:
    """Top-1 agreement per artifact (the int8 target marked)."""
    rows = [r for r in report["results"] if r.get("metrics")]
    if not rows:
        return None
    return bar_chart_png(
        [f"{r['format']} ({r['status']})" for r in rows],
        [100 * r["metrics"]["top1_agreement"] for r in rows],
        f"parity vs float reference: {report['bundle']}",
        "top-1 agreement (%)",
        marks=(99.0,),
    )


def latency_chart(report: Mapping[str, Any]) -> bytes | None:
    """Batch-1 p50 of every measured subject."""
    rows = [r for r in report["rows"] if r.get("timing") and r["batch"] == 1]
    if not rows:
        return None
    return bar_chart_png(
        [f"{r['subject']} {r['format']} t{r['threads'] or 'd'}" for r in rows],
        [r["timing"]["p50_ms"] for r in rows],
        f"batch-1 latency p50: {report['bundle']} on {report.get('machine', {}).get('machine_id', '?')}",
        "ms (lower is better)",
    )


# ------------------------------------------------------------------------------------------------
# filing
# ------------------------------------------------------------------------------------------------


def write_results(
    root: str | Path,
    kind: str,
    report: dict[str, Any],
    text_md: str,
    chart: bytes | None,
    force: bool = False,
) -> Path:
    """File a report under ``root/<machine_id>/<bundle>/<kind>.{json,md,png}`` and ``root/<machine_id>/machine.json``.

    Raises:
        EndoedgeError: ``machine.json`` in that folder describes another machine (the differences are
            listed); pass ``force`` to overwrite it knowingly.
    """
    machine = report["machine"]
    folder = Path(root) / machine["machine_id"]
    machine_file = folder / "machine.json"
    if machine_file.exists() and not force:
        try:
            existing = json.loads(machine_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise EndoedgeError(f"cannot read existing machine record: {exc}", machine_file) from None
        diffs = fingerprint_differences(existing, machine)
        if diffs:
            raise EndoedgeError(
                "results here come from another machine or software stack (" + "; ".join(diffs[:4]) + "); "
                "use another --out or --force",
                machine_file,
            )
    stable = {k: v for k, v in machine.items() if k not in ("load_avg", "python_executable")}
    atomic_write_json(machine_file, stable)
    target = folder / report["bundle"]
    atomic_write_json(target / f"{kind}.json", report)
    atomic_write_text(target / f"{kind}.md", text_md)
    if chart is not None:
        atomic_write_bytes(target / f"{kind}.png", chart)
    return target
