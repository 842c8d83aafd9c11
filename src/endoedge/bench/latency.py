"""Latency of every backend and precision of a bundle, with peers measured side by side in the same run.

For each artifact with a runtime here, endoedge's own backend is timed at batch 1 (the live case) and
over a batch sweep (best throughput). Peers run the same artifact or model without endoedge's wrapper
so its overhead is visible and the numbers can be cross-checked:

* ``raw-litert`` / ``raw-onnxruntime`` — the runtime called directly on a pre-made input tensor
  (same file, same thread count), i.e. without normalisation, quantisation or checks;
* ``tf-function`` — the SavedModel's serving signature (a ``tf.function``), when TensorFlow is installed;
* ``keras-predict`` / ``keras-predict-on-batch`` — the Keras model, when a ``.keras`` file is given;
* ``polygraphy`` — ``polygraphy run --onnxrt`` in a subprocess, parsed from its own report (an
  independent measurement of ONNX Runtime);
* ``trtexec`` — on a box with TensorRT, ``trtexec --loadEngine`` for the engines.

Where a backend reports host↔device copies separately (``last_timings`` with ``h2d_ms``/``d2h_ms``,
as the TensorRT backend does), they are recorded beside the total.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import importlib.util
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from endoedge.bench.resources import ResourceMonitor, ResourceUsage
from endoedge.bench.stats import RunPlan, TimingSummary, summarize, time_calls
from endoedge.core.bundle import Bundle
from endoedge.core.errors import EndoedgeError, one_line
from endoedge.core.formats import FORMATS

log = logging.getLogger(__name__)

PEERS = ("raw", "tf-function", "keras", "polygraphy", "trtexec")


@dataclass
class LatencyRow:
    """One measured configuration.

    Attributes:
        subject: What was timed (``endoedge``, ``raw-litert``, ``tf-function``, ``polygraphy``...).
        backend: Runtime (``tflite``, ``onnxruntime``, ``savedmodel``, ``keras``, ``tensorrt``).
        format: Artifact format (or ``keras`` for the Keras model).
        precision: fp32 / fp16 / int8.
        threads: CPU threads given to the runtime (0: the runtime's default).
        batch: Images per call.
        timing: The summary (``None`` when skipped or failed).
        stopped_by: Why measurement stopped (see :func:`endoedge.bench.stats.time_calls`).
        resources: CPU%, peak RSS and GPU figures of the timed block.
        copy_ms: Host→device / device→host copy medians where the backend reports them.
        status: ``ok``, ``skipped`` (cannot run here: reason) or ``failed`` (reason).
        reason: Why skipped or failed.
        options: Backend options used.
        gflop_per_image: Model compute per image, when counted.
        sha256: The artifact measured (endoedge's own rows), so a result names the exact file.
    """

    subject: str
    backend: str
    format: str
    precision: str
    threads: int = 0
    batch: int = 1
    timing: TimingSummary | None = None
    stopped_by: str = ""
    resources: ResourceUsage | None = None
    copy_ms: dict[str, float] = field(default_factory=dict)
    status: str = "ok"
    reason: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    gflop_per_image: float | None = None
    sha256: str = ""

    @property
    def achieved_gflops(self) -> float | None:
        """GFLOP/s reached (model FLOPs × throughput), when the model's FLOPs are known."""
        if self.timing is None or not self.gflop_per_image:
            return None
        return self.gflop_per_image * self.timing.throughput

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "subject": self.subject,
            "backend": self.backend,
            "format": self.format,
            "precision": self.precision,
            "threads": self.threads,
            "batch": self.batch,
            "timing": self.timing.to_dict() if self.timing else None,
            "stopped_by": self.stopped_by,
            "resources": self.resources.to_dict() if self.resources else None,
            "copy_ms": dict(self.copy_ms),
            "status": self.status,
            "reason": self.reason,
            "options": dict(self.options),
            "gflop_per_image": self.gflop_per_image,
            "sha256": self.sha256,
            "achieved_gflops": self.achieved_gflops,
        }


def measure_call(
    row: LatencyRow,
    fn: Callable[[], object],
    plan: RunPlan,
    timings_of: Callable[[], dict[str, float] | None] | None = None,
) -> LatencyRow:
    """Time ``fn`` under ``plan`` with resource monitoring and fill ``row`` (``failed`` on error)."""
    copies: dict[str, list[float]] = {}

    def call() -> object:
        out = fn()
        if timings_of is not None:
            for key, value in (timings_of() or {}).items():
                copies.setdefault(key, []).append(float(value))
        return out

    gc.collect()
    try:
        with ResourceMonitor() as monitor:
            runs = time_calls(call, plan)
    except Exception as exc:  # a runtime failing under load is a result to report, not a crash
        row.status, row.reason = "failed", f"{type(exc).__name__}: {one_line(exc)}"[:300]
        return row
    row.timing = summarize(runs.samples_s, row.batch)
    row.stopped_by = runs.stopped_by
    row.resources = monitor.usage
    row.copy_ms = {k: float(np.median(v)) for k, v in copies.items() if k.endswith("_ms")}
    return row


def sweep_plan(plan: RunPlan, batch: int) -> RunPlan:
    """A shorter plan for batch > 1 (throughput, not tail latency, is wanted there)."""
    if batch == 1:
        return plan
    return RunPlan(
        warmup_runs=min(plan.warmup_runs, 2),
        min_runs=max(5, plan.min_runs // batch),
        min_seconds=plan.min_seconds,
        max_seconds=plan.max_seconds,
        max_runs=plan.max_runs,
    )


def tile_pixels(pixels: np.ndarray, batch: int) -> np.ndarray:
    """A batch of ``batch`` images made by repeating the given ones."""
    reps = -(-batch // len(pixels))
    return np.ascontiguousarray(np.concatenate([pixels] * reps)[:batch])


# ------------------------------------------------------------------------------------------------
# endoedge's backends
# ------------------------------------------------------------------------------------------------


def runnable_formats(bundle: Bundle, formats: Sequence[str] | None = None) -> list[tuple[str, str, str]]:
    """``(format, backend, skip reason)`` for each artifact (reason "" when it can run here).

    TensorRT engines are included even when the bundle does not list them: the ``tensorrt`` backend
    builds them on the target from the bundle's ONNX (see ``endoedge.edge.box.trt_engine``).
    """
    from endoedge.edge.backends import BACKENDS, choose_format, is_available

    listed = [a.format for a in bundle.manifest.artifacts]
    buildable = []
    for fmt, row in FORMATS.items():
        if row.target_only and fmt not in listed and row.runtime in BACKENDS:
            with contextlib.suppress(EndoedgeError):
                buildable.append(choose_format(row.runtime, bundle.manifest, fmt))
    out = []
    for fmt in listed + buildable:
        if formats and fmt not in formats:
            continue
        backend = FORMATS[fmt].runtime
        reason = ""
        if backend not in BACKENDS:
            reason = f"no {backend} backend in this endoedge"
        elif not is_available(backend):
            reason = f"{backend} runtime not installed here ({BACKENDS[backend].requires[0][1]})"
            if fmt in buildable:
                reason = f"engine is built on the target from the bundle's ONNX; {reason}"
        out.append((fmt, backend, reason))
    return out


def format_precision(bundle: Bundle, fmt: str) -> str:
    """Precision of a listed artifact, or of the format (engines built on the target)."""
    for art in bundle.manifest.artifacts:
        if art.format == fmt:
            return art.precision
    return FORMATS[fmt].precision


def measure_backend(
    bundle: Bundle,
    fmt: str,
    backend_name: str,
    pixels: np.ndarray,
    plan: RunPlan,
    threads: int,
    batches: Sequence[int] = (1,),
    options: dict[str, Any] | None = None,
    subject: str = "endoedge",
) -> tuple[list[LatencyRow], Any]:
    """Time endoedge's backend for one artifact at each batch size.

    Returns:
        The rows and the loaded backend (``None`` when loading failed), so peers can reuse its input.
    """
    from endoedge.edge.backends import create_backend

    precision = format_precision(bundle, fmt)
    opts = {"threads": threads, **(options or {})}
    threads = int(opts["threads"] or 0)  # a variant may set its own thread count
    try:
        backend = create_backend(backend_name, bundle, fmt, **opts)
    except (EndoedgeError, OSError) as exc:
        row = LatencyRow(subject, backend_name, fmt, precision, threads, status="failed", reason=one_line(exc))
        return [row], None
    rows = []

    def copy_timings() -> dict[str, float] | None:
        return getattr(backend, "last_timings", None)

    timings_of = copy_timings if hasattr(backend, "last_timings") else None
    for batch in batches:
        batch_pixels = tile_pixels(pixels, batch)
        row = LatencyRow(subject, backend_name, fmt, precision, threads, batch, options=dict(options or {}))
        row.sha256 = str(getattr(getattr(backend, "artifact", None), "sha256", ""))

        def call(batch_pixels: np.ndarray = batch_pixels) -> object:
            return backend.infer(batch_pixels)

        rows.append(measure_call(row, call, sweep_plan(plan, batch), timings_of))
        if row.status == "failed":
            break
    return rows, backend


# ------------------------------------------------------------------------------------------------
# peers
# ------------------------------------------------------------------------------------------------


def raw_runtime_row(backend: Any, pixels: np.ndarray, plan: RunPlan, threads: int) -> LatencyRow | None:
    """Time the runtime under an endoedge backend directly on a pre-made input tensor (batch 1)."""
    name = getattr(backend, "name", "")
    fmt, precision = backend.format, backend.artifact.precision
    one = pixels[:1]
    if name == "tflite":
        from endoedge.edge.backends.tflite import _interpreter_module

        module, _ = _interpreter_module()
        interpreter = module.Interpreter(model_path=str(backend.path), num_threads=threads)
        interpreter.allocate_tensors()
        inp = interpreter.get_input_details()[0]
        out = interpreter.get_output_details()[0]
        tensor = backend.input_tensor(one)

        def call() -> object:
            interpreter.set_tensor(inp["index"], tensor)
            interpreter.invoke()
            return interpreter.get_tensor(out["index"])

        row = LatencyRow("raw-litert", "tflite", fmt, precision, threads, options={"runtime": backend.runtime})
        return measure_call(row, call, plan)
    if name == "onnxruntime":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        session = ort.InferenceSession(str(backend.path), sess_options=so, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: backend.input_tensor(one)}
        row = LatencyRow("raw-onnxruntime", "onnxruntime", fmt, precision, threads, options={"defaults": True})
        return measure_call(row, lambda: session.run(None, feed), plan)
    return None


def tf_function_row(bundle: Bundle, pixels: np.ndarray, plan: RunPlan, threads: int) -> LatencyRow:
    """Time the SavedModel's serving signature (a concrete ``tf.function``) at batch 1."""
    row = LatencyRow("tf-function", "savedmodel", "savedmodel", "fp32", threads)
    if importlib.util.find_spec("tensorflow") is None:
        row.status, row.reason = "skipped", "TensorFlow not installed"
        return row
    try:
        bundle.manifest.artifact("savedmodel")
    except EndoedgeError:
        row.status, row.reason = "skipped", "bundle has no savedmodel artifact"
        return row
    tf = _tensorflow(threads)
    from endoedge.core.preprocess import normalize

    row.threads = int(tf.config.threading.get_intra_op_parallelism_threads()) or threads

    loaded = tf.saved_model.load(str(bundle.artifact_path("savedmodel")))
    fn = loaded.signatures["serving_default"]
    tensor = tf.constant(normalize(pixels[:1], bundle.manifest.preprocess))
    return measure_call(row, lambda: fn(tensor), plan)


def keras_rows(
    keras_path: Path, bundle: Bundle, pixels: np.ndarray, plan: RunPlan, threads: int, with_tf_function: bool = False
) -> list[LatencyRow]:
    """Time ``model.predict`` and ``model.predict_on_batch`` of a ``.keras`` file at batch 1.

    With ``with_tf_function`` (a bundle without SavedModel), the model under ``tf.function`` too.
    """
    rows = [
        LatencyRow("keras-predict", "keras", "keras", "fp32", threads),
        LatencyRow("keras-predict-on-batch", "keras", "keras", "fp32", threads),
    ]
    if with_tf_function:
        rows.append(LatencyRow("tf-function", "keras", "keras", "fp32", threads))
    if importlib.util.find_spec("tensorflow") is None:
        for row in rows:
            row.status, row.reason = "skipped", "TensorFlow not installed"
        return rows
    _tensorflow(threads)
    import keras

    with contextlib.suppress(ImportError):
        importlib.import_module("endoedge.train.models")  # registers endoedge's custom layers
    from endoedge.core.preprocess import normalize

    model = keras.models.load_model(keras_path, compile=False)
    x = normalize(pixels[:1], bundle.manifest.preprocess)
    measure_call(rows[0], lambda: model.predict(x, verbose=0), plan)
    measure_call(rows[1], lambda: model.predict_on_batch(x), plan)
    if with_tf_function:
        tf = _tensorflow(threads)
        graph = tf.function(lambda t: model(t, training=False))
        tensor = tf.constant(x)
        measure_call(rows[2], lambda: graph(tensor), plan)
    for row in rows:
        row.threads = int(tf_threads()) or threads
    return rows


def tf_threads() -> int:
    """TensorFlow's intra-op thread setting in force (0: its default)."""
    tf = importlib.import_module("tensorflow")
    return int(tf.config.threading.get_intra_op_parallelism_threads())


def _tensorflow(threads: int) -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    tf = importlib.import_module("tensorflow")
    with contextlib.suppress(RuntimeError):  # already initialised: keep its setting
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    return tf


_POLY_AVG = re.compile(r"Completed (\d+) iteration\(s\) in ([\d.]+) ms \| Average inference time: ([\d.]+) ms")


def parse_polygraphy(output: str) -> dict[str, float]:
    """Parse ``polygraphy run`` log output into ``mean_ms`` and ``iterations``.

    Polygraphy logs ``Completed N iteration(s) in T ms | Average inference time: A ms.``
    """
    m = _POLY_AVG.search(output)
    if not m:
        return {}
    return {"iterations": float(m.group(1)), "total_ms": float(m.group(2)), "mean_ms": float(m.group(3))}


def polygraphy_runtimes(results: Any) -> list[float]:
    """Per-iteration runtimes (seconds) from the JSON that ``polygraphy run --save-results`` writes.

    The file is polygraphy's ``RunResults`` JSON: ``{"lst": [[runner, [{"runtime": s, ...}, ...]], ...]}``;
    only the ``runtime`` numbers are read (the arrays it also holds are never decoded).
    """
    runtimes: list[float] = []
    for entry in results.get("lst", []) if isinstance(results, dict) else []:
        if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], list):
            runtimes += [float(it["runtime"]) for it in entry[1] if isinstance(it, dict) and "runtime" in it]
    return runtimes


def polygraphy_command() -> list[str] | None:
    """How to run polygraphy here (the console script beside this Python, or on PATH)."""
    beside = Path(sys.executable).with_name("polygraphy")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("polygraphy")
    return [found] if found else None


def polygraphy_row(bundle: Bundle, fmt: str, iterations: int, timeout: float = 900) -> LatencyRow:
    """Run ``polygraphy run MODEL --onnxrt`` at batch 1 and summarise its own per-iteration runtimes.

    Polygraphy creates its ONNX Runtime session with default options (all cores, full graph
    optimisation), feeds random data of the model's input type, runs one warm-up and then
    ``iterations`` timed runs; its ``--save-results`` JSON carries each iteration's runtime.
    """
    import json
    import tempfile

    art = bundle.manifest.artifact(fmt)
    row = LatencyRow("polygraphy", "onnxruntime", fmt, art.precision, 0, options={"iterations": iterations})
    command = polygraphy_command()
    if command is None:
        row.status, row.reason = "skipped", "polygraphy not installed (pip install polygraphy)"
        return row
    model = bundle.artifact_path(fmt)
    shape = bundle.manifest.preprocess.input_shape(1)
    with tempfile.TemporaryDirectory(prefix="endoedge-polygraphy-") as tmp:
        saved = Path(tmp) / "results.json"
        argv = [*command, "run", str(model), "--onnxrt", "--iterations", str(iterations), "--warm-up", "1"]
        argv += ["--sequential-runners", "--save-results", str(saved)]
        argv += ["--input-shapes", f"{_onnx_input_name(model)}:[{','.join(str(d) for d in shape)}]"]
        try:
            with ResourceMonitor(sample_gpu=False) as monitor:
                done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            row.status, row.reason = "failed", one_line(exc)
            return row
        parsed = parse_polygraphy(done.stdout + done.stderr)
        runtimes: list[float] = []
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            runtimes = polygraphy_runtimes(json.loads(saved.read_text()))
    if done.returncode != 0 or not (parsed or runtimes):
        tail = " ".join((done.stderr or done.stdout).strip().splitlines()[-2:])[:300]
        row.status, row.reason = "failed", f"polygraphy exit {done.returncode}: {tail}"
        return row
    if runtimes:
        row.timing = summarize(runtimes, 1)
        row.stopped_by = "polygraphy-iterations"
    else:  # only the logged mean: every statistic carries it, and stopped_by says so
        row.timing = summarize([parsed["mean_ms"] / 1000.0] * int(parsed["iterations"]), 1)
        row.stopped_by = "polygraphy-mean-only"
    # The subprocess's CPU time is not this process's: only its wall time is meaningful here.
    row.resources = ResourceUsage(wall_s=monitor.usage.wall_s, peak_rss_scope="not measured (subprocess)")
    return row


def _onnx_input_name(model: Path) -> str:
    try:
        import onnxruntime as ort

        return str(ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).get_inputs()[0].name)
    except Exception:  # polygraphy will then report the real problem
        return "input"


_TRTEXEC_MEAN = re.compile(
    r"GPU Compute Time: min = ([\d.]+) ms, max = ([\d.]+) ms, mean = ([\d.]+) ms, median = ([\d.]+) ms"
)
_TRTEXEC_H2D = re.compile(r"H2D Latency: .*median = ([\d.]+) ms")
_TRTEXEC_D2H = re.compile(r"D2H Latency: .*median = ([\d.]+) ms")


def parse_trtexec(output: str) -> dict[str, float]:
    """Parse ``trtexec`` performance summary lines (GPU compute min/max/mean/median/p99, H2D/D2H medians)."""
    out: dict[str, float] = {}
    if m := _TRTEXEC_MEAN.search(output):
        out.update(min_ms=float(m.group(1)), max_ms=float(m.group(2)), mean_ms=float(m.group(3)))
        out["median_ms"] = float(m.group(4))
    for line in output.splitlines():
        if "GPU Compute Time" in line:
            for pct, value in re.findall(r"percentile\((\d+)%\) = ([\d.]+) ms", line):
                out[f"p{pct}_ms"] = float(value)
    if m := _TRTEXEC_H2D.search(output):
        out["h2d_ms"] = float(m.group(1))
    if m := _TRTEXEC_D2H.search(output):
        out["d2h_ms"] = float(m.group(1))
    return out


def trtexec_row(bundle: Bundle, fmt: str, seconds: float, engine: Path | None = None) -> LatencyRow:
    """Run ``trtexec --loadEngine`` for a TensorRT engine (on a box with TensorRT).

    Args:
        bundle: The bundle.
        fmt: ``trt-fp16`` or ``trt-int8``.
        seconds: Measurement duration.
        engine: The engine file (built on the target, in the engine cache); default: the bundle's artifact.
    """
    row = LatencyRow("trtexec", "tensorrt", fmt, format_precision(bundle, fmt))
    exe = shutil.which("trtexec") or next(
        (p for p in ("/usr/src/tensorrt/bin/trtexec", "/usr/local/bin/trtexec") if Path(p).exists()), None
    )
    if exe is None:
        row.status, row.reason = "skipped", "trtexec not found (JetPack: /usr/src/tensorrt/bin/trtexec)"
        return row
    argv = [exe, f"--loadEngine={engine or bundle.artifact_path(fmt)}", f"--duration={max(1, int(seconds))}"]
    argv.append("--percentile=90,99")
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds * 5 + 120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        row.status, row.reason = "failed", one_line(exc)
        return row
    parsed = parse_trtexec(done.stdout)
    if done.returncode != 0 or "median_ms" not in parsed:
        row.status, row.reason = "failed", f"trtexec exit {done.returncode}"
        return row
    row.timing = TimingSummary(
        runs=0,
        batch=1,
        total_s=0.0,
        mean_ms=parsed["mean_ms"],
        std_ms=0.0,
        min_ms=parsed["min_ms"],
        p50_ms=parsed["median_ms"],
        p90_ms=parsed.get("p90_ms", parsed["median_ms"]),
        p99_ms=parsed.get("p99_ms", parsed["max_ms"]),
        max_ms=parsed["max_ms"],
        throughput=1000.0 / parsed["mean_ms"],
    )
    row.copy_ms = {k: v for k, v in parsed.items() if k in ("h2d_ms", "d2h_ms")}
    row.stopped_by = "trtexec"
    return row


# ------------------------------------------------------------------------------------------------
# the whole run
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LatencySettings:
    """What ``endoedge bench latency`` measures.

    Attributes:
        formats: Artifact formats (empty: all in the bundle).
        threads: CPU thread counts to try (each gets its own rows).
        batches: Batch sizes for the throughput sweep (1 is always measured first).
        plan: Stopping rules for batch 1 (the sweep uses :func:`sweep_plan`).
        peers: Peers to run (subset of :data:`PEERS`).
        keras_path: A ``.keras`` file for the Keras peers.
        variants: Extra batch-1 endoedge rows as ``(backend, options)`` (e.g. XNNPACK off).
        polygraphy_iterations: Timed iterations for polygraphy.
        measure_peak: Also measure this CPU's sgemm peak.
    """

    formats: tuple[str, ...] = ()
    threads: tuple[int, ...] = (0,)
    batches: tuple[int, ...] = (1, 2, 4, 8)
    plan: RunPlan = field(default_factory=RunPlan)
    peers: tuple[str, ...] = PEERS
    keras_path: Path | None = None
    variants: tuple[tuple[str, dict[str, Any]], ...] = ()
    polygraphy_iterations: int = 30
    measure_peak: bool = True


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``tflite:xnnpack=false,threads=1`` → ``("tflite", {"xnnpack": False, "threads": 1})``.

    Raises:
        EndoedgeError: Not ``backend:key=value[,key=value]``, or an unknown backend or option.
    """
    backend, sep, rest = text.partition(":")
    if not sep or not backend or not rest:
        raise EndoedgeError(f"variant {text!r} must look like backend:key=value[,key=value]")
    options: dict[str, Any] = {}
    for item in rest.split(","):
        key, eq, raw = item.partition("=")
        if not eq or not key:
            raise EndoedgeError(f"variant {text!r}: {item!r} is not key=value")
        value: Any = raw
        if raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        else:
            with contextlib.suppress(ValueError):
                value = int(raw)
        options[key.strip()] = value
    from endoedge.edge.backends import check_backend_options

    check_backend_options(backend.strip(), options)  # a typo fails here, not as a "failed" row later
    return backend.strip(), options


def run_latency(
    bundle: Bundle,
    pixels: np.ndarray,
    settings: LatencySettings,
    progress: Callable[[str], None] | None = None,
) -> tuple[list[LatencyRow], dict[str, Any]]:
    """Measure every runnable artifact with endoedge's backends and the peers.

    Args:
        bundle: Opened bundle.
        pixels: ``uint8`` ``N×H×W×3`` prepared pixels (real images preferably) to feed.
        settings: What to measure.
        progress: Called with a line before each measurement (for the terminal).

    Returns:
        The rows, and extra facts: ``model_gflop``, ``flop_source``, ``cpu_peak_gflops``.
    """
    from endoedge.bench.flops import count_model_gflop, measured_sgemm_gflops, theoretical_peak_gflops
    from endoedge.edge.backends import default_threads

    say = progress or (lambda _line: None)
    rows: list[LatencyRow] = []
    extra: dict[str, Any] = {}
    entries = runnable_formats(bundle, settings.formats or None)
    gflop: float | None = None
    for fmt, _backend, reason in entries:
        countable = fmt.startswith(("tflite", "onnx"))
        if not reason and countable and (counted := count_model_gflop(bundle.artifact_path(fmt), fmt)):
            gflop, extra["flop_source"] = counted
            break
    extra["model_gflop"] = gflop
    thread_counts = [t or default_threads() for t in settings.threads]
    engines: dict[str, Path] = {}
    for threads in thread_counts:
        for fmt, backend_name, reason in entries:
            precision = format_precision(bundle, fmt)
            if reason:
                skipped = LatencyRow("endoedge", backend_name, fmt, precision, threads, status="skipped")
                skipped.reason = reason
                rows.append(skipped)
                continue
            say(f"endoedge {backend_name} {fmt} threads={threads} batches={list(settings.batches)}")
            batches = (1, *[b for b in settings.batches if b != 1])
            measured, backend = measure_backend(bundle, fmt, backend_name, pixels, settings.plan, threads, batches)
            for row in measured:
                row.gflop_per_image = gflop
            rows += measured
            if backend is None:
                continue
            if fmt.startswith("trt-"):
                engines[fmt] = Path(backend.path)
            for variant_backend, options in settings.variants:
                if variant_backend != backend_name:
                    continue
                say(f"endoedge {backend_name} {fmt} threads={threads} variant {options}")
                vrows, vbackend = measure_backend(
                    bundle, fmt, backend_name, pixels, settings.plan, threads, (1,), options, subject="endoedge-variant"
                )
                for row in vrows:
                    row.gflop_per_image = gflop
                rows += vrows
                if vbackend is not None:
                    vbackend.close()
            if "raw" in settings.peers:
                say(f"raw runtime {backend_name} {fmt} threads={threads}")
                try:
                    raw = raw_runtime_row(backend, pixels, settings.plan, threads)
                except Exception as exc:  # reported as a failed peer
                    raw = LatencyRow(f"raw-{backend_name}", backend_name, fmt, precision, threads, status="failed")
                    raw.reason = f"{type(exc).__name__}: {one_line(exc)}"[:300]
                if raw is not None:
                    raw.gflop_per_image = gflop
                    rows.append(raw)
            backend.close()
        has_savedmodel = any(a.format == "savedmodel" for a in bundle.manifest.artifacts)
        if "tf-function" in settings.peers and (has_savedmodel or settings.keras_path is None):
            say(f"tf.function (SavedModel signature) threads={threads}")
            try:
                row = tf_function_row(bundle, pixels, settings.plan, threads)
            except Exception as exc:  # reported as a failed peer
                row = LatencyRow("tf-function", "savedmodel", "savedmodel", "fp32", threads, status="failed")
                row.reason = f"{type(exc).__name__}: {one_line(exc)}"[:300]
            row.gflop_per_image = gflop
            rows.append(row)
        if "keras" in settings.peers:
            if settings.keras_path is None:
                for subject in ("keras-predict", "keras-predict-on-batch"):
                    skipped = LatencyRow(subject, "keras", "keras", "fp32", threads, status="skipped")
                    skipped.reason = "no --keras file"
                    rows.append(skipped)
            else:
                say(f"keras predict / predict_on_batch threads={threads}")
                with_tf = "tf-function" in settings.peers and not has_savedmodel
                for row in keras_rows(settings.keras_path, bundle, pixels, settings.plan, threads, with_tf):
                    row.gflop_per_image = gflop
                    rows.append(row)
    onnx_formats = [fmt for fmt, _b, reason in entries if fmt.startswith("onnx") and not reason]
    if "polygraphy" in settings.peers:
        for fmt in onnx_formats:
            say(f"polygraphy run --onnxrt {fmt}")
            row = polygraphy_row(bundle, fmt, settings.polygraphy_iterations)
            row.gflop_per_image = gflop
            rows.append(row)
    if "trtexec" in settings.peers:
        for fmt in (f for f, _b, reason in entries if f.startswith("trt-") and not reason):
            say(f"trtexec {fmt}")
            rows.append(trtexec_row(bundle, fmt, settings.plan.min_seconds, engines.get(fmt)))
    if settings.measure_peak:
        say("sgemm peak of this CPU")
        extra["cpu_peak_gflops"] = measured_sgemm_gflops()
        import platform

        from endoedge.bench.fingerprint import parse_cpuinfo

        flags = parse_cpuinfo(Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else "")
        nominal = theoretical_peak_gflops(os.cpu_count() or 1, flags["cpu_flags"], platform.machine())
        if nominal is not None:
            extra["cpu_nominal_peak_gflops"], extra["cpu_nominal_peak_basis"] = nominal
    return rows, extra
