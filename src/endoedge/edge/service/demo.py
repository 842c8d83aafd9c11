"""``endoedge demo``: the real daemon on the bundled sample clip with the bundled default model.

What runs is exactly what ``endoedge run`` runs (:class:`endoedge.edge.service.daemon.Daemon` with the real file
source, inference worker, smoothing, coverage, exam clock, overlay renderer, recorder and procedure
report); the demo only chooses the inputs and watches the output through the daemon's public hooks:

* the source is opened with :func:`endoedge.edge.video.sources.open_source` and wrapped to remember which clip
  frame each capture time belongs to;
* the overlay renderer is wrapped to remember what the overlay showed on each frame;
* the sink fans out to the product's own recorder (``file://…/overlay.mp4``) and, with a display or
  ``--sink window://``, a live window, and keeps one frame as the screenshot.

Outputs (in ``--out``, default ``demo-output/``): ``overlay.mp4``, ``frame.png`` (a screenshot of the
overlay), ``report.json`` and ``coverage.png`` (the procedure report, also kept under ``reports/``)
and ``summary.json`` (every figure printed, plus what the overlay showed against the clip's ground truth).

Pacing: with a live view the clip is played in real time, like a capture card, and the figures are
those of a live tower (on a machine too slow for 25 fps at 1080p, frames are dropped and counted, also
in the recording). Without a live view the clip is processed as fast as the machine allows with every
frame recorded (the recorder holds the loop back instead of dropping), so ``overlay.mp4`` is complete on
any machine, and the AI sees every frame (the loop waits for each result). Either way the exam clock,
dwell and observation times follow the clip's own presentation times (the daemon's media clock), so
both give the same report. ``--realtime`` / ``--fast`` choose explicitly; ``--quick`` processes only the
first seconds, unpaced (CI).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from endoedge.core.clip import ClipTimeline, timeline_path
from endoedge.core.errors import EndoedgeError, MissingDependencyError, one_line
from endoedge.core.fileio import atomic_write_bytes, atomic_write_json
from endoedge.core.manifest import ModelManifest
from endoedge.core.preprocess import FieldROI
from endoedge.edge.stages.types import OverlayState
from endoedge.edge.types import Frame, Sink, Source

log = logging.getLogger(__name__)

#: Where the bundled defaults live, relative to the repository root.
DEFAULT_BUNDLE = Path("export/bundles/gastrovision3-efficientnet-lite0")
DEFAULT_CLIP = Path("edge/demo/sample-exam.mp4")
#: Files a run writes into ``--out`` (removed first, so that none is left over from an older run).
OUTPUT_FILES = ("overlay.mp4", "frame.png", "report.json", "coverage.png", "summary.json")
#: ``--quick`` processes this many seconds of the clip (dark start, the esophagus, the first colon view).
QUICK_SECONDS = 12.0
#: The sample clip is a 36-second exam: the demo asks for 30 s of inspection instead of the 7 minutes a
#: real upper-GI exam needs, so the coverage panel's check can pass.
DEMO_MIN_INSPECTION_MIN = 0.5


def repository_root() -> Path | None:
    """The source checkout this package runs from (an editable install), or ``None``."""
    for candidate in (Path.cwd(), Path(__file__).resolve().parents[4]):
        if (candidate / DEFAULT_BUNDLE / "manifest.json").is_file() or (candidate / DEFAULT_CLIP).is_file():
            return candidate
    return None


@dataclass(frozen=True)
class DemoOptions:
    """What the demo runs and how.

    Attributes:
        out: Output folder.
        bundle: Model bundle folder.
        clip: Sample clip (an ``.mp4`` with a ``.timeline.json`` beside it for the ground truth).
        quick: Only the first ``seconds`` of the clip, as fast as possible.
        seconds: Clip seconds to process (``None``: all; ``--quick`` defaults to :data:`QUICK_SECONDS`).
        realtime: Pace the clip at its frame rate like a live capture card (``True``), process it as
            fast as possible recording every frame (``False``), or decide: paced with a live view.
        live_sink: Extra sink URI to show the overlay live (e.g. ``window://``), or ``None``.
        backend: Backend name (``auto``, ``tflite``, ``onnxruntime``...).
        fmt: Artifact format, or ``None`` for the backend's choice.
        threads: Runtime threads, or ``None`` for the backend's default.
        language: Overlay language, ``en`` or ``zh``.
        screenshot_at: Clip second of the screenshot (``None``: late in the last shot processed).
        status_port: Serve ``/status`` on 127.0.0.1 at this port during the run (``None``: no server).
        verbose: Show the daemon's log lines.
    """

    out: Path = Path("demo-output")
    bundle: Path = DEFAULT_BUNDLE
    clip: Path = DEFAULT_CLIP
    quick: bool = False
    seconds: float | None = None
    realtime: bool | None = None
    live_sink: str | None = None
    backend: str = "auto"
    fmt: str | None = None
    threads: int | None = None
    language: str = "en"
    screenshot_at: float | None = None
    status_port: int | None = None
    verbose: bool = False


@dataclass
class ShownFrame:
    """What the overlay showed on one clip frame."""

    index: int
    label: str | None
    confidence: float
    observed: int
    exam_seconds: float | None
    ai_status: str


class FrameIndexSource:
    """A source wrapper that remembers which clip frame each capture time belongs to.

    The daemon hands the sink only the capture time of a frame, so this lets the sink know the frame
    number (for the screenshot and the comparison with the clip's ground truth) even when a paced
    source drops frames on a slow machine. With ``stop_at`` it ends (``EOFError``) at that clip frame,
    so ``--seconds`` means clip time. The file is opened at the first read, when the daemon's loop
    starts, as a capture card's stream would start then: a paced file opened earlier would play on
    while the daemon is still starting.

    Args:
        open_source: Opens the real source.
        uri: Its URI.
        fps: Its frame rate (the daemon asks before the first read).
        stop_at: Clip frame at which the source ends, or ``None``.
        keep: Capture times remembered.
    """

    def __init__(
        self, open_source: Callable[[], Source], uri: str, fps: float, stop_at: int | None = None, keep: int = 512
    ) -> None:
        self._open = open_source
        self.source: Source | None = None
        self.open_error: EndoedgeError | None = None
        self.stop_at = stop_at
        #: Called before each read; the unpaced demo uses it to wait for the recorder, so that waiting
        #: happens before a frame is captured and is not counted as video delay.
        self.before_read: Callable[[], None] | None = None
        self.uri = uri
        self.fps = float(fps)
        self._index_of: OrderedDict[float, int] = OrderedDict()
        self._keep = keep
        self._lock = threading.Lock()
        self.frames_read = 0

    def read(self, timeout: float = 1.0) -> Frame | None:
        """Read the next frame and remember its index."""
        if self.before_read is not None:
            self.before_read()
        if self.source is None:
            if self.open_error is not None:
                raise EOFError
            try:
                self.source = self._open()
            except EndoedgeError as exc:  # end the run; run_demo raises it (the daemon would retry forever)
                self.open_error = exc
                raise EOFError from None
            self.fps = float(self.source.fps) or self.fps
        frame = self.source.read(timeout)
        if frame is not None:
            index = round(frame.pts * self.fps) if frame.pts is not None and self.fps > 0 else frame.index
            if self.stop_at is not None and index >= self.stop_at:
                raise EOFError  # the clip "ends" here: the daemon stops as at the end of a file
            with self._lock:
                self._index_of[frame.t_capture] = index
                while len(self._index_of) > self._keep:
                    self._index_of.popitem(last=False)
            self.frames_read += 1
        return frame

    def index_of(self, t_capture: float) -> int | None:
        """The clip frame captured at ``t_capture`` (``None`` for the no-signal screen)."""
        with self._lock:
            return self._index_of.get(t_capture)

    @property
    def dropped(self) -> int:
        """Frames the paced source replaced before the daemon read them."""
        return int(getattr(self.source, "dropped", 0)) if self.source is not None else 0

    def close(self) -> None:
        """Close the wrapped source (if it was opened)."""
        if self.source is not None:
            self.source.close()


class StateRecorder:
    """An overlay renderer wrapper that remembers the state drawn on the latest frame."""

    def __init__(self, renderer: Any) -> None:
        self.renderer = renderer
        self.last: OverlayState | None = None

    def render(self, frame: np.ndarray, state: OverlayState, field_roi: FieldROI) -> np.ndarray:
        """Draw with the real renderer and keep the state."""
        self.last = state
        out: np.ndarray = self.renderer.render(frame, state, field_roi)
        return out


class DemoSink:
    """Fans frames out to the recorder and an optional live sink; keeps the screenshot and the log.

    Args:
        recorder: The product's file sink (``file://…/overlay.mp4``).
        live: A live sink (window) or ``None``.
        source: The indexing source wrapper.
        states: The renderer wrapper.
        screenshot_index: Clip frame to keep as the screenshot.
    """

    uri = "demo://"

    def __init__(
        self,
        recorder: Sink,
        live: Sink | None,
        source: FrameIndexSource,
        states: StateRecorder,
        screenshot_index: int,
    ) -> None:
        self.recorder = recorder
        self.live = live
        self.source = source
        self.states = states
        self.screenshot_index = screenshot_index
        self.screenshot: np.ndarray | None = None
        self.screenshot_frame: int | None = None
        self.shown: list[ShownFrame] = []
        self.live_errors = 0

    def write(self, image: np.ndarray, t_capture: float) -> None:
        """Record, show live, and note what the overlay said about this frame."""
        self.recorder.write(image, t_capture)
        if self.live is not None:
            try:
                self.live.write(image, t_capture)
            except EndoedgeError as exc:  # a closed window must not end the demo
                self.live_errors += 1
                if self.live_errors == 1:
                    log.warning("live view failed: %s", one_line(exc))
        index = self.source.index_of(t_capture)
        state = self.states.last
        if index is None or state is None:
            return
        observed = sum(1 for cell in state.coverage if cell.observed)
        self.shown.append(
            ShownFrame(index, state.label, float(state.confidence), observed, state.exam_seconds, state.ai_status)
        )
        if self.screenshot is None and index >= self.screenshot_index:
            self.screenshot = image.copy()
            self.screenshot_frame = index

    def wait_for_recorder(self, backlog: int = 8) -> None:
        """Block while the recorder's writer thread is ``backlog`` frames behind (it would drop the next)."""
        while int(getattr(self.recorder, "frames", 0)) - int(getattr(self.recorder, "written", 0)) >= backlog:
            time.sleep(0.002)

    def close(self) -> None:
        """Close both sinks (the recorder moves its file into place)."""
        try:
            if self.live is not None:
                self.live.close()
        finally:
            self.recorder.close()


@dataclass
class DemoResult:
    """What the demo did and measured."""

    summary: dict[str, Any]
    text: str
    outputs: dict[str, Path] = field(default_factory=dict)


def _resolve(path: Path, what: str, flag: str) -> Path:
    if path.is_absolute() or path.exists():
        return path.resolve()
    root = repository_root()
    if root is not None and (root / path).exists():
        return (root / path).resolve()
    raise EndoedgeError(
        f"the demo's {what} is not here; run from the endoedge checkout (make demo) or pass {flag} PATH", path
    )


def _want_window() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _clip_geometry(clip: Path) -> tuple[int, int, float, int]:
    capture = cv2.VideoCapture(str(clip), cv2.CAP_FFMPEG)
    try:
        if not capture.isOpened():
            raise EndoedgeError("cannot decode the sample clip (unsupported or corrupt)", clip)
        width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 25.0)
        frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    finally:
        capture.release()
    return width, height, fps, frames


def _screenshot_time(timeline: ClipTimeline | None, end_s: float, fps: float) -> float:
    """Late in the last shot that is fully processed: the label is settled and coverage has grown."""
    if timeline is None:
        return max(0.0, end_s * 0.8)
    done = [s for s in timeline.shots if s.end - timeline.crossfade <= end_s]
    if not done:
        return max(0.0, end_s * 0.8)
    shot = done[-1]
    return shot.start + 0.75 * (shot.end - timeline.crossfade - shot.start)


def _config_data(opts: DemoOptions, bundle: Path, clip: Path, overlay: Path, reports: Path) -> dict[str, Any]:
    """The daemon configuration of the demo, as ``endoedge run`` would read it from YAML."""
    model: dict[str, Any] = {"name": "sites", "bundle": str(bundle), "backend": opts.backend}
    if opts.fmt:
        model["format"] = opts.fmt
    if opts.threads:
        model["options"] = {"threads": opts.threads}
    return {
        "source": {"uri": f"file://{clip}", "as_fast_as_possible": not opts.realtime},
        "sink": {"uri": f"file://{overlay}"},
        "models": [model],
        "tasks": [
            {
                "type": "egd-coverage",
                "name": "coverage",
                "model": "sites",
                "labelset": "gastrovision3",
                "min_inspection_min": DEMO_MIN_INSPECTION_MIN,
            }
        ],
        "overlay": {"language": opts.language},
        "status": {"enabled": opts.status_port is not None, "port": opts.status_port or 0},
        "report": {"dir": str(reports), "png": True},
        "state": {"dir": None},
        "logging": {"level": "info" if opts.verbose else "warning"},
        "run": {"watchdog": False},
    }


def _recognition(shown: Sequence[ShownFrame], timeline: ClipTimeline | None, names: dict[str, str]) -> dict[str, Any]:
    """Compare what the overlay showed with the clip's ground truth, per class and per shot."""
    if timeline is None:
        counts = Counter(s.label for s in shown if s.label)
        return {"shown_frames": dict(counts)}
    by_index = {s.index: s for s in shown}
    per_class: dict[str, dict[str, int]] = {}
    shots = []
    for shot in timeline.shots:
        frames = [
            by_index[i]
            for i in range(int(np.ceil(shot.start * timeline.fps)), int(shot.end * timeline.fps))
            if i in by_index and timeline.solo_label_at(i / timeline.fps) == shot.label
        ]
        if not frames:
            continue
        truth_name = names.get(shot.label, shot.label)
        correct = sum(1 for f in frames if f.label == truth_name)
        shown_counts = Counter(f.label or "-" for f in frames)
        entry = per_class.setdefault(shot.label, {"frames": 0, "correct": 0, "images": 0})
        entry["frames"] += len(frames)
        entry["correct"] += correct
        entry["images"] += 1
        shots.append(
            {
                "label": shot.label,
                "start_s": shot.start,
                "frames": len(frames),
                "correct": correct,
                "most_shown": shown_counts.most_common(1)[0][0],
                "source": shot.source,
            }
        )
    total = sum(e["frames"] for e in per_class.values())
    return {
        "scored_frames": total,
        "accuracy": round(sum(e["correct"] for e in per_class.values()) / total, 4) if total else None,
        "per_class": per_class,
        "shots": shots,
        "note": "frames with one image fully on screen (fades and cross-fades excluded), after smoothing",
    }


def run_demo(opts: DemoOptions) -> DemoResult:
    """Run the daemon on the sample clip with the default bundle and write the demo outputs.

    Raises:
        EndoedgeError: Missing bundle or clip, a bundle the daemon refuses, an unusable output folder.
    """
    from endoedge.edge.config import config_from_dict
    from endoedge.edge.service.daemon import Daemon
    from endoedge.edge.stages.overlay import OverlayRenderer
    from endoedge.edge.video.sinks import open_sink
    from endoedge.edge.video.sources import open_source

    bundle = _resolve(opts.bundle, "model bundle", "--bundle")
    clip = _resolve(opts.clip, "sample clip", "--clip")
    manifest = ModelManifest.load(bundle)
    side = timeline_path(clip)
    timeline = ClipTimeline.load(side) if side.is_file() else None
    width, height, fps, clip_frames = _clip_geometry(clip)
    seconds = opts.seconds if opts.seconds is not None else (QUICK_SECONDS if opts.quick else None)
    max_frames = max(1, round(seconds * fps)) if seconds is not None else None
    end_s = min(max_frames or clip_frames, clip_frames or max_frames or 0) / fps
    shot_at = opts.screenshot_at if opts.screenshot_at is not None else _screenshot_time(timeline, end_s, fps)
    out = opts.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    reports = out / "reports"
    if reports.is_dir():
        shutil.rmtree(reports)  # one demo run, one report: older runs' reports would be confusing
    for name in OUTPUT_FILES:  # and no output of an older run may pass for this one's
        (out / name).unlink(missing_ok=True)
    overlay = out / "overlay.mp4"
    realtime = False if opts.quick else (opts.realtime if opts.realtime is not None else opts.live_sink is not None)
    config = config_from_dict(
        _config_data(replace(opts, realtime=realtime), bundle, clip, overlay, reports),
        "endoedge demo",
    )

    source = FrameIndexSource(
        lambda: open_source(config.source.uri, as_fast_as_possible=not realtime), config.source.uri, fps, max_frames
    )
    states = StateRecorder(OverlayRenderer(config.overlay.options))
    recorder = open_sink(config.sink.uri, width, height, source.fps)  # 16 pooled 1080p buffers by default
    live = None
    if opts.live_sink:
        try:
            live = open_sink(opts.live_sink, width, height, source.fps)
        except (EndoedgeError, ImportError, ValueError) as exc:
            log.warning("no live view (%s); recording only", one_line(exc))
    sink = DemoSink(recorder, live, source, states, round(shot_at * fps))
    if not realtime:
        source.before_read = sink.wait_for_recorder  # record every frame: hold the loop back, never drop
    daemon = Daemon(config, source=source, sink=sink, renderer=states)
    started = time.monotonic()
    try:
        daemon.run()
    finally:
        try:
            sink.close()
        finally:
            source.close()
    wall = time.monotonic() - started
    if source.open_error is not None:
        raise source.open_error
    return _finish(opts, daemon, sink, source, manifest, timeline, clip, bundle, out, overlay, realtime, wall)


def _finish(
    opts: DemoOptions,
    daemon: Any,
    sink: DemoSink,
    source: FrameIndexSource,
    manifest: ModelManifest,
    timeline: ClipTimeline | None,
    clip: Path,
    bundle: Path,
    out: Path,
    overlay: Path,
    realtime: bool,
    wall: float,
) -> DemoResult:
    stats = daemon.stats()
    outputs: dict[str, Path] = {"overlay": overlay}
    if sink.screenshot is not None:
        ok, png = cv2.imencode(".png", sink.screenshot, [cv2.IMWRITE_PNG_COMPRESSION, 9])
        if ok:
            atomic_write_bytes(out / "frame.png", png.tobytes())
            outputs["frame"] = out / "frame.png"
    report_json: dict[str, Any] = {}
    if daemon.reports_written:
        folder = Path(daemon.reports_written[-1])
        report_json = json.loads((folder / "report.json").read_text(encoding="utf-8"))
        atomic_write_bytes(out / "report.json", (folder / "report.json").read_bytes())
        outputs["report"] = out / "report.json"
        if (folder / "coverage.png").is_file():
            atomic_write_bytes(out / "coverage.png", (folder / "coverage.png").read_bytes())
            outputs["coverage"] = out / "coverage.png"
    worker: dict[str, Any] = next(iter(stats["workers"].values()), {})
    models = worker.get("models") or [{}]
    names = {label.key: label.name for label in manifest.labelset.labels}
    recognition = _recognition(sink.shown, timeline, names)
    task: dict[str, Any] = next(iter(report_json.get("tasks", {}).values()), {}) if report_json else {}
    sites = task.get("sites", []) if isinstance(task, dict) else []
    summary: dict[str, Any] = {
        "bundle": str(bundle),
        "model": manifest.name,
        "backend": models[0].get("backend"),
        "format": models[0].get("format"),
        "clip": str(clip),
        "labelset": manifest.labelset.tag,
        "labels": [label.name for label in manifest.labelset.labels],
        "validation": {k: manifest.metrics.get(k) for k in ("test_accuracy", "test_accuracy_ci95", "test_images")},
        "mode": "realtime" if realtime else "as fast as possible",
        "wall_s": round(wall, 2),
        "frames_in": stats["frames_in"],
        "frames_out": stats["frames_out"],
        "recorded_frames": int(getattr(sink.recorder, "written", stats["frames_out"])),
        "source_dropped": source.dropped,
        "recorder_dropped": int(getattr(sink.recorder, "dropped", 0)),
        "source_fps": stats["source_fps"],
        "fps_out_avg": round(stats["frames_out"] / wall, 2) if wall > 0 else None,
        "inference_ms": worker.get("stages_ms", {}).get("infer", {}),
        "inferences": worker.get("inferences"),
        "skipped_frames": worker.get("skipped_frames"),
        "ai_state": worker.get("state"),
        "ai_reason": worker.get("reason"),
        "video_delay_ms": stats["video_delay_ms"],
        "overlay_delay_ms": stats["overlay_delay_ms"],
        "overlay_ms": stats["stages_ms"].get("overlay", {}),
        "live_sink": sink.live.uri if sink.live is not None else None,
        "live_frames": int(getattr(sink.live, "frames", 0)) if sink.live is not None else 0,
        "live_errors": sink.live_errors,
        "screenshot_frame": sink.screenshot_frame,
        "recognition": recognition,
        "exam": report_json.get("exam", {}),
        "sites": [{k: s.get(k) for k in ("key", "name", "observed", "seconds", "observed_at_s")} for s in sites],
        "outputs": {k: str(v) for k, v in {**outputs, "summary": out / "summary.json"}.items()},
    }
    atomic_write_json(out / "summary.json", summary)
    outputs["summary"] = out / "summary.json"
    return DemoResult(summary=summary, text=format_summary(summary), outputs=outputs)


def _ms(values: dict[str, Any], key: str) -> str:
    value = values.get(key)
    return f"{value:.1f} ms" if isinstance(value, int | float) else "n/a"


def _model_line(summary: dict[str, Any]) -> list[str]:
    labels = summary.get("labels") or []
    if not labels:
        return []
    line = f"  model: label set {summary.get('labelset')} ({', '.join(labels)})"
    val = summary.get("validation") or {}
    accuracy, ci, images = val.get("test_accuracy"), val.get("test_accuracy_ci95"), val.get("test_images")
    if isinstance(accuracy, int | float) and images:
        interval = f", 95% CI {ci[0]:.2f}-{ci[1]:.2f}" if isinstance(ci, list) and len(ci) == 2 else ""
        line += f"; validated top-1 {accuracy:.2f} on {images} held-out images{interval}"
    return [line]


def format_summary(summary: dict[str, Any]) -> str:
    """The short text the demo prints."""
    lines = [
        f"endoedge demo: {summary['model']} ({summary['format']} on {summary['backend']}) on {summary['clip']}",
        *_model_line(summary),
        f"  frames: {summary['frames_in']} in, {summary['frames_out']} out, {summary['recorded_frames']} recorded "
        f"({summary['source_dropped']} dropped by the paced source, {summary['recorder_dropped']} by the recorder); "
        f"clip at {summary['source_fps']:.0f} fps, shown at {summary['fps_out_avg']} fps on average "
        f"({summary['mode']}, {summary['wall_s']:.1f} s)",
        f"  inference: p50 {_ms(summary['inference_ms'], 'p50')}, p95 {_ms(summary['inference_ms'], 'p95')} "
        f"({summary['inferences']} inferences; {summary['skipped_frames']} frames skipped while the model was busy)",
        f"  added video delay (capture to display): p50 {_ms(summary['video_delay_ms'], 'p50')}, "
        f"p99 {_ms(summary['video_delay_ms'], 'p99')}; overlay drawing p50 {_ms(summary['overlay_ms'], 'p50')}",
    ]
    if summary["ai_state"] != "ok":
        lines.append(f"  AI state: {summary['ai_state']} {summary['ai_reason'] or ''}".rstrip())
    rec = summary["recognition"]
    if rec.get("per_class"):
        lines.append(
            f"  recognised (label shown vs the clip's truth, {rec['scored_frames']} frames with one image on screen): "
            f"{rec['accuracy']:.0%} overall"
        )
        for key, entry in rec["per_class"].items():
            share = entry["correct"] / entry["frames"] if entry["frames"] else 0.0
            lines.append(f"    {key:<22} {entry['images']} images, shown correctly on {share:.0%} of their frames")
    elif rec.get("shown_frames"):
        lines.append(f"  shown labels (frames): {rec['shown_frames']}")
    if summary["sites"]:
        seen = [s for s in summary["sites"] if s.get("observed")]
        names = ", ".join(f"{s['name']} ({s['seconds']:.1f} s)" for s in seen) or "none"
        lines.append(f"  coverage: {len(seen)}/{len(summary['sites'])} required sites observed: {names}")
    exam = summary["exam"]
    if exam:
        duration = exam.get("duration_s")
        lines.append(
            f"  exam: {duration:.1f} s of clip time; started: {exam.get('start_reason')}; "
            f"ended: {exam.get('end_reason')}"
            if isinstance(duration, int | float)
            else f"  exam: {exam}"
        )
    if summary.get("live_sink"):
        errors = f", {summary['live_errors']} failed" if summary.get("live_errors") else ""
        lines.append(f"  live view: {summary['live_sink']} ({summary['live_frames']} frames shown{errors})")
    lines.append("  outputs: " + ", ".join(summary["outputs"].values()))
    return "\n".join(lines)


def main(argv: Sequence[str], prog: str = "endoedge demo") -> int:
    """CLI entry: ``endoedge demo [--out demo-output] [--quick]``."""
    d = DemoOptions()
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run the edge daemon on the bundled sample clip with the bundled default bundle: writes "
        "overlay.mp4, frame.png, the procedure report (report.json, coverage.png) and summary.json.",
    )
    parser.add_argument("--out", type=Path, default=d.out, help="output folder (default demo-output)")
    parser.add_argument("--bundle", type=Path, default=d.bundle, help=f"model bundle (default {d.bundle})")
    parser.add_argument("--clip", type=Path, default=d.clip, help=f"video file (default {d.clip})")
    parser.add_argument("--quick", action="store_true", help=f"first {QUICK_SECONDS:g} s only, as fast as possible")
    parser.add_argument("--seconds", type=float, help="process only this many seconds of the clip")
    pacing = parser.add_mutually_exclusive_group()
    pacing.add_argument("--realtime", action="store_true", help="pace the clip at 25 fps (default with a live view)")
    pacing.add_argument("--fast", action="store_true", help="as fast as possible, every frame recorded (default)")
    parser.add_argument("--sink", dest="live_sink", help="also show the overlay here, e.g. window:// (default: "
                        "window:// when a display is available)")  # fmt: skip
    parser.add_argument("--no-window", action="store_true", help="never open a live window")
    parser.add_argument("--backend", default=d.backend, help="auto, tflite, onnxruntime, savedmodel, tensorrt")
    parser.add_argument("--format", dest="fmt", help="artifact format, e.g. tflite-int8 (default: the backend's)")
    parser.add_argument("--threads", type=int, help="runtime threads")
    parser.add_argument("--language", choices=("en", "zh"), default=d.language, help="overlay language")
    parser.add_argument("--screenshot-at", type=float, help="clip second of frame.png (default: late in the run)")
    parser.add_argument("--status-port", type=int, help="serve /status on 127.0.0.1:PORT while running")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the daemon's log")
    args = parser.parse_args(list(argv))
    if args.seconds is not None and args.seconds <= 0:
        parser.error("--seconds must be > 0")
    live = args.live_sink
    if live is None and not args.no_window and _want_window():
        live = "window://"
    options = DemoOptions(
        out=args.out,
        bundle=args.bundle,
        clip=args.clip,
        quick=args.quick,
        seconds=args.seconds,
        realtime=True if args.realtime else (False if args.fast else None),
        live_sink=None if args.no_window and args.live_sink is None else live,
        backend=args.backend,
        fmt=args.fmt,
        threads=args.threads,
        language=args.language,
        screenshot_at=args.screenshot_at,
        status_port=args.status_port,
        verbose=args.verbose,
    )
    if options.verbose:
        from endoedge.edge.service.run_cli import setup_logging

        setup_logging("info")
    else:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = run_demo(options)
    except ModuleNotFoundError as exc:
        raise MissingDependencyError(f"the demo needs {exc.name!r}: pip install 'endoedge[edge]'") from None
    print(result.text)
    return 0
