"""One task's models on the newest frame: the preparer and inference threads, their mailboxes, restarts.

The display loop (:mod:`endoedge.edge.service.daemon`) drops every shown frame into a
:class:`TaskWorker`'s single-slot mailbox and reads the worker's state and figures; the worker takes
nothing from the loop. Its threads:

* **Preparer**: takes the newest frame, finds the endoscopic field and prepares the first model's pixels
  from the bundle's manifest while the model is still busy with the previous frame, so a model slower
  than one frame runs back to back.
* **Inference thread**: takes the newest prepared frame (frames overwritten before they were taken, at
  either stage, are counted as skipped), runs the task's models (a cascade may skip one) and folds the
  probabilities into the task through the :class:`~endoedge.edge.stages.tasks.ExamSession`, stamped
  with the frame's media time (:mod:`~endoedge.edge.service.media_clock`). A backend that raises or
  returns garbage is closed and reloaded with exponential backoff; one that hangs past its budget is
  abandoned (its late result is discarded) and a fresh one is loaded. A refused bundle (checksum,
  wrong task) keeps the AI off and is retried.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np

from endoedge.core.bundle import open_bundle
from endoedge.core.errors import BundleError, EndoedgeError, ManifestError, one_line
from endoedge.core.fileio import sha256_file
from endoedge.core.manifest import ModelManifest
from endoedge.core.preprocess import FieldDetector, FieldROI, PreprocessSpec, prepare_pixels
from endoedge.edge.config import CoverageTaskConfig, HemorrhoidTaskConfig, ModelConfig
from endoedge.edge.service.logs import log_event
from endoedge.edge.service.media_clock import MediaClock
from endoedge.edge.service.meters import LatencyWindow, RateMeter
from endoedge.edge.stages.tasks import CoverageTask, ExamEvent, ExamSession, Task, build_task
from endoedge.edge.types import Backend, Frame

T = TypeVar("T")
BackendFactory = Callable[[ModelConfig], Backend]


def lower_thread_priority(increment: int) -> bool:
    """Raise the calling thread's nice value by ``increment`` (Linux, where nice is per thread).

    Threads the caller creates afterwards inherit the value, which is how an inference runtime's own
    thread pool ends up below the display loop too.

    Returns:
        Whether the priority was changed (False for 0, off Linux, or when the system refuses).
    """
    if increment <= 0 or not sys.platform.startswith("linux"):
        return False
    tid = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, current + increment))
    except OSError as exc:
        log_event(logging.WARNING, "inference priority not lowered", reason=one_line(exc))
        return False
    return True


class Mailbox(Generic[T]):
    """A single-slot mailbox: the producer overwrites, the consumer always takes the newest item."""

    def __init__(self) -> None:
        self._frame: T | None = None
        self._cond = threading.Condition()
        self.overwritten = 0

    def put(self, frame: T) -> None:
        """Leave ``frame`` for the consumer (an untaken older frame is dropped and counted)."""
        with self._cond:
            if self._frame is not None:
                self.overwritten += 1
            self._frame = frame
            self._cond.notify()

    def wake(self) -> None:
        """Wake a waiting consumer (shutdown)."""
        with self._cond:
            self._cond.notify_all()

    def discard(self) -> None:
        """Drop an untaken item (counted as overwritten): the consumer wants one that comes after now."""
        with self._cond:
            if self._frame is not None:
                self.overwritten += 1
                self._frame = None

    def take(self, timeout: float) -> T | None:
        """The newest item, waiting up to ``timeout`` seconds; ``None`` when none came."""
        with self._cond:
            if self._frame is None:
                self._cond.wait(timeout)
            frame, self._frame = self._frame, None
            return frame


class FieldHolder:
    """The latest endoscopic-field ROI published by an inference worker, for the overlay."""

    def __init__(self) -> None:
        self.roi: FieldROI | None = None
        self.updated = -math.inf

    def publish(self, roi: FieldROI, t: float) -> None:
        """Store the ROI found at ``t``."""
        self.roi, self.updated = roi, t


def load_backend(model: ModelConfig) -> Backend:
    """Open a model's bundle and create its backend (the chosen artifact's sha256 is verified).

    Raises:
        BundleError, ManifestError, ChecksumError: The bundle is refused.
        EndoedgeError: The runtime is missing or cannot load the artifact.
    """
    from endoedge.edge.backends import create_backend

    bundle = open_bundle(model.bundle, verify=False)
    return create_backend(model.backend, bundle, model.format, **model.options)


def _warm(backend: Backend, runs: int) -> None:
    """Warm a freshly loaded backend up, checking what it returns as a real inference would be checked.

    A backend that returns garbage (NaN, a wrong shape, values outside [0, 1]) fails its warm-up, so the
    AI stays off with its banner until a reload gives sane outputs, instead of being declared ``ok``
    and failing again on the next real frame.
    """
    spec = backend.manifest.preprocess
    blank = np.zeros((1, spec.height, spec.width, 3), dtype=np.uint8)
    warmup = getattr(backend, "warmup", None)
    if callable(warmup):
        warmup(runs=runs)
        runs = min(runs, 1)  # its own warm-up ran; one checked inference remains
    for _ in range(runs):
        _check_output(backend.infer(blank), backend.manifest.num_classes)


def _check_output(probs: Any, classes: int) -> np.ndarray:
    out = np.asarray(probs, dtype=np.float32)
    if out.ndim == 1:
        out = out[None]
    if out.shape != (1, classes):
        raise EndoedgeError(f"backend returned shape {out.shape}, expected (1, {classes})")
    if not np.all(np.isfinite(out)):
        raise EndoedgeError("backend returned NaN or infinity")
    if out.min() < -1e-3 or out.max() > 1.0 + 1e-3:
        raise EndoedgeError(f"backend returned values outside [0, 1] ({out.min():.3g}..{out.max():.3g})")
    return out


@dataclass
class _Loaded:
    backends: dict[str, Backend]
    manifests: dict[str, ModelManifest]
    #: Per role, the bundle folder really loaded (a store's ``current`` resolved) and its manifest's
    #: sha256, taken at load time: the link may be switched while this version keeps running.
    folders: dict[str, Path]
    manifest_sha256: dict[str, str | None]


def _loaded_folder(backend: Backend, model: ModelConfig) -> Path:
    """The folder ``backend`` was loaded from, as ``open_bundle`` resolved it.

    A backend without an opened bundle (a test double) falls back to resolving the configured path now,
    at load time, never later.
    """
    loaded_bundle = getattr(backend, "bundle", None)
    path = getattr(loaded_bundle, "path", None)
    return Path(path) if path else Path(model.bundle).resolve()


def pending_bundle(configured: str | Path, loaded: str | Path | None) -> dict[str, Any] | None:
    """What the configured bundle path points at now, when that is not the folder loaded.

    A store's ``current`` switched by an install or a rollback is picked up only when the backend is
    loaded again (a service restart), so until then ``/status`` shows the new version as pending.

    Args:
        configured: The model's ``bundle`` from the config (e.g. ``/var/lib/endoedge/bundles/current``).
        loaded: The folder loaded, or ``None`` when nothing is loaded yet.

    Returns:
        ``{"bundle", "manifest_name", "manifest_sha256"}`` of the target (name and checksum ``None`` when
        unreadable), or ``None`` when it is the loaded folder or not a folder (a ``.tar`` is extracted
        into a cache folder named by its content, so its path cannot be compared with the loaded one).
    """
    target = Path(configured)
    try:
        if not target.is_dir():
            return None
        resolved = target.resolve()
    except OSError:
        return None
    if loaded is not None and resolved == Path(loaded):
        return None
    pending: dict[str, Any] = {"bundle": str(resolved), "manifest_name": None, "manifest_sha256": None}
    with contextlib.suppress(OSError, ValueError, AttributeError):
        manifest_file = resolved / "manifest.json"
        pending["manifest_sha256"] = sha256_file(manifest_file)
        pending["manifest_name"] = str(json.loads(manifest_file.read_text(encoding="utf-8"))["name"])
    return pending


@dataclass(frozen=True)
class _Prepared:
    """A frame with its endoscopic field and, when the model's preprocessing was known, its pixels."""

    frame: Frame
    roi: FieldROI | None
    spec: PreprocessSpec | None
    pixels: np.ndarray | None
    seconds: float


class TaskWorker:
    """Runs one task's models on the newest frame, restarting them when they fail.

    Attributes:
        state: ``warming`` (loading), ``ok``, ``off`` (failed; restarting) or ``refused`` (bad bundle).
        reason: Why the AI is off (one line), "" when ok.
    """

    MAX_ABANDONED = 3
    #: Loading and warm-up may be slower than a frame's inference (lazy runtime initialisation), so a
    #: hang there is declared after this many times the model's ``timeout_s``.
    WARMUP_BUDGET_FACTOR = 10.0

    def __init__(
        self,
        config: CoverageTaskConfig | HemorrhoidTaskConfig,
        models: dict[str, ModelConfig],
        session: ExamSession,
        factory: BackendFactory,
        field: FieldHolder,
        events: queue.SimpleQueue[ExamEvent],
        keep_frame: Callable[[str, str, np.ndarray], None] | None = None,
        nice: int = 0,
        fresh: bool = False,
        clock: MediaClock | None = None,
    ) -> None:
        self.config = config
        self.nice = nice
        self.fresh = fresh
        #: Media time for the stages (live: capture times; replays: presentation times).
        self.clock = clock or MediaClock(replay=False)
        #: An unpaced replay: the display loop waits for each frame's result (see :meth:`wait_done`), so
        #: the frames must not be discarded for freshness.
        self.lockstep = False
        self._done = threading.Condition()
        self.done_index = -1
        # Real capture times of recently processed frames, for the loop's overlay delay (real time).
        self._captured: dict[int, float] = {}
        self.name = config.name
        self.models = models
        self.session = session
        self.factory = factory
        self.field = field
        self.events = events
        self.keep_frame = keep_frame
        self.mailbox: Mailbox[Frame] = Mailbox()
        self.prepared: Mailbox[_Prepared] = Mailbox()
        # The preprocessing of the first model, published by the loading thread for the preparer.
        self._prepare_spec: PreprocessSpec | None = None
        self._preparer: threading.Thread | None = None
        self.task: Task | None = None
        self.state = "warming"
        self.reason = ""
        self.loaded: _Loaded | None = None
        self.generation = 0
        self.busy_since: float | None = None
        self.first_attempt_done = threading.Event()
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []
        self.stage = {name: LatencyWindow() for name in ("preprocess", "infer", "smooth")}
        self.infer_by_role = {role: LatencyWindow() for role in models}
        self.inferences = 0
        self.errors = 0
        self.restarts = 0
        self.loads = 0
        self.hangs = 0
        self.off_since: float | None = None
        self.off_seconds = 0.0
        self.rate = RateMeter()
        self._backoff = min(m.restart_initial_s for m in models.values())
        self._max_backoff = max(m.restart_max_s for m in models.values())
        self._initial_backoff = self._backoff
        self._ok_since: float | None = None
        self._lock = threading.Lock()
        self._last_description = self._describe(None)

    # -- control ------------------------------------------------------------------------------------
    @property
    def skipped(self) -> int:
        """Frames overwritten before inference took them (in the frame mailbox or the prepared one)."""
        return self.mailbox.overwritten + self.prepared.overwritten

    def captured_at(self, frame_index: int) -> float | None:
        """The capture time (``time.monotonic()``) of a recently processed frame, or ``None``."""
        with self._done:
            return self._captured.get(frame_index)

    def wait_done(self, frame_index: int, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until the frame ``frame_index`` (or a later one) was processed."""
        with self._done:
            if self.done_index < frame_index:
                self._done.wait(timeout)
            return self.done_index >= frame_index

    def start(self) -> None:
        """Start the preparer and the worker thread."""
        self._preparer = threading.Thread(target=self._prepare_loop, name=f"prepare-{self.name}", daemon=True)
        self._preparer.start()
        self._spawn()

    def _spawn(self, after_backoff: bool = False) -> None:
        self.threads = [t for t in self.threads if t.is_alive()]
        generation = self.generation
        thread = threading.Thread(
            target=self._run, args=(generation, after_backoff), name=f"infer-{self.name}-{generation}", daemon=True
        )
        self.threads.append(thread)
        thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the thread to finish and release the backends."""
        self.stop_event.set()
        self.mailbox.wake()
        self.prepared.wake()
        deadline = time.monotonic() + timeout
        if self._preparer is not None:
            self._preparer.join(max(0.0, deadline - time.monotonic()))
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if not any(t.is_alive() for t in self.threads):
            self._release()

    def check_hang(self, now: float) -> bool:
        """Called by the display loop: abandon an inference running past its budget (True if it did)."""
        started = self.busy_since
        if started is None or self.state == "refused":
            return False
        budget = max(m.timeout_s for m in self.models.values())
        if self.state != "ok":  # a warm-up after a (re)load: a runtime hanging there is retried too
            budget *= self.WARMUP_BUDGET_FACTOR
        if now - started <= budget:
            return False
        with self._lock:
            if self.busy_since != started:
                return False
            self.hangs += 1
            self.busy_since = None
            self._set_off(f"inference hung for more than {budget:g} s", now)
            self.generation += 1
            abandoned = self.loaded
            self.loaded = None
            alive = sum(1 for t in self.threads if t.is_alive())
            if alive > self.MAX_ABANDONED:
                self.reason += f"; {alive - 1} hung runtimes not returned, not restarting"
                return True
            # The hung thread still holds the old backend; it closes it if the call ever returns.
            del abandoned
            self._spawn(after_backoff=True)
        return True

    # -- state --------------------------------------------------------------------------------------
    def _set_off(self, reason: str, now: float, state: str = "off") -> None:
        if self.state not in ("off", "refused"):
            self.off_since = now
        first = self.state != state or self.reason != reason
        self.state, self.reason = state, reason
        self._ok_since = None
        if self.task is not None:
            with self.session.lock:
                self.task.clear_view()
                self.task.pause()
        if first:
            log_event(logging.WARNING, "ai off", task=self.name, state=state, reason=reason)

    def _set_ok(self, now: float) -> None:
        if self.state != "ok":
            if self.off_since is not None:
                self.off_seconds += now - self.off_since
                self.off_since = None
            models = [f"{m['model']}:{m.get('backend')}:{m.get('format')}" for m in self.describe_models()]
            log_event(logging.INFO, "ai on", task=self.name, models=models)
        self.state, self.reason = "ok", ""
        if self._ok_since is None:
            self._ok_since = now
        elif now - self._ok_since > 30.0:
            self._backoff = self._initial_backoff

    def _release(self) -> None:
        loaded, self.loaded = self.loaded, None
        if loaded is not None:
            for backend in loaded.backends.values():
                with contextlib.suppress(Exception):
                    backend.close()

    def describe_models(self) -> list[dict[str, Any]]:
        """Model, backend, format and checksums of the loaded backends (the last loaded, or the config).

        ``bundle`` (and ``bundle_path``) is the folder actually loaded (``None`` before the first load),
        ``configured_bundle`` the config's path, and ``pending`` what that path points at now when it is
        another folder (see :func:`pending_bundle`).
        """
        loaded = self.loaded
        described = self._describe(loaded) if loaded is not None else [dict(e) for e in self._last_description]
        for entry in described:
            entry.pop("pending", None)
            pending = pending_bundle(entry["configured_bundle"], entry.get("bundle"))
            if pending is not None:
                entry["pending"] = pending
        return described

    def _describe(self, loaded: _Loaded | None) -> list[dict[str, Any]]:
        out = []
        for role, model in self.models.items():
            # Never the configured path as "bundle": a store's ``current`` may already name a version that
            # is not loaded (it runs after a restart).
            entry: dict[str, Any] = {
                "task": self.name,
                "role": role,
                "model": model.name,
                "bundle": None,
                "configured_bundle": model.bundle,
            }
            if loaded is not None and role in loaded.backends:
                backend = loaded.backends[role]
                manifest = loaded.manifests[role]
                entry.update(
                    backend=backend.name,
                    format=backend.format,
                    manifest_name=manifest.name,
                    labelset=manifest.labelset.tag,
                    artifact_sha256=manifest.artifact(backend.format).sha256
                    if any(a.format == backend.format for a in manifest.artifacts)
                    else None,
                )
                entry["bundle"] = entry["bundle_path"] = str(loaded.folders[role])
                entry["manifest_sha256"] = loaded.manifest_sha256[role]
            else:
                entry.update(backend=model.backend, format=model.format)
            out.append(entry)
        return out

    # -- the thread ---------------------------------------------------------------------------------
    def _load(self, generation: int) -> _Loaded:
        backends: dict[str, Backend] = {}
        try:
            for role, model in self.models.items():
                backend = self.factory(model)
                backends[role] = backend
            manifests = {role: b.manifest for role, b in backends.items()}
            folders = {role: _loaded_folder(b, self.models[role]) for role, b in backends.items()}
            checksums: dict[str, str | None] = {}
            for role, folder in folders.items():
                try:
                    checksums[role] = sha256_file(folder / "manifest.json")
                except OSError:
                    checksums[role] = None
            task = build_task(self.config, manifests)
            for role, backend in backends.items():
                self.busy_since = time.monotonic()  # the display loop's hang check watches warm-ups too
                _warm(backend, self.models[role].warmup_runs)
        except BaseException:
            for backend in backends.values():
                with contextlib.suppress(Exception):
                    backend.close()
            raise
        finally:
            with self._lock:
                if generation == self.generation:  # an abandoned (hung) load must not clear its successor's
                    self.busy_since = None
        keep = self.task
        if (
            keep is None
            or type(keep) is not type(task)
            or getattr(keep, "labelset", None) != getattr(task, "labelset", None)
        ):
            self.session.add_task(task)
            self.task = task
        return _Loaded(backends, manifests, folders, checksums)

    def _wait_backoff(self) -> None:
        self.stop_event.wait(self._backoff)
        self._backoff = min(self._backoff * 2.0, self._max_backoff)

    def _current(self, generation: int) -> bool:
        return generation == self.generation and not self.stop_event.is_set()

    def _prepare_loop(self) -> None:
        """Field detection and the first model's pixels for the newest frame, ahead of the model."""
        lower_thread_priority(self.nice)
        detector = FieldDetector()
        while not self.stop_event.is_set():
            frame = self.mailbox.take(0.2)
            if frame is None:
                continue
            t0 = time.monotonic()
            spec = self._prepare_spec
            roi: FieldROI | None = None
            pixels: np.ndarray | None = None
            try:
                roi = detector(frame.image)
                self.field.publish(roi, t0)
                if spec is not None:
                    pixels = prepare_pixels(frame.image, spec, roi)
            except Exception:  # the inference thread prepares it again and reports what fails
                roi, pixels = None, None
            self.prepared.put(_Prepared(frame, roi, spec, pixels, time.monotonic() - t0))

    def _run(self, generation: int, after_backoff: bool = False) -> None:
        # Before the backend is loaded: the runtime's thread pools, created while loading, inherit it.
        lower_thread_priority(self.nice)
        detector = FieldDetector()
        loaded: _Loaded | None = None
        if after_backoff:
            self._wait_backoff()
        try:
            while self._current(generation):
                if loaded is None:
                    try:
                        loaded = self._load(generation)
                    except (BundleError, ManifestError) as exc:
                        self._set_off(f"bundle refused: {one_line(exc)}", time.monotonic(), "refused")
                        self.first_attempt_done.set()
                        self._wait_backoff()
                        continue
                    except Exception as exc:  # any runtime's load failure: AI off, retry with backoff
                        self._set_off(f"backend failed to load: {one_line(exc)}", time.monotonic())
                        self.first_attempt_done.set()
                        self._wait_backoff()
                        continue
                    if not self._current(generation):
                        break
                    self.loads += 1
                    self.restarts = self.loads - 1
                    self.loaded = loaded
                    first = self.task.roles[0] if self.task is not None else None
                    self._prepare_spec = loaded.manifests[first].preprocess if first in loaded.manifests else None
                    self._last_description = self._describe(loaded)
                    self._set_ok(time.monotonic())
                    self.first_attempt_done.set()
                if self.fresh and not self.lockstep:
                    # Pacing "fresh": only a frame prepared from now on (it was captured no earlier than
                    # the end of the previous inference), so the result is at most one frame stale.
                    self.prepared.discard()
                item = self.prepared.take(0.2)
                if item is None or not self._current(generation):
                    continue
                try:
                    self._process(item, loaded, detector, generation)
                except Exception as exc:  # raise, NaN, wrong shape: AI off, restart with backoff
                    if not self._current(generation):
                        break
                    self.busy_since = None
                    self.errors += 1
                    self._set_off(f"inference failed: {one_line(exc)}", time.monotonic())
                    for backend in loaded.backends.values():
                        with contextlib.suppress(Exception):
                            backend.close()
                    loaded = None
                    self.loaded = None
                    self._wait_backoff()
        finally:
            if loaded is not None and generation != self.generation:
                for backend in loaded.backends.values():
                    with contextlib.suppress(Exception):
                        backend.close()

    def _process(self, item: _Prepared, loaded: _Loaded, detector: FieldDetector, generation: int) -> None:
        task = self.task
        assert task is not None
        frame = item.frame
        image = frame.image
        roi = item.roi
        field_s = 0.0
        if roi is None:
            t0 = time.monotonic()
            roi = detector(image)
            self.field.publish(roi, t0)
            field_s = time.monotonic() - t0  # charged to the first model's preprocessing
        for role in task.roles:
            if role not in loaded.backends or not task.wants(role):
                continue
            backend = loaded.backends[role]
            manifest = loaded.manifests[role]
            t1 = time.monotonic()
            if item.pixels is not None and role == task.roles[0] and item.spec == manifest.preprocess:
                pixels = item.pixels  # prepared ahead, while the model ran on the previous frame
                field_s, t1 = 0.0, t1 - item.seconds
            else:
                pixels = prepare_pixels(image, manifest.preprocess, roi)
            t2 = time.monotonic()
            self.busy_since = t2
            probs = backend.infer(pixels[None])
            t3 = time.monotonic()
            with self._lock:
                if generation != self.generation:
                    return  # abandoned as hung: the result is stale
                self.busy_since = None
            probs = _check_output(probs, manifest.num_classes)
            t = frame.media_time  # the stages' one time source: never the wall or the decoding speed
            events = self.session.observe(task, role, probs[0], t, self.clock.wall(t), frame.index)
            if isinstance(task, CoverageTask) and role == task.roles[0] and task.detect_photo(pixels, t):
                self.session.photo(t, "freeze")
            t4 = time.monotonic()
            for event in events:
                if event.kind == "observed":
                    if self.keep_frame is not None:
                        self.keep_frame(event.exam_id, event.reason, image)
                else:
                    self.events.put(event)
            self.stage["preprocess"].add(t2 - t1 + field_s)
            field_s = 0.0
            self.stage["infer"].add(t3 - t2)
            self.infer_by_role[role].add(t3 - t2)
            self.stage["smooth"].add(t4 - t3)
        self.inferences += 1
        self.rate.tick(time.monotonic())
        with self._done:
            self._captured[frame.index] = frame.t_capture
            if len(self._captured) > 16:
                del self._captured[min(self._captured)]
            self.done_index = max(self.done_index, frame.index)
            self._done.notify_all()
        self._set_ok(time.monotonic())
