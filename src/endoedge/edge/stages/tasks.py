"""The daemon's tasks: what is done with a model's probabilities, and the exam session around them.

* :class:`CoverageTask` (``egd-coverage``) — smooths the site probabilities, shows the current site and
  feeds a :class:`~endoedge.edge.stages.coverage.CoverageTracker` while an exam runs.
* :class:`HemorrhoidTask` (``hemorrhoid``) — task A (normal / internal hemorrhoid); task B (LDRf grade)
  runs only while A is positive, and its smoothing restarts whenever A turns negative.
* :class:`ExamSession` — the exam clock and all tasks under one lock: results from inference workers,
  ``POST /exam/start|end`` from the status server and no-signal events from the display loop all go
  through it, so the exam state is consistent and can be checkpointed as a whole.

All pure Python over numpy: no threads, no I/O; the daemon calls these from its threads.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from endoedge.core.errors import BundleError
from endoedge.core.labels import LabelSet
from endoedge.core.manifest import ModelManifest
from endoedge.edge.config import CoverageTaskConfig, HemorrhoidTaskConfig, SmoothingConfig
from endoedge.edge.stages.coverage import CoverageTracker, ExamClock, FreezeDetector
from endoedge.edge.stages.smoothing import Smoother
from endoedge.edge.stages.types import ExamCheck, SiteCell


def make_smoother(num_classes: int, config: SmoothingConfig) -> Smoother:
    """A :class:`Smoother` from its config section."""
    return Smoother(
        num_classes,
        method=config.method,
        half_life_s=config.half_life_s,
        switch_per_s=config.switch_per_s,
        threshold=config.threshold,
        min_dwell_s=config.min_dwell_s,
        min_dwell_frames=config.min_dwell_frames,
        clear_after_s=config.clear_after_s,
        max_gap_s=config.max_gap_s,
    )


@dataclass(frozen=True)
class TaskView:
    """What one task contributes to the overlay, replaced as a whole after every result.

    Attributes:
        label: Display name of the current class (coverage tasks), or ``None``.
        label_zh: Chinese name.
        confidence: Smoothed probability of ``label``.
        coverage: Coverage cells (coverage tasks).
        checks: Exam quality checks.
        grade: Hemorrhoid text, or ``None``.
        grade_zh: The same with Chinese label names ("" when none).
        t_media: Media time of the frame this view comes from.
        frame_index: Index of that frame.
    """

    label: str | None = None
    label_zh: str = ""
    confidence: float = 0.0
    coverage: tuple[SiteCell, ...] = ()
    checks: tuple[ExamCheck, ...] = ()
    grade: str | None = None
    grade_zh: str = ""
    t_media: float = 0.0
    frame_index: int = -1


class Task:
    """Base of the daemon's tasks.

    Attributes:
        name: Task name from the config.
        kind: ``egd-coverage`` or ``hemorrhoid``.
        roles: Model roles in the order they run on a frame (e.g. ``("sites",)``, ``("a", "b")``).
        models: Role → model name from the config.
    """

    kind = "task"
    roles: tuple[str, ...] = ()

    def __init__(self, name: str, models: dict[str, str]) -> None:
        self.name = name
        self.models = models
        self.view = TaskView()
        #: Keys of sites that became observed since the session last collected them.
        self.new_observations: list[str] = []

    def wants(self, role: str) -> bool:
        """Whether the model of ``role`` should run on the current frame (cascades skip models)."""
        return True

    def observe(self, role: str, probs: np.ndarray, t: float, frame_index: int) -> None:
        """Fold in one model's probabilities for the frame captured at ``t``."""
        raise NotImplementedError

    def inside(self) -> bool | None:
        """Whether the latest decision says the scope is inside the body (``None``: no opinion)."""
        return None

    def record(self, t: float, exam_s: float) -> None:
        """Account the latest decision to the running exam."""

    def pause(self) -> None:
        """No results for a while (no signal, AI off): stop crediting time."""

    def reset_exam(self) -> None:
        """A new exam starts: clear per-exam statistics (not the smoothing)."""

    def photo(self, exam_s: float, source: str) -> None:
        """A photo was taken now."""

    def clear_view(self) -> None:
        """Forget what is displayed (AI off)."""
        self.view = TaskView()

    def summary(self, exam_s: float) -> dict[str, Any]:
        """Per-exam results for the status page and the report."""
        return {}

    def to_dict(self) -> dict[str, Any]:
        """Checkpoint form of the per-exam statistics."""
        return {}

    def restore(self, data: dict[str, Any]) -> None:
        """Load per-exam statistics from a checkpoint."""


class CoverageTask(Task):
    """``egd-coverage``: current site with confidence, and coverage of the required sites."""

    kind = "egd-coverage"
    roles: tuple[str, ...] = ("sites",)

    def __init__(self, config: CoverageTaskConfig, manifest: ModelManifest) -> None:
        super().__init__(config.name, {"sites": config.model})
        self.config = config
        self.labelset = manifest.labelset
        self.outside = {self.labelset.index_of(k) for k in config.outside}
        required = config.required
        if required is None and self.outside:
            required = [k for i, k in enumerate(self.labelset.keys) if i not in self.outside]
            required = [k for k in required if self.labelset.labels[self.labelset.index_of(k)].required] or required
        self.tracker = CoverageTracker(
            self.labelset,
            required=required,
            observe_frames=config.observe_frames,
            observe_s=config.observe_s,
            min_inspection_s=config.min_inspection_min * 60.0,
            photo_sites=config.photo_sites,
        )
        self.smoother = make_smoother(len(self.labelset), config.smoothing)
        self.freeze = FreezeDetector() if config.photo_from_freeze else None
        self.index: int | None = None
        self.confidence = 0.0
        self._exam_s: float | None = None

    def observe(self, role: str, probs: np.ndarray, t: float, frame_index: int) -> None:
        """Smooth and decide the displayed site."""
        decision = self.smoother.update(probs, t)
        self.index, self.confidence = decision.index, decision.confidence
        self._refresh_view(t, frame_index)

    def detect_photo(self, pixels: np.ndarray, t: float) -> bool:
        """Feed prepared pixels to the freeze detector (when enabled); True when a photo was taken."""
        return self.freeze is not None and self.freeze.update(pixels, t)

    def inside(self) -> bool | None:
        """Confident site → inside; confident outside label → outside; nothing confident → no opinion."""
        if self.index is None:
            return None
        return self.index not in self.outside

    def record(self, t: float, exam_s: float) -> None:
        """Credit the displayed site to the exam."""
        self._exam_s = exam_s
        shown = None if self.index is None or self.index in self.outside else self.index
        observed = self.tracker.observe(t, exam_s, shown)
        if observed is not None:
            self.new_observations.append(self.labelset.keys[observed])

    def pause(self) -> None:
        """Stop crediting time."""
        self.tracker.pause()

    def reset_exam(self) -> None:
        """Fresh coverage for a new exam."""
        self.tracker.reset()
        self._exam_s = 0.0

    def photo(self, exam_s: float, source: str) -> None:
        """Photo of the displayed site."""
        self.tracker.photo(exam_s, self.index, source)

    def cells(self) -> tuple[SiteCell, ...]:
        """One overlay cell per label (outside labels omitted)."""
        cells = []
        for label in self.labelset.labels:
            if label.index in self.outside:
                continue
            cells.append(
                SiteCell(
                    key=label.key,
                    name=label.name,
                    name_zh=label.name_zh,
                    region=label.region,
                    view=label.view,
                    required=label.index in self.tracker.required,
                    observed=self.tracker.observed(label.index),
                    seconds=float(self.tracker.seconds[label.index]),
                )
            )
        return tuple(cells)

    def _refresh_view(self, t: float, frame_index: int) -> None:
        label = None if self.index is None else self.labelset.labels[self.index]
        checks = tuple(self.tracker.checks(self._exam_s)) if self._exam_s is not None else ()
        self.view = TaskView(
            label=label.name if label else None,
            label_zh=label.name_zh if label else "",
            confidence=self.confidence,
            coverage=self.cells(),
            checks=checks,
            t_media=t,
            frame_index=frame_index,
        )

    def clear_view(self) -> None:
        """AI off: nothing displayed, the coverage map stays."""
        self.smoother.reset()
        self.index, self.confidence = None, 0.0
        self.view = TaskView(coverage=self.cells(), checks=self.view.checks)

    def summary(self, exam_s: float) -> dict[str, Any]:
        """Coverage summary."""
        data = self.tracker.summary(exam_s)
        data["current"] = None if self.index is None else self.labelset.keys[self.index]
        data["confidence"] = round(self.confidence, 4)
        return data

    def to_dict(self) -> dict[str, Any]:
        """Checkpoint of the tracker."""
        return self.tracker.to_dict()

    def restore(self, data: dict[str, Any]) -> None:
        """Restore the tracker (raises ValueError when the label set differs)."""
        self.tracker.restore(data)


class HemorrhoidTask(Task):
    """``hemorrhoid``: A (normal/hemorrhoid) then, while A is positive, B (LDRf grade)."""

    kind = "hemorrhoid"

    def __init__(
        self, config: HemorrhoidTaskConfig, manifest_a: ModelManifest, manifest_b: ModelManifest | None
    ) -> None:
        models = {"a": config.model_a}
        if config.model_b is not None:
            models["b"] = config.model_b
        super().__init__(config.name, models)
        self.roles = ("a", "b") if manifest_b is not None else ("a",)
        self.labels_a = manifest_a.labelset
        self.labels_b = manifest_b.labelset if manifest_b is not None else None
        self.positive_index = self.labels_a.index_of("hemorrhoid")
        self.smoother_a = make_smoother(len(self.labels_a), config.smoothing_a)
        self.smoother_b = make_smoother(len(self.labels_b), config.smoothing_b) if self.labels_b else None
        self.a_index: int | None = None
        self.a_conf = 0.0
        self.b_index: int | None = None
        self.b_conf = 0.0
        self.seconds_a: list[float] = []
        self.seconds_b: list[float] = []
        self.max_grade: int | None = None
        self._last_t: float | None = None
        self._last_a: int | None = None
        self._last_b: int | None = None
        self.reset_exam()

    def wants(self, role: str) -> bool:
        """B runs only while A's displayed decision is positive."""
        return role == "a" or (role == "b" and self.smoother_b is not None and self.a_index == self.positive_index)

    def observe(self, role: str, probs: np.ndarray, t: float, frame_index: int) -> None:
        """Smooth A or B; a negative A clears B."""
        if role == "a":
            decision = self.smoother_a.update(probs, t)
            self.a_index, self.a_conf = decision.index, decision.confidence
            if self.a_index != self.positive_index and self.smoother_b is not None:
                self.smoother_b.reset()
                self.b_index, self.b_conf = None, 0.0
        elif role == "b" and self.smoother_b is not None:
            decision = self.smoother_b.update(probs, t)
            self.b_index, self.b_conf = decision.index, decision.confidence
        self.view = TaskView(grade=self.text(), grade_zh=self.text(zh=True) or "", t_media=t, frame_index=frame_index)

    def text(self, zh: bool = False) -> str | None:
        """Overlay text, e.g. ``"Internal hemorrhoid 0.93 · LDRf Rf1 0.81"`` (``zh``: Chinese label names)."""

        def name(labelset: LabelSet, index: int) -> str:
            label = labelset.labels[index]
            return label.name_zh if zh and label.name_zh else label.name

        if self.a_index is None:
            return None
        text = f"{name(self.labels_a, self.a_index)} {self.a_conf:.2f}"
        if self.a_index == self.positive_index and self.labels_b is not None:
            if self.b_index is None:
                text += " · LDRf …"
            else:
                text += f" · LDRf {name(self.labels_b, self.b_index)} {self.b_conf:.2f}"
        return text

    def inside(self) -> bool | None:
        """A confident A decision (either class) means a rectal view: inside."""
        return None if self.a_index is None else True

    def record(self, t: float, exam_s: float) -> None:
        """Time per A state and per grade."""
        if self._last_t is not None and t >= self._last_t:
            dt = min(t - self._last_t, 1.0)
            if self._last_a is not None:
                self.seconds_a[self._last_a] += dt
            if self._last_b is not None:
                self.seconds_b[self._last_b] += dt
        self._last_t, self._last_a, self._last_b = t, self.a_index, self.b_index
        if self.a_index == self.positive_index and self.b_index is not None:
            self.max_grade = self.b_index if self.max_grade is None else max(self.max_grade, self.b_index)

    def pause(self) -> None:
        """Stop crediting time."""
        self._last_t = None

    def reset_exam(self) -> None:
        """Clear per-exam statistics."""
        self.seconds_a = [0.0] * len(self.labels_a)
        self.seconds_b = [0.0] * (len(self.labels_b) if self.labels_b else 0)
        self.max_grade = None
        self._last_t = self._last_a = self._last_b = None

    def clear_view(self) -> None:
        """AI off."""
        self.smoother_a.reset()
        if self.smoother_b is not None:
            self.smoother_b.reset()
        self.a_index = self.b_index = None
        self.a_conf = self.b_conf = 0.0
        self.view = TaskView()

    def summary(self, exam_s: float) -> dict[str, Any]:
        """Time per class and the highest grade seen."""
        data: dict[str, Any] = {
            "current": self.text(),
            "seconds": {k: round(s, 3) for k, s in zip(self.labels_a.keys, self.seconds_a, strict=True)},
        }
        if self.labels_b is not None:
            data["grade_seconds"] = {k: round(s, 3) for k, s in zip(self.labels_b.keys, self.seconds_b, strict=True)}
            data["max_grade"] = None if self.max_grade is None else self.labels_b.keys[self.max_grade]
        return data

    def to_dict(self) -> dict[str, Any]:
        """Checkpoint form."""
        return {"seconds_a": self.seconds_a, "seconds_b": self.seconds_b, "max_grade": self.max_grade}

    def restore(self, data: dict[str, Any]) -> None:
        """Restore statistics (ValueError when shapes differ)."""
        a, b = list(data.get("seconds_a", [])), list(data.get("seconds_b", []))
        if len(a) != len(self.seconds_a) or len(b) != len(self.seconds_b):
            raise ValueError("checkpoint does not match this task's label sets")
        self.seconds_a, self.seconds_b = [float(v) for v in a], [float(v) for v in b]
        grade = data.get("max_grade")
        self.max_grade = None if grade is None else int(grade)


EXPECTED_TASKS = {
    ("egd-coverage", "sites"): ("sites", "classify"),
    ("hemorrhoid", "a"): ("hemorrhoid",),
    ("hemorrhoid", "b"): ("ldrf",),
}


def check_manifest(kind: str, role: str, manifest: ModelManifest, labelset: str | None = None) -> None:
    """Refuse a bundle made for another task (the daemon then stays in passthrough with a banner).

    Raises:
        BundleError: Naming the model, its task and what the daemon's task needs.
    """
    allowed = EXPECTED_TASKS[(kind, role)]
    if manifest.task not in allowed:
        raise BundleError(
            f"model {manifest.name!r} is a {manifest.task!r} model; "
            f"the {kind} task ({role}) needs {' or '.join(allowed)}"
        )
    if labelset is not None and manifest.labelset.name != labelset:
        raise BundleError(
            f"model {manifest.name!r} uses label set {manifest.labelset.tag}; the config expects {labelset!r}"
        )
    if kind == "hemorrhoid" and role == "a" and "hemorrhoid" not in manifest.labelset.keys:
        raise BundleError(f"model {manifest.name!r} has no 'hemorrhoid' class (labels: {manifest.labelset.keys})")


def build_task(config: CoverageTaskConfig | HemorrhoidTaskConfig, manifests: dict[str, ModelManifest]) -> Task:
    """Create a task from its config and the manifests of its models (by role).

    Raises:
        BundleError: A model does not fit the task.
    """
    if isinstance(config, CoverageTaskConfig):
        check_manifest("egd-coverage", "sites", manifests["sites"], config.labelset)
        try:
            return CoverageTask(config, manifests["sites"])
        except Exception as exc:  # unknown keys in required/outside/photo_sites for this label set
            raise BundleError(f"task {config.name!r}: {exc}") from None
    check_manifest("hemorrhoid", "a", manifests["a"])
    if "b" in manifests:
        check_manifest("hemorrhoid", "b", manifests["b"])
    return HemorrhoidTask(config, manifests["a"], manifests.get("b"))


@dataclass
class ExamEvent:
    """Something the daemon acts on after a session call (write a report, log a line)."""

    kind: str
    exam_id: str
    reason: str = ""
    summary: dict[str, Any] = field(default_factory=dict)


class ExamSession:
    """The exam clock and the tasks, behind one lock.

    Args:
        clock: The exam clock.
        driver: Name of the task whose decisions drive auto start/end (``None``: API and no-signal only).
    """

    def __init__(self, clock: ExamClock, driver: str | None = None) -> None:
        self.clock = clock
        self.driver = driver
        self.tasks: dict[str, Task] = {}
        self.lock = threading.RLock()
        self.pending_restore: dict[str, dict[str, Any]] = {}
        self.events: deque[ExamEvent] = deque(maxlen=100)  # recent exam starts/ends, for inspection

    def add_task(self, task: Task) -> None:
        """Register (or replace, after a bundle reload) a task; applies a pending checkpoint to it."""
        with self.lock:
            old = self.tasks.get(task.name)
            if old is not None and type(old) is type(task):
                # A new bundle with another label set starts its exam statistics fresh.
                with contextlib.suppress(ValueError):
                    task.restore(old.to_dict())
            self.tasks[task.name] = task
            data = self.pending_restore.pop(task.name, None)
            if data is not None:
                # A checkpoint of another label set is reported, not forced onto this model.
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    task.restore(data)

    def observe(
        self, task: Task, role: str, probs: np.ndarray, t: float, wall: float, frame_index: int
    ) -> list[ExamEvent]:
        """A result of ``task``'s model ``role`` for the frame captured at ``t``."""
        with self.lock:
            task.observe(role, probs, t, frame_index)
            events: list[ExamEvent] = []
            if role == task.roles[0] and task.name == self.driver:
                inside = task.inside()
                if inside is not None:
                    events += self._clock_event(self.clock.observe(t, wall, inside), t)
            if self.clock.running and role == task.roles[0]:
                task.record(t, self.clock.elapsed(t))
                for key in task.new_observations:
                    events.append(ExamEvent("observed", self.clock.exam_id, key))
            task.new_observations.clear()
            return events

    def photo(self, t: float, source: str) -> bool:
        """Record a photo in every task (only while an exam runs)."""
        with self.lock:
            if not self.clock.running:
                return False
            for task in self.tasks.values():
                task.photo(self.clock.elapsed(t), source)
            return True

    def no_signal(self, t: float, wall: float) -> list[ExamEvent]:
        """The source has no signal: pauses time accounting and may end the exam (extubation)."""
        with self.lock:
            for task in self.tasks.values():
                task.pause()
            return self._clock_event(self.clock.observe(t, wall, False), t)

    def start(self, t: float, wall: float, reason: str = "api") -> list[ExamEvent]:
        """Start an exam (API, foot switch)."""
        with self.lock:
            return self._clock_event("started" if self.clock.start(t, wall, reason) else None, t)

    def end(self, t: float, wall: float, reason: str = "api") -> list[ExamEvent]:
        """End the running exam."""
        with self.lock:
            return self._clock_event("ended" if self.clock.end(t, wall, reason) else None, t)

    def _clock_event(self, what: str | None, t: float) -> list[ExamEvent]:
        if what == "started":
            for task in self.tasks.values():
                task.reset_exam()
            event = ExamEvent("started", self.clock.exam_id, self.clock.start_reason)
        elif what == "ended":
            event = ExamEvent("ended", self.clock.exam_id, self.clock.end_reason, self.summary(t))
        else:
            return []
        self.events.append(event)
        return [event]

    def summary(self, t: float) -> dict[str, Any]:
        """Exam and per-task results (status page, report)."""
        with self.lock:
            exam_s = self.clock.elapsed(t)
            return {
                "exam_id": self.clock.exam_id or None,
                "running": self.clock.running,
                "elapsed_s": round(exam_s, 3),
                "started_wall": self.clock.started_wall,
                "ended_wall": self.clock.ended_wall,
                "start_reason": self.clock.start_reason,
                "end_reason": self.clock.end_reason,
                "tasks": {name: {"kind": task.kind, **task.summary(exam_s)} for name, task in self.tasks.items()},
            }

    def checkpoint(self, t: float) -> dict[str, Any] | None:
        """Checkpoint form of the running exam, or ``None`` when no exam runs."""
        with self.lock:
            if not self.clock.running:
                return None
            tasks = {name: {"kind": task.kind, "state": task.to_dict()} for name, task in self.tasks.items()}
            for name, data in self.pending_restore.items():
                tasks.setdefault(name, {"kind": "unknown", "state": data})
            # The summary lets a report be written from the checkpoint alone (recovery without models).
            return {"clock": self.clock.to_dict(t), "tasks": tasks, "summary": self.summary(t)}

    def resume(self, data: dict[str, Any], t: float) -> None:
        """Continue the exam of a checkpoint; task states are applied as the tasks come up.

        Raises:
            ValueError: The checkpoint is malformed.
        """
        with self.lock:
            clock, tasks = data["clock"], data["tasks"]
            if not isinstance(clock, dict) or not isinstance(tasks, dict):
                raise ValueError("checkpoint needs 'clock' and 'tasks' mappings")
            self.clock.restore(clock, t)
            for name, entry in tasks.items():
                self.pending_restore[name] = dict(entry["state"])
            for name, task in list(self.tasks.items()):
                if name in self.pending_restore:
                    self.add_task(task)


def overlay_fields(views: Sequence[TaskView]) -> dict[str, Any]:
    """Merge task views into :class:`~endoedge.edge.stages.types.OverlayState` fields (first coverage task wins)."""
    fields: dict[str, Any] = {}
    grades = [v.grade for v in views if v.grade]
    for view in views:
        if view.coverage or view.label is not None:
            fields.setdefault("label", view.label)
            fields.setdefault("label_zh", view.label_zh)
            fields.setdefault("confidence", view.confidence)
            fields.setdefault("coverage", view.coverage)
            fields.setdefault("exam_checks", view.checks)
    if grades:
        fields["grade"] = " | ".join(grades)
        fields["grade_zh"] = " | ".join(v.grade_zh or v.grade or "" for v in views if v.grade)
    return fields
