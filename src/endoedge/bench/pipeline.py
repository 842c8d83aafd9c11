"""Pipeline figures of the edge daemon on replayed video (the performance section of issue #5).

The real daemon (:class:`endoedge.edge.service.daemon.Daemon`: display loop, newest-frame inference worker,
smoothing, coverage, overlay renderer, ``null://`` sink) runs on 1080p frames delivered at a fixed
rate by a capture thread, and :meth:`Daemon.stats` gives the figures:

1. **output fps = source fps** for 30 and 60 fps sources, for any model speed — including a model
   slower than one frame (a real slow model, or the bundle's model slowed to ``slow_ms``);
2. **added video delay** (frame captured → handed to the sink, overlay included), p99 against the
   5.75 ms bar;
3. **overlay delay** (frame captured → the overlay showing that frame's result), p50, against the AI's
   time per frame (the worker's preprocessing + inference + smoothing, p50) + one frame;
4. **daemon inference throughput** against the raw backend's (``backend.infer`` in a loop, same process
   and threads), when inference-bound.

Frames come from :class:`ReplayedFrames` — pre-composed tower frames replayed by the same capture
thread and newest-frame slot the file and V4L2 sources use (a capture card cannot exist here), or from
a clip through the daemon's real ``file://`` source.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from endoedge.core.bundle import open_bundle
from endoedge.core.errors import ConfigError
from endoedge.core.preprocess import FieldDetector, prepare_pixels, read_image
from endoedge.edge.types import Backend
from endoedge.edge.video.sources import CapturedSource

#: FDA-accepted added video delay of a colonoscopy CADe device, used as the bar at 1080p.
VIDEO_DELAY_BAR_MS = 5.75
#: Daemon inference throughput must reach this share of the raw backend's when inference-bound.
THROUGHPUT_SHARE = 0.95


class ReplayedFrames(CapturedSource):
    """In-memory frames replayed in a loop at ``fps`` by a capture thread, like a capture card.

    Each frame is stamped with its capture time when published, and only the newest frame is kept
    for the reader (older ones count as dropped), exactly as the live sources do.
    """

    def __init__(self, frames: Sequence[np.ndarray], fps: float, uri: str = "replay://memory") -> None:
        if not frames:
            raise ConfigError("no frames to replay", uri)
        super().__init__(uri, fps, pace=True)
        self._frames = list(frames)
        self._next = 0
        self._start()

    def _grab(self) -> tuple[np.ndarray, float | None]:
        image = self._frames[self._next % len(self._frames)]
        pts = self._next / self.fps
        self._next += 1
        return image, pts


class SlowedBackend:
    """Wraps a backend so every inference takes at least ``min_ms`` (a model slower than one frame).

    The real backend still runs; the wrapper sleeps for the remainder, so the rest of the pipeline
    sees a model of exactly that speed on any machine.
    """

    def __init__(self, inner: Backend, min_ms: float) -> None:
        self.inner = inner
        self.min_s = min_ms / 1000.0
        self.name = f"{inner.name}+slowed"
        self.format = inner.format
        self.manifest = inner.manifest

    def infer(self, pixels: np.ndarray) -> np.ndarray:
        """Run the real model, then wait until ``min_ms`` have passed."""
        start = time.monotonic()
        out = self.inner.infer(pixels)
        remaining = self.min_s - (time.monotonic() - start)
        if remaining > 0:
            time.sleep(remaining)
        return out

    def warmup(self, runs: int = 2, batch: int = 1) -> None:
        """Warm the real backend (without the artificial wait)."""
        warm = getattr(self.inner, "warmup", None)
        if callable(warm):
            warm(runs, batch)

    def describe(self) -> dict[str, Any]:
        """The real backend's description plus the minimum time."""
        describe = getattr(self.inner, "describe", None)
        info: dict[str, Any] = dict(describe()) if callable(describe) else {"backend": self.inner.name}
        info["slowed_to_ms"] = self.min_s * 1000.0
        return info

    def close(self) -> None:
        """Close the real backend."""
        self.inner.close()


def tower_frames(images: Sequence[Path], count: int = 8) -> list[np.ndarray]:
    """1080p tower frames (black borders, on-screen text, octagonal field) around real images."""
    from endoedge.core.synthetic import tower_frame

    if not images:
        rng = np.random.default_rng(0)
        sources = [rng.integers(40, 220, (480, 480, 3), dtype=np.uint8) for _ in range(count)]
    else:
        sources = [read_image(p) for p in list(images)[:count]]
    return [tower_frame(img, date=f"2026-11-22 09:41:{i:02d}") for i, img in enumerate(sources)]


def default_images() -> list[Path]:
    """The committed sample images when run from a source checkout (else none: random textures)."""
    root = Path(__file__).resolve().parents[3] / "tests" / "data" / "sample"
    return sorted(root.rglob("*.jpg")) if root.is_dir() else []


def raw_backend_rate(backend: Backend, frames: Sequence[np.ndarray], seconds: float) -> dict[str, float]:
    """``backend.infer`` in a loop at batch 1 on prepared pixels of ``frames``: inferences per second.

    Also reports the rate including the daemon's per-frame preprocessing (field crop + resize) for
    comparison.
    """
    detector = FieldDetector()
    manifest = backend.manifest
    pixels = [prepare_pixels(f, manifest.preprocess, detector(f))[None] for f in frames]
    for p in pixels[:2]:
        backend.infer(p)
    count, start = 0, time.monotonic()
    while time.monotonic() - start < seconds or count < 3:
        backend.infer(pixels[count % len(pixels)])
        count += 1
    infer_rate = count / (time.monotonic() - start)
    count, start = 0, time.monotonic()
    while time.monotonic() - start < seconds / 2 or count < 3:
        frame = frames[count % len(frames)]
        backend.infer(prepare_pixels(frame, manifest.preprocess, detector(frame))[None])
        count += 1
    return {"infer_per_s": infer_rate, "prepare_and_infer_per_s": count / (time.monotonic() - start)}


@dataclass
class PipelineRun:
    """One daemon run and its figures."""

    label: str
    source_fps: float
    seconds: float
    stats: dict[str, Any]
    raw: dict[str, float]
    inference_rate: float | None
    frame_size: tuple[int, int]
    steady_output_fps: float | None = None
    steady_seconds: float = 0.0
    capture: dict[str, Any] | None = None
    # Delays of the steady state only (from the AI's first results): a 20-s run's p99 is otherwise
    # set by its first frames (sink start, first sprites), which a procedure never sees.
    steady_video_delay: dict[str, float] | None = None
    steady_overlay_delay: dict[str, float] | None = None
    pacing: str = "throughput"

    def figures(self) -> dict[str, Any]:
        """The four figures of issue #5 with pass/fail against their targets."""
        s = self.stats
        worker: dict[str, Any] = next(iter(s["workers"].values()), {})
        infer = worker.get("stages_ms", {}).get("infer", {})
        # Steady state: from the AI's first results to the end (model loading excluded).
        if self.steady_output_fps is not None:
            out_fps = self.steady_output_fps
        else:
            out_fps = s["frames_out"] / self.seconds if self.seconds > 0 else 0.0
        frame_ms = 1000.0 / self.source_fps
        video = self.steady_video_delay or s["video_delay_ms"]
        overlay = self.steady_overlay_delay or s["overlay_delay_ms"]
        raw_rate = self.raw.get("infer_per_s", 0.0)
        inference_bound = bool(raw_rate) and raw_rate < self.source_fps
        share = (self.inference_rate / raw_rate) if (self.inference_rate and raw_rate) else None
        # The AI's time per frame is the worker's whole step (field crop and resize of the 1080p frame,
        # inference, smoothing); its result reaches the screen with the next displayed frame.
        stages = worker.get("stages_ms", {})
        ai_ms = sum(float(stages.get(k, {}).get("p50", 0.0) or 0.0) for k in ("preprocess", "infer", "smooth"))
        overlay_bound = ai_ms + frame_ms
        return {
            "label": self.label,
            "frame_size": f"{self.frame_size[0]}x{self.frame_size[1]}",
            "source_fps": self.source_fps,
            "output_fps": out_fps,
            "steady_seconds": self.steady_seconds,
            # What the capture thread delivered, and frames it replaced before the display loop took them:
            # separates "the source could not be produced/decoded in time" from "the display loop fell behind".
            "input_fps": (self.capture or {}).get("steady_input_fps"),
            "dropped_before_display": (self.capture or {}).get("dropped_before_display"),
            "whole_run_output_fps": s["frames_out"] / self.seconds if self.seconds > 0 else 0.0,
            "output_fps_ok": out_fps >= 0.98 * self.source_fps,
            "frames_in": s["frames_in"],
            "frames_out": s["frames_out"],
            "video_delay_ms": video,
            "video_delay_whole_run_ms": s["video_delay_ms"],
            "overlay_delay_whole_run_ms": s["overlay_delay_ms"],
            "video_delay_p99_ok": video.get("p99", float("inf")) <= VIDEO_DELAY_BAR_MS,
            "overlay_delay_ms": overlay,
            "infer_ms": infer,
            "ai_step_ms_p50": ai_ms,
            "overlay_bound_ms": overlay_bound,
            "overlay_delay_ok": overlay.get("p50", float("inf")) <= overlay_bound,
            "daemon_inferences_per_s": self.inference_rate,
            "raw_infer_per_s": raw_rate,
            "raw_prepare_and_infer_per_s": self.raw.get("prepare_and_infer_per_s"),
            "inference_bound": inference_bound,
            "throughput_share": share,
            # "fresh" pacing gives throughput up for freshness on purpose: the target does not apply.
            "pacing": self.pacing,
            "throughput_ok": (share is not None and share >= THROUGHPUT_SHARE)
            if inference_bound and self.pacing == "throughput"
            else None,
            "skipped_frames": worker.get("skipped_frames"),
            "stages_ms": {
                **{f"display.{k}": v for k, v in s["stages_ms"].items()},
                **{f"worker.{k}": v for k, v in worker.get("stages_ms", {}).items()},
            },
        }


def run_daemon(
    bundle_path: str | Path,
    frames: Sequence[np.ndarray] | None,
    fps: float,
    seconds: float,
    backend: str = "auto",
    threads: int = 0,
    slow_ms: float = 0.0,
    clip: str | None = None,
    label: str = "",
    raw_seconds: float = 3.0,
    pacing: str = "throughput",
) -> PipelineRun:
    """Run the real daemon for ``seconds`` on replayed frames (or ``clip``) at ``fps`` and collect its stats."""
    from endoedge.edge.config import (
        CoverageTaskConfig,
        DaemonConfig,
        ModelConfig,
        ReportConfig,
        RunConfig,
        SinkConfig,
        SourceConfig,
        StateConfig,
        StatusConfig,
    )
    from endoedge.edge.service.daemon import Daemon
    from endoedge.edge.service.worker import load_backend
    from endoedge.edge.video.sinks import NullSink

    options: dict[str, Any] = {"threads": threads} if threads else {}
    model = ModelConfig(name="model", bundle=str(bundle_path), backend=backend, options=options, timeout_s=60.0)
    with tempfile.TemporaryDirectory(prefix="endoedge-bench-pipeline-") as tmp:
        source_uri = f"file://{Path(clip).resolve()}" if clip else "replay://memory"
        config = DaemonConfig(
            source=SourceConfig(uri=source_uri, loop=True, fallback_fps=fps),
            sink=SinkConfig(uri="null://"),
            models=[model],
            tasks=[CoverageTaskConfig(type="egd-coverage", name="coverage", model="model")],
            status=StatusConfig(enabled=False),
            report=ReportConfig(dir=str(Path(tmp) / "reports"), png=False),
            state=StateConfig(dir=None),
            run=RunConfig.model_validate({"duration_s": seconds, "watchdog": False, "ai_pacing": pacing}),
        )

        def factory(cfg: ModelConfig) -> Backend:
            loaded = load_backend(cfg)
            return SlowedBackend(loaded, slow_ms) if slow_ms > 0 else loaded

        raw_backend = factory(model)
        if frames is None:
            from endoedge.bench.parity_bundle import read_clip

            frames, _ = read_clip(clip or "", max_frames=16)
        raw = raw_backend_rate(raw_backend, frames[:8], raw_seconds)
        raw_backend.close()
        source = ReplayedFrames(frames, fps) if clip is None else None
        if clip is not None:
            config.source.options["fps"] = fps
        sink = NullSink("null://", frames[0].shape[1], frames[0].shape[0], fps)
        daemon = Daemon(config, source=source, sink=sink, backend_factory=factory)
        samples: list[tuple[float, int, int, int]] = []  # (time, shown, inferences, captured) while the AI runs
        stop = threading.Event()
        steady_from: dict[str, int] = {}  # delay-window sample counts when the steady state began

        def sample() -> None:
            while not stop.wait(0.25):
                workers = daemon.workers
                if workers and workers[0].state == "ok":
                    samples.append((time.monotonic(), daemon.frames_out, workers[0].inferences, daemon.frames_in))
                    if not steady_from and workers[0].inferences >= 3:
                        steady_from.update(video=daemon.video_delay.count, overlay=daemon.overlay_delay.count)

        sampler = threading.Thread(target=sample, name="bench-sampler", daemon=True)
        sampler.start()
        start = time.monotonic()
        try:
            daemon.run()
        finally:
            stop.set()
            sampler.join(timeout=2)
            if source is not None:
                source.close()
        elapsed = time.monotonic() - start
        stats = daemon.stats()
        steady_video = steady_overlay = None
        if steady_from:
            video_since = daemon.video_delay.summary(since=steady_from["video"])
            overlay_since = daemon.overlay_delay.summary(since=steady_from["overlay"])
            steady_video = video_since if video_since["n"] else None
            steady_overlay = overlay_since if overlay_since["n"] else None
    rate = out_fps = in_fps = None
    steady = [s for s in samples if s[2] >= 3]  # skip the first inferences (warm caches, first field detection)
    if len(steady) >= 2 and steady[-1][0] > steady[0][0]:
        span = steady[-1][0] - steady[0][0]
        out_fps = (steady[-1][1] - steady[0][1]) / span
        rate = (steady[-1][2] - steady[0][2]) / span
        in_fps = (steady[-1][3] - steady[0][3]) / span
    capture = {
        "steady_input_fps": in_fps,
        "captured": getattr(source, "captured", None),
        "dropped_before_display": getattr(source, "dropped", None),
    }
    return PipelineRun(
        label or f"{fps:g} fps",
        fps,
        elapsed,
        stats,
        raw,
        rate,
        (frames[0].shape[1], frames[0].shape[0]),
        out_fps,
        steady[-1][0] - steady[0][0] if len(steady) >= 2 else 0.0,
        capture,
        steady_video,
        steady_overlay,
        pacing,
    )


FIGURE_HEADERS = (
    "run",
    "src fps",
    "in fps",
    "out fps",
    "delay p50",
    "delay p99",
    "<=5.75",
    "ovl p50",
    "infer p50",
    "ovl<=inf+frame",
    "daemon inf/s",
    "raw inf/s",
    "share",
    "skipped",
    "dropped",
)


def figure_rows(figures: Sequence[dict[str, Any]]) -> list[list[Any]]:
    """Table rows of the figures."""

    def ok(value: bool | None) -> str:
        return "-" if value is None else ("yes" if value else "NO")

    rows = []
    for f in figures:
        rows.append(
            [
                f["label"],
                f["source_fps"],
                f.get("input_fps"),
                f["output_fps"],
                f["video_delay_ms"].get("p50"),
                f["video_delay_ms"].get("p99"),
                ok(f["video_delay_p99_ok"]),
                f["overlay_delay_ms"].get("p50"),
                f["infer_ms"].get("p50"),
                ok(f["overlay_delay_ok"]),
                f["daemon_inferences_per_s"],
                f["raw_infer_per_s"],
                f"{100 * f['throughput_share']:.1f}%" if f["inference_bound"] and f["throughput_share"] else "-",
                f["skipped_frames"],
                f.get("dropped_before_display"),
            ]
        )
    return rows


def pipeline_markdown(report: dict[str, Any]) -> str:
    """Markdown form of a pipeline report."""
    from endoedge.bench.report import markdown_table

    m = report["machine"]
    lines = [
        f"# Pipeline: `{report['bundle']}`",
        "",
        f"Machine `{m.get('machine_id')}`: {m.get('cpu_model')}, {m.get('cpu_cores')} cores, GPU {m.get('gpu')}. "
        f"Source: {report['source']}; {report['seconds']:g} s per run; sink null://; overlay on.",
        "",
        markdown_table(FIGURE_HEADERS, figure_rows(report["figures"])),
        "",
        "Delays in ms, steady state (from the AI's third result to the end; the first frames, with the sink "
        "starting and every sprite drawn for the first time, are in the JSON's `*_whole_run_ms`). "
        "`in fps`: frames the display loop took from the capture thread; `out fps`: frames "
        "handed to the sink (steady state, after the model loaded); `dropped`: frames the capture thread "
        "replaced before the display loop took them (the loop fell behind); `skipped`: frames the inference "
        "worker never saw (by design: it takes the newest). `share` = daemon inferences per second / raw "
        "`backend.infer` rate (only when inference-bound, i.e. the model is slower than a frame).",
    ]
    return "\n".join(lines) + "\n"


def pipeline_main(
    args: argparse.Namespace,
    say: Callable[[str], None],
    emit: Callable[..., None],
    conditions: Callable[[argparse.Namespace], dict[str, Any]],
    finish: Callable[[dict[str, Any]], dict[str, Any]],
) -> int:
    """``endoedge bench pipeline``: run the daemon at each source fps (and slowed) and print the figures."""
    from endoedge.bench.fingerprint import machine_fingerprint
    from endoedge.bench.report import table

    bundle = open_bundle(args.bundle)
    frames = None if args.clip else tower_frames(default_images())
    source = f"clip {args.clip} through file://" if args.clip else "1080p tower frames of the sample images, replayed"
    before = conditions(args)
    figures = []
    variants = [("", 0.0, "throughput")]
    if args.slow_ms > 0:
        variants.append((f"slowed to {args.slow_ms:g} ms", args.slow_ms, "throughput"))
        if getattr(args, "fresh", False):
            variants.append((f"slowed to {args.slow_ms:g} ms, pacing fresh", args.slow_ms, "fresh"))
    for fps in args.fps:
        for suffix, slow, pacing in variants:
            label = f"{bundle.manifest.name} @ {fps:g} fps" + (f", {suffix}" if suffix else "")
            say(f"daemon run: {label} for {args.seconds:g} s")
            run = run_daemon(
                bundle.path, frames, fps, args.seconds, args.backend, args.threads, slow, args.clip, label, 3.0, pacing
            )
            figures.append(run.figures())
    report: dict[str, Any] = {
        "bundle": bundle.manifest.name,
        "bundle_path": str(bundle.path),
        "source": source,
        "seconds": args.seconds,
        "figures": figures,
        "targets": {"video_delay_p99_ms": VIDEO_DELAY_BAR_MS, "throughput_share": THROUGHPUT_SHARE},
        "conditions": finish(before),
        "machine": machine_fingerprint(),
    }
    text = "\n".join([f"pipeline: {report['bundle']} — {source}", table(FIGURE_HEADERS, figure_rows(figures))])
    with contextlib.suppress(KeyError):
        c = report["conditions"]
        text += f"\nconditions: load {c['load_before']} → {c['load_after']}, CPU pressure {c['cpu_pressure_before']}"
        text += f" → {c['cpu_pressure_after']}"
    emit(args, "pipeline", report, text, pipeline_markdown(report), None)
    return 0
