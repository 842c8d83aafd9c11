"""The edge daemon: capture → (inference, smoothing, coverage) → overlay → display, where video never waits.

Threads:

* **Display loop** (the thread that calls :meth:`Daemon.run`): reads every frame from the source,
  drops it into each inference worker's single-slot mailbox, draws the most recent overlay and hands
  the frame to the sink. It never waits for inference. When the source has no signal it shows a
  "no signal" screen at the nominal frame rate. It pings the systemd watchdog, so a stalled loop is
  caught.
* **Task workers** (one per task, :mod:`endoedge.edge.service.worker`): a preparer and an inference
  thread that take the newest frame, run the task's models and fold the probabilities into the task,
  restarting a backend that fails or hangs. The worker imports nothing from this module.
* **Supervisor**: writes exam checkpoints atomically every few seconds, procedure reports when exams
  end, systemd ``STATUS=`` lines and periodic log lines — the display loop never touches the disk.
* **Status server** (optional): ``/healthz``, ``/status``, ``/metrics``, ``POST /exam/...``.

Every figure the benchmarks need (per-stage times, added video delay, overlay delay, fps, skipped
frames) is available from :meth:`Daemon.stats`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from endoedge.core.errors import one_line
from endoedge.core.preprocess import FieldDetector, FieldROI, full_frame_roi
from endoedge.edge.config import CoverageTaskConfig, DaemonConfig
from endoedge.edge.service.logs import log_event
from endoedge.edge.service.media_clock import MediaClock
from endoedge.edge.service.meters import LatencyWindow, RateMeter
from endoedge.edge.service.report import CheckpointStore, build_report, write_report
from endoedge.edge.service.sdnotify import Notifier
from endoedge.edge.service.status import Metric, StatusServer
from endoedge.edge.service.worker import BackendFactory, FieldHolder, TaskWorker, load_backend
from endoedge.edge.stages.coverage import ExamClock
from endoedge.edge.stages.tasks import ExamEvent, ExamSession, overlay_fields
from endoedge.edge.stages.types import OverlayState
from endoedge.edge.types import Sink, Source


class Renderer(Protocol):
    """Draws the overlay (see ``endoedge.edge.stages.overlay.OverlayRenderer``)."""

    def render(self, frame: np.ndarray, state: OverlayState, field_roi: FieldROI) -> np.ndarray:
        """Return a new frame with the overlay; ``frame`` itself is left untouched."""
        ...


# ---------------------------------------------------------------------------------------------------
# The daemon
# ---------------------------------------------------------------------------------------------------


def _redact(uri: str) -> str:
    """Drop credentials and query strings from a URI for logs and status."""
    if "://" not in uri:
        return uri
    scheme, rest = uri.split("://", 1)
    if "@" in rest.split("/", 1)[0]:
        rest = "***@" + rest.split("@", 1)[1]
    return f"{scheme}://{rest.split('?', 1)[0]}"


class Daemon:
    """The edge daemon.

    Args:
        config: Validated configuration.
        source: A source to use instead of opening ``config.source.uri`` (tests, embedding).
        sink: A sink to use instead of opening ``config.sink.uri``.
        renderer: An overlay renderer instead of ``endoedge.edge.stages.overlay.OverlayRenderer``.
        backend_factory: Creates a backend from a model config (default: :func:`load_backend`).
        notifier: systemd notifier (default: from the environment).
    """

    def __init__(
        self,
        config: DaemonConfig,
        source: Source | None = None,
        sink: Sink | None = None,
        renderer: Renderer | None = None,
        backend_factory: BackendFactory | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        self._source = source
        self._sink = sink
        self.renderer = renderer
        self.factory = backend_factory or load_backend
        self.notifier = notifier or Notifier()
        exam = config.exam
        driver = exam.driver
        if driver is None and config.tasks:
            coverage = [t.name for t in config.tasks if isinstance(t, CoverageTaskConfig)]
            driver = coverage[0] if coverage else config.tasks[0].name
        self.session = ExamSession(
            ExamClock(
                auto_start=exam.auto_start,
                auto_end=exam.auto_end,
                start_after_s=exam.start_after_s,
                end_after_s=exam.end_after_s,
            ),
            driver=driver,
        )
        #: The pure stages' one time source: capture times live, presentation times on a replay.
        self.media_clock = MediaClock.for_source(
            config.source.uri, config.source.as_fast_as_possible, config.source.fallback_fps
        )
        #: An unpaced replay has no screen to keep in time: the loop waits for every frame's result, so the
        #: AI sees every frame and the replay gives the same results however fast the machine decodes.
        self.lockstep = self.media_clock.replay and config.source.as_fast_as_possible
        self.events: queue.SimpleQueue[ExamEvent] = queue.SimpleQueue()
        self.field = FieldHolder()
        self.workers: list[TaskWorker] = []
        for task in config.tasks:
            roles = (
                {"sites": task.model}
                if isinstance(task, CoverageTaskConfig)
                else {"a": task.model_a, **({"b": task.model_b} if task.model_b else {})}
            )
            models = {role: config.model(name) for role, name in roles.items()}
            keeper = self._keep_frame if config.report.include_frames else None
            self.workers.append(
                TaskWorker(
                    task,
                    models,
                    self.session,
                    self.factory,
                    self.field,
                    self.events,
                    keeper,
                    config.run.inference_nice,
                    config.run.ai_pacing == "fresh",
                    clock=self.media_clock,
                )
            )
        self.checkpoints = CheckpointStore(config.state.dir) if config.state.dir else None
        self.exam_frames: list[tuple[str, str, np.ndarray]] = []
        self._frames_lock = threading.Lock()
        self.stop_event = threading.Event()
        self.stop_reason = ""
        self.status_server: StatusServer | None = None
        self.stage = {name: LatencyWindow() for name in ("capture", "overlay", "sink", "loop")}
        self.video_delay = LatencyWindow()
        self.overlay_delay = LatencyWindow()
        self.rate_in = RateMeter()
        self.rate_out = RateMeter()
        self.frames_in = 0
        self.frames_out = 0
        self.no_signal_frames = 0
        self.bad_frames = 0
        self.sink_errors = 0
        self.overlay_errors = 0
        self.source_errors = 0
        #: The latest report folders (bounded: a box runs for months); ``reports_total`` counts all.
        self.reports_written: deque[Path] = deque(maxlen=100)
        self.reports_total = 0
        self.report_errors = 0
        self.checkpoint_errors = 0
        self._checkpoint_lock = threading.Lock()
        for worker in self.workers:
            worker.lockstep = self.lockstep
        self.signal = False
        self.started = time.monotonic()
        self.heartbeat = time.monotonic()
        self.phase = "starting"
        self.ready_sent = False
        self.nominal_fps = config.source.fallback_fps
        self.frame_size = tuple(config.source.fallback_size)
        self._last_seen: dict[str, int] = {}
        self._local_detector = FieldDetector(redetect_every=60)
        self._supervisor: threading.Thread | None = None
        self._source_obj: Source | None = None
        self._sink_obj: Sink | None = None
        self._renderer: Renderer | None = None
        self._freeze_loop = threading.Event()  # tests: simulate a stalled display loop

    # -- construction helpers ---------------------------------------------------------------------
    def _open_source(self) -> Source:
        if self._source is not None:
            return self._source
        from endoedge.edge.video.sources import ReconnectingSource, open_source

        cfg = self.config.source
        options = dict(cfg.options)
        scheme = cfg.uri.split("://", 1)[0].lower()
        if scheme in ("file", "images"):
            options.setdefault("loop", cfg.loop)
            options.setdefault("as_fast_as_possible", cfg.as_fast_as_possible)
        uri = cfg.uri

        def factory() -> Source:
            return open_source(uri, **options)

        if scheme in ("file", "images"):
            return factory()  # a missing file is a user error; the end of a file ends the run
        return ReconnectingSource(
            factory,
            uri,
            initial_backoff=cfg.reconnect_initial_s,
            max_backoff=cfg.reconnect_max_s,
            fps=cfg.fallback_fps,
        )

    def _open_sink(self, width: int, height: int, fps: float) -> Sink:
        if self._sink is not None:
            return self._sink
        from endoedge.edge.video.sinks import open_sink

        return open_sink(self.config.sink.uri, width, height, fps, **self.config.sink.options)

    def _make_renderer(self) -> Renderer | None:
        if self.renderer is not None or not self.config.overlay.enabled:
            return self.renderer
        from endoedge.edge.stages.overlay import OverlayRenderer

        return OverlayRenderer(self.config.overlay.options)

    # -- public control ---------------------------------------------------------------------------
    def request_stop(self, reason: str = "stop requested") -> None:
        """Ask the display loop to finish (signal handlers, tests); the exam report is then written."""
        if not self.stop_event.is_set():
            self.stop_reason = reason
            self.stop_event.set()

    def exam_action(self, action: str) -> tuple[int, dict[str, Any]]:
        """``start``, ``end`` or ``photo`` (the status server's POST endpoints)."""
        now = self.media_clock.now()
        wall = self.media_clock.wall(now)
        if action == "start":
            events = self.session.start(now, wall, "api")
            self._queue(events)
            code = 200 if events else 409
            return code, {"ok": bool(events), "exam_id": self.session.clock.exam_id, "running": True}
        if action == "end":
            events = self.session.end(now, wall, "api")
            for event in events:
                # Durable before the caller hears 200 (this is the HTTP thread, not the display path).
                self._make_end_durable(event)
            self._queue(events)
            return (200 if events else 409), {"ok": bool(events), "exam_id": self.session.clock.exam_id or None}
        if action == "photo":
            ok = self.session.photo(now, "api")
            return (200 if ok else 409), {"ok": ok}
        return 404, {"error": f"unknown action {action!r}"}

    def _keep_frame(self, exam_id: str, name: str, image: np.ndarray) -> None:
        """Keep a copy of the frame on which a site became observed (only when the config allows it)."""
        with self._frames_lock:
            if sum(1 for e, _, _ in self.exam_frames if e == exam_id) < self.config.report.max_frames:
                self.exam_frames.append((exam_id, name, image.copy()))

    def _take_frames(self, exam_id: str) -> list[tuple[str, np.ndarray]]:
        with self._frames_lock:
            mine = [(name, image) for e, name, image in self.exam_frames if e == exam_id]
            self.exam_frames = [item for item in self.exam_frames if item[0] != exam_id]
        return mine

    def _queue(self, events: Sequence[ExamEvent]) -> None:
        for event in events:
            self.events.put(event)

    # -- status -----------------------------------------------------------------------------------
    def ai_status(self) -> tuple[str, str]:
        """Overall AI state (``ok``, ``warming``, ``off``) and the banner text."""
        if not self.workers:
            return "off", "no model configured"
        states = [w.state for w in self.workers]
        reasons = [f"{w.name}: {w.reason}" for w in self.workers if w.reason]
        if any(s in ("off", "refused") for s in states):
            return "off", "; ".join(reasons)
        if any(s == "warming" for s in states):
            return "warming", "loading models"
        return "ok", ""

    def healthy(self) -> tuple[bool, dict[str, Any]]:
        """Alive when the display loop turned within the last two seconds."""
        age = time.monotonic() - self.heartbeat
        return age < 2.0 and self.phase == "running", {"loop_age_s": round(age, 3), "phase": self.phase}

    def stats(self) -> dict[str, Any]:
        """Every figure of the run (benchmarks print these; ``/status`` is built from them)."""
        now = time.monotonic()
        workers = {}
        for w in self.workers:
            workers[w.name] = {
                "state": w.state,
                "reason": w.reason,
                "inferences": w.inferences,
                "inference_fps": round(w.rate.rate(now), 3),
                "skipped_frames": w.skipped,
                "errors": w.errors,
                "hangs": w.hangs,
                "restarts": w.restarts,
                "ai_off_s": round(w.off_seconds + (now - w.off_since if w.off_since is not None else 0.0), 3),
                "stages_ms": {k: v.summary() for k, v in w.stage.items()},
                "infer_ms_by_role": {k: v.summary() for k, v in w.infer_by_role.items()},
                "models": w.describe_models(),
            }
        return {
            "uptime_s": round(now - self.started, 3),
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "no_signal_frames": self.no_signal_frames,
            "bad_frames": self.bad_frames,
            # Frames the capture thread replaced before the display loop took them (the loop fell behind).
            "dropped_before_display": int(getattr(self._source_obj, "dropped", 0) or 0),
            "sink_errors": self.sink_errors,
            "overlay_errors": self.overlay_errors,
            "source_errors": self.source_errors,
            "fps_in": round(self.rate_in.rate(now), 3),
            "fps_out": round(self.rate_out.rate(now), 3),
            "source_fps": self.nominal_fps,
            "video_delay_ms": self.video_delay.summary(),
            "overlay_delay_ms": self.overlay_delay.summary(),
            "stages_ms": {k: v.summary() for k, v in self.stage.items()},
            "workers": workers,
            "reports_written": self.reports_total,
            "report_errors": self.report_errors,
            "checkpoint_errors": self.checkpoint_errors,
        }

    def status(self) -> dict[str, Any]:
        """The ``/status`` document."""
        stats = self.stats()
        ai, message = self.ai_status()
        infer = {w.name: w.stage["infer"].summary() for w in self.workers}
        source = self._source_obj
        return {
            "phase": self.phase,
            "ai": ai,
            "message": message,
            "signal": self.signal,
            "source": {
                "uri": _redact(self.config.source.uri),
                "fps": self.nominal_fps,
                "reconnects": getattr(source, "reconnects", 0),
            },
            "sink": {"uri": _redact(self.config.sink.uri)},
            "fps_in": stats["fps_in"],
            "fps_out": stats["fps_out"],
            "inference_ms": {name: {"p50": i.get("p50"), "p95": i.get("p95")} for name, i in infer.items()},
            "skipped_frames": {w.name: w.skipped for w in self.workers},
            "backends": [m for w in self.workers for m in w.describe_models()],
            "exam": self.session.summary(self.media_clock.now()),
            "stats": stats,
        }

    def metrics(self) -> list[Metric]:
        """Prometheus samples."""
        s = self.stats()
        ai, _ = self.ai_status()
        out = [
            Metric("up", 1.0 if self.phase == "running" else 0.0, help="1 while the display loop runs"),
            Metric("frames_in_total", s["frames_in"], "counter", "frames read from the source"),
            Metric("frames_out_total", s["frames_out"], "counter", "frames handed to the sink"),
            Metric("no_signal_frames_total", s["no_signal_frames"], "counter", "no-signal screens shown"),
            Metric("bad_frames_total", s["bad_frames"], "counter", "frames dropped as malformed"),
            Metric(
                "dropped_frames_total",
                s["dropped_before_display"],
                "counter",
                "frames the capture thread replaced before the display loop took them",
            ),
            Metric("fps_in", s["fps_in"], help="source frames per second"),
            Metric("fps_out", s["fps_out"], help="displayed frames per second"),
            Metric("signal", 1.0 if self.signal else 0.0, help="1 while the source delivers frames"),
            Metric("ai_ok", 1.0 if ai == "ok" else 0.0, help="1 while every model runs"),
            Metric("exam_running", 1.0 if self.session.clock.running else 0.0, help="1 during an exam"),
            Metric("exam_elapsed_seconds", self.session.clock.elapsed(self.media_clock.now()), help="exam timer"),
            Metric("reports_written_total", s["reports_written"], "counter", "procedure reports written"),
        ]
        for name, window in (("video_delay_ms", self.video_delay), ("overlay_delay_ms", self.overlay_delay)):
            summary = window.summary()
            for q in ("p50", "p95", "p99"):
                if q in summary:
                    out.append(Metric(name, summary[q], help="delay percentiles (ms)", labels=(("quantile", q),)))
        for task, w in s["workers"].items():
            labels = (("task", task),)
            out += [
                Metric("inferences_total", w["inferences"], "counter", "inferences run", labels),
                Metric("skipped_frames_total", w["skipped_frames"], "counter", "frames inference skipped", labels),
                Metric("inference_errors_total", w["errors"], "counter", "backend failures", labels),
                Metric("backend_restarts_total", w["restarts"], "counter", "backend reloads", labels),
                Metric("ai_off_seconds_total", w["ai_off_s"], "counter", "time with AI off", labels),
            ]
            for q in ("p50", "p95"):
                value = w["stages_ms"]["infer"].get(q)
                if value is not None:
                    out.append(
                        Metric("inference_ms", value, help="inference time (ms)", labels=(*labels, ("quantile", q)))
                    )
        return out

    # -- the display loop -------------------------------------------------------------------------
    def _overlay_state(self, now: float, signal_ok: bool, t_media: float) -> OverlayState:
        ai, message = self.ai_status()
        views = [w.task.view for w in self.workers if w.task is not None and w.state == "ok"]
        fields = overlay_fields(views)
        clock = self.session.clock
        infer = [w.stage["infer"].last for w in self.workers]
        return OverlayState(
            ai_status=ai,
            message=message,
            signal=signal_ok,
            exam_seconds=clock.elapsed(t_media) if clock.running else None,
            fps_in=self.rate_in.rate(now),
            infer_ms=(max(infer) * 1000.0) if infer else 0.0,
            language=self.config.overlay.language,
            **fields,
        )

    def _field_roi(self, image: np.ndarray, now: float) -> FieldROI:
        roi = self.field.roi
        h, w = image.shape[:2]
        if roi is not None and now - self.field.updated < 2.0 and (roi.frame_height, roi.frame_width) == (h, w):
            return roi
        # No worker publishes a field (AI off or still loading): detect here, rarely.
        return self._local_detector(image)

    def _show(self, sink: Sink, image: np.ndarray, t_capture: float, state: OverlayState, roi: FieldROI) -> None:
        renderer = self._renderer
        t0 = time.monotonic()
        out = image
        if renderer is not None:
            try:
                out = renderer.render(image, state, roi)
            except Exception as exc:  # an overlay bug must never cost the video: show the frame bare
                self.overlay_errors += 1
                if self.overlay_errors <= 3 or self.overlay_errors % 1000 == 0:
                    log_event(logging.ERROR, "overlay failed", errors=self.overlay_errors, reason=one_line(exc))
        t1 = time.monotonic()
        try:
            sink.write(out, t_capture)
        except Exception as exc:  # a display hiccup must not stop capture or the exam
            self.sink_errors += 1
            if self.sink_errors <= 3 or self.sink_errors % 1000 == 0:
                log_event(logging.ERROR, "sink write failed", errors=self.sink_errors, reason=one_line(exc))
        t2 = time.monotonic()
        self.stage["overlay"].add(t1 - t0)
        self.stage["sink"].add(t2 - t1)
        self.frames_out += 1
        self.rate_out.tick(t2)

    @staticmethod
    def _valid(image: Any) -> bool:
        return (
            isinstance(image, np.ndarray)
            and image.dtype == np.uint8
            and image.ndim == 3
            and image.shape[2] == 3
            and image.shape[0] >= 16
            and image.shape[1] >= 16
        )

    def run(self) -> int:
        """Run until the source ends, a limit is reached or a stop is requested.

        Returns:
            0 (also after SIGTERM: the report is on disk).

        Raises:
            EndoedgeError: The source or sink cannot be opened at start (user error).
        """
        installed = self._install_signals()
        # A thread holding the GIL keeps the display loop waiting up to the switch interval (5 ms by
        # default): shorter, so the video's delay tail does not carry it.
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(self.config.run.gil_switch_ms / 1000.0)
        try:
            self._startup()
            self._loop()
        finally:
            self._shutdown()
            sys.setswitchinterval(switch_interval)
            for signum, handler in installed:
                signal.signal(signum, handler)
        return 0

    def _install_signals(self) -> list[tuple[int, Any]]:
        if threading.current_thread() is not threading.main_thread():
            return []
        installed: list[tuple[int, Any]] = []
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(signum)
            signal.signal(signum, lambda s, _f: self.request_stop(f"signal {signal.Signals(s).name}"))
            installed.append((signum, previous))
        if os.environ.get("ENDOEDGE_FAULT_INJECTION") == "1":
            # Reliability tests stall the display loop with SIGUSR2 (toggle) to prove the watchdog.
            previous = signal.getsignal(signal.SIGUSR2)
            signal.signal(signal.SIGUSR2, lambda _s, _f: freeze_display_loop(self, not self._freeze_loop.is_set()))
            installed.append((signal.SIGUSR2, previous))
        return installed

    def _startup(self) -> None:
        self._renderer = self._make_renderer()
        self._resume_checkpoint()
        for worker in self.workers:
            worker.start()
        if self.config.status.enabled:
            server = StatusServer(self.config.status, self)  # a bad token file is a config error: exit 2
            try:
                self.status_server = server.start()
            except OSError as exc:  # port taken, address gone: the video matters more than the endpoint
                log_event(
                    logging.ERROR,
                    "status server not started",
                    host=self.config.status.host,
                    port=self.config.status.port,
                    reason=one_line(exc),
                )
        if self.media_clock.replay:
            self._await_first_load()
        self._source_obj = self._open_source()
        self.nominal_fps = float(getattr(self._source_obj, "fps", 0.0) or self.config.source.fallback_fps)
        self._supervisor = threading.Thread(target=self._supervise, name="supervisor", daemon=True)
        self._supervisor.start()
        log_event(
            logging.INFO,
            "daemon started",
            source=_redact(self.config.source.uri),
            sink=_redact(self.config.sink.uri),
            tasks=[w.name for w in self.workers],
            fps=round(self.nominal_fps, 3),
        )

    def _resume_checkpoint(self) -> None:
        if self.checkpoints is None:
            return
        # Exams that had ended but whose report was not written before the crash: report them as ended,
        # with their own end time and reason, and never resume them.
        ended_ids = set()
        for _, record in self.checkpoints.ended():
            summary = dict(record["summary"])
            ended_id = str(summary.get("exam_id"))
            ended_ids.add(ended_id)
            log_event(logging.WARNING, "report of an ended exam written after restart", exam=ended_id)
            event = ExamEvent("ended", ended_id, str(summary.get("end_reason", "")), summary)
            note = "the exam had ended; the daemon stopped before its report was written"
            self._write_report(event, recovered=True, note=note)
        data = self.checkpoints.load()
        if data is None:
            return
        age = time.time() - float(data.get("saved_wall", 0.0))
        exam_id = data.get("clock", {}).get("exam_id")
        if str(exam_id) in ended_ids:
            self.checkpoints.clear()
            return
        if age <= self.config.state.resume_within_s:
            try:
                self.session.resume(data, self.media_clock.now())
            except (KeyError, TypeError, ValueError) as exc:
                log_event(logging.ERROR, "exam checkpoint not resumable", exam=exam_id, reason=str(exc))
            else:
                log_event(logging.WARNING, "exam resumed after restart", exam=exam_id, checkpoint_age_s=round(age, 1))
                return
        # Too old to continue (or unreadable): close it with a report marked as recovered.
        saved_summary = data.get("summary")
        saved: dict[str, Any] = saved_summary if isinstance(saved_summary, dict) else {}
        summary = {
            **saved,
            "exam_id": exam_id,
            "running": False,
            "ended_wall": data.get("saved_wall"),
            "end_reason": "daemon stopped unexpectedly; closed from the last checkpoint",
        }
        self._write_report(ExamEvent("ended", str(exam_id), summary["end_reason"], summary), recovered=True)
        self.checkpoints.clear()

    def _loop(self) -> None:
        cfg = self.config
        source = self._source_obj
        assert source is not None
        sink: Sink | None = None
        last_frame_at = time.monotonic()
        next_blank = 0.0
        max_frames = cfg.run.max_frames
        deadline = self.started + cfg.run.duration_s if cfg.run.duration_s else math.inf
        self.phase = "running"
        while not self.stop_event.is_set():
            if self._freeze_loop.is_set():
                # Fault injection: a stalled loop sends no heartbeat, so systemd's watchdog fires.
                time.sleep(0.05)
                continue
            t_loop = time.monotonic()
            self.heartbeat = t_loop
            for worker in self.workers:
                worker.check_hang(t_loop)
            if cfg.run.watchdog:
                self.notifier.heartbeat()
            if not self.ready_sent and all(w.first_attempt_done.is_set() for w in self.workers):
                self._send_ready()
            if t_loop >= deadline:
                self.request_stop("duration reached")
                break
            if max_frames is not None and self.frames_out >= max_frames:
                self.request_stop("max frames reached")
                break
            fps = self.nominal_fps or cfg.source.fallback_fps
            try:
                frame = source.read(timeout=min(1.0 / fps, cfg.source.no_signal_after_s))
            except EOFError:
                self.request_stop("end of source")
                break
            except Exception as exc:  # a plain (non-reconnecting) source failing mid-run: like a lost signal
                self.source_errors += 1
                if self.source_errors <= 3 or self.source_errors % 1000 == 0:
                    log_event(logging.ERROR, "source read failed", errors=self.source_errors, reason=one_line(exc))
                frame = None
                time.sleep(min(0.1, 1.0 / fps))
            t_read = time.monotonic()
            if frame is None:
                if t_read - last_frame_at >= cfg.source.no_signal_after_s and t_read >= next_blank:
                    if self.signal:
                        log_event(logging.WARNING, "no signal", source=_redact(cfg.source.uri))
                    self.signal = False
                    next_blank = max(next_blank + 1.0 / fps, t_read - 1.0 / fps)
                    if sink is None:
                        sink = self._sink_obj = self._open_sink(self.frame_size[0], self.frame_size[1], fps)
                    t_media = self.media_clock.now()
                    self._queue(self.session.no_signal(t_media, self.media_clock.wall(t_media)))
                    blank = np.zeros((self.frame_size[1], self.frame_size[0], 3), dtype=np.uint8)
                    state = self._overlay_state(t_read, False, t_media)
                    self._show(sink, blank, t_read, state, full_frame_roi(blank))
                    self.no_signal_frames += 1
                continue
            self.stage["capture"].add(t_read - t_loop)  # waiting in source.read (frame interval + decode)
            image = frame.image
            if not self._valid(image):
                self.bad_frames += 1
                continue
            if not self.signal:
                log_event(
                    logging.INFO, "signal", source=_redact(cfg.source.uri), size=f"{image.shape[1]}x{image.shape[0]}"
                )
            self.signal = True
            frame = self.media_clock.stamp(frame)
            last_frame_at = t_read
            next_blank = 0.0
            self.frames_in += 1
            self.rate_in.tick(t_read)
            fps_now = float(getattr(source, "fps", 0.0) or 0.0)
            if fps_now > 0:
                self.nominal_fps = fps_now
            if sink is None:
                self.frame_size = (image.shape[1], image.shape[0])
                sink = self._sink_obj = self._open_sink(image.shape[1], image.shape[0], self.nominal_fps)
            elif (image.shape[1], image.shape[0]) != self.frame_size:
                self.frame_size = (image.shape[1], image.shape[0])
            state = self._overlay_state(t_read, True, frame.media_time)
            # The renderer draws on a copy: the workers read the captured frame concurrently.
            self._show(sink, image, frame.t_capture, state, self._field_roi(image, t_read))
            t_done = time.monotonic()
            self.video_delay.add(t_done - frame.t_capture)
            # The AI gets the frame once it is on its way to the screen: its preprocessing and inference
            # then start after the display path's work instead of competing with it for the cores (a
            # millisecond or two later for the AI, out of the video's delay).
            for worker in self.workers:
                worker.mailbox.put(frame)
            for worker in self.workers:
                task = worker.task
                if task is None:
                    continue
                view = task.view
                if view.frame_index >= 0 and self._last_seen.get(worker.name) != view.frame_index:
                    self._last_seen[worker.name] = view.frame_index
                    captured = worker.captured_at(view.frame_index)
                    if worker.state == "ok" and captured is not None:
                        self.overlay_delay.add(t_done - captured)
            self.stage["loop"].add(t_done - t_loop)
            if self.lockstep:
                self._await_results(frame.index)

    def _await_results(self, frame_index: int) -> None:
        """Unpaced replay: wait until every running worker has processed the frame (outside the timed
        display path). A worker that is off, or hangs past its budget, is not waited for."""
        for worker in self.workers:
            while not self.stop_event.is_set() and worker.state == "ok" and not worker.wait_done(frame_index, 0.05):
                now = time.monotonic()
                self.heartbeat = now
                if self.config.run.watchdog:
                    self.notifier.heartbeat()
                worker.check_hang(now)

    def _await_first_load(self) -> None:
        """Replay: let every worker finish its first load before the first frame is read, so the clip is
        analysed from its start and a paced and an unpaced replay see the same frames."""
        while not self.stop_event.is_set() and not all(w.first_attempt_done.is_set() for w in self.workers):
            now = time.monotonic()
            self.heartbeat = now
            if self.config.run.watchdog:
                self.notifier.heartbeat()
            if any(w.check_hang(now) for w in self.workers):
                return
            time.sleep(0.02)

    def _send_ready(self) -> None:
        self.ready_sent = True
        ai, message = self.ai_status()
        self.notifier.ready(status=f"running; AI {ai}{': ' + message if message else ''}")
        log_event(logging.INFO, "ready", ai=ai)

    # -- supervisor: disk and notifications, off the display path ---------------------------------
    def _supervise(self) -> None:
        last_checkpoint = 0.0
        last_status = 0.0
        last_log = time.monotonic()
        while not self.stop_event.wait(0.25):
            self._drain_events()
            now = time.monotonic()
            if self.checkpoints is not None and now - last_checkpoint >= self.config.state.checkpoint_every_s:
                last_checkpoint = now
                self._checkpoint(now)
            if now - last_status >= 5.0:
                last_status = now
                self.notifier.status(self._status_line())
            if now - last_log >= 60.0:
                last_log = now
                s = self.stats()
                log_event(
                    logging.INFO,
                    "stats",
                    fps_in=s["fps_in"],
                    fps_out=s["fps_out"],
                    video_delay_p99_ms=s["video_delay_ms"].get("p99"),
                    skipped=sum(w["skipped_frames"] for w in s["workers"].values()),
                    ai=self.ai_status()[0],
                )

    def _status_line(self) -> str:
        ai, _ = self.ai_status()
        clock = self.session.clock
        exam = f"exam {clock.exam_id} {int(clock.elapsed(self.media_clock.now()))} s" if clock.running else "no exam"
        signal_text = "signal" if self.signal else "NO SIGNAL"
        return f"{signal_text}; fps {self.rate_in.rate():.1f}/{self.rate_out.rate():.1f}; AI {ai}; {exam}"

    def _checkpoint(self, now: float) -> None:
        assert self.checkpoints is not None
        # Under the lock, so a running-exam checkpoint taken just before an end cannot land after the
        # end was made durable (it would resume the ended exam after a crash).
        with self._checkpoint_lock:
            data = self.session.checkpoint(self.media_clock.now())
            if data is None:
                return
            try:
                self.checkpoints.save(data)
            except OSError as exc:
                self._checkpoint_failed(self.checkpoints.path, exc)

    def _make_end_durable(self, event: ExamEvent) -> None:
        """Record an exam's end on disk at once (its report follows from the supervisor)."""
        if self.checkpoints is None or event.kind != "ended" or not event.summary:
            return
        with self._checkpoint_lock:
            try:
                self.checkpoints.save_ended(event.summary)
                self.checkpoints.clear(event.exam_id)
            except OSError as exc:
                self._checkpoint_failed(self.checkpoints.ended_path(event.exam_id), exc)

    def _checkpoint_failed(self, path: Path, exc: OSError) -> None:
        self.checkpoint_errors += 1
        if self.checkpoint_errors <= 3 or self.checkpoint_errors % 100 == 0:
            log_event(logging.ERROR, "checkpoint not written", path=str(path), reason=one_line(exc))

    def _drain_events(self) -> None:
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return
            if event.kind == "started":
                log_event(logging.INFO, "exam started", exam=event.exam_id, reason=event.reason)
                if self.checkpoints is not None:
                    self._checkpoint(time.monotonic())
            elif event.kind == "ended":
                log_event(logging.INFO, "exam ended", exam=event.exam_id, reason=event.reason)
                self._make_end_durable(event)
                self._write_report(event)

    def _write_report(self, event: ExamEvent, recovered: bool = False, note: str = "") -> Path | None:
        stats = self.stats()
        run = {
            "fps_in": stats["fps_in"],
            "frames_in": stats["frames_in"],
            "frames_out": stats["frames_out"],
            "no_signal_frames": stats["no_signal_frames"],
            "video_delay_ms": stats["video_delay_ms"],
            "overlay_delay_ms": stats["overlay_delay_ms"],
            "workers": {
                name: {k: w[k] for k in ("state", "inferences", "skipped_frames", "errors", "restarts", "ai_off_s")}
                for name, w in stats["workers"].items()
            },
        }
        models = [m for w in self.workers for m in w.describe_models()]
        language = self.config.overlay.language
        report = build_report(event.summary, models, run, recovered=recovered, note=note, language=language)
        try:
            frames = self._take_frames(event.exam_id) if self.config.report.include_frames else []
            font_path = self.config.overlay.options.get("font_path")
            path = write_report(
                self.config.report.dir, report, png=self.config.report.png, frames=frames, font_path=font_path
            )
        except Exception as exc:  # disk full, permissions, a drawing bug: log clearly, keep the video going
            self.report_errors += 1
            log_event(
                logging.ERROR,
                "report not written",
                exam=event.exam_id,
                dir=self.config.report.dir,
                reason=one_line(exc),
            )
            return None
        self.reports_written.append(path)
        self.reports_total += 1
        log_event(logging.INFO, "report written", exam=event.exam_id, path=str(path))
        if self.checkpoints is not None:
            with contextlib.suppress(OSError):
                self.checkpoints.clear_ended(event.exam_id)
                self.checkpoints.clear(event.exam_id)
        return path

    # -- shutdown ---------------------------------------------------------------------------------
    def _shutdown(self) -> None:
        self.phase = "stopping"
        self.notifier.stopping()
        log_event(logging.INFO, "stopping", reason=self.stop_reason or "error")
        self.stop_event.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=5)
        now = self.media_clock.now()
        wall = self.media_clock.wall(now)
        self._queue(self.session.end(now, wall, f"daemon stopped ({self.stop_reason or 'error'})"))
        self._drain_events()
        for worker in self.workers:
            worker.stop(timeout=2.0)
        if self.status_server is not None:
            self.status_server.stop()
        sink = getattr(self, "_sink_obj", None)
        if sink is not None and self._sink is None:
            with contextlib.suppress(Exception):
                sink.close()
        source = getattr(self, "_source_obj", None)
        if source is not None and self._source is None:
            with contextlib.suppress(Exception):
                source.close()
        self.notifier.close()
        self.phase = "stopped"


def freeze_display_loop(daemon: Daemon, frozen: bool = True) -> None:
    """Stall (or release) the display loop on purpose: the watchdog and ``/healthz`` must notice."""
    if frozen:
        daemon._freeze_loop.set()
    else:
        daemon._freeze_loop.clear()
