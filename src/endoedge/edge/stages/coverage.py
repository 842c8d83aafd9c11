"""Exam state: the exam clock (intubation → extubation) and the coverage tracker over required sites.

Pure stages with times passed in by the caller (``time.monotonic()`` seconds):

* :class:`ExamClock` — starts when the scope is in the body (a confident site after ``start_after_s``)
  or through the API; ends after ``end_after_s`` of "outside the body" or no-signal frames, or through
  the API. Its elapsed time survives a daemon restart through :meth:`ExamClock.to_dict`.
* :class:`CoverageTracker` — per required site: confident frames, seconds, when it counted as observed
  (after ``observe_frames`` confident results *and* ``observe_s`` seconds), photo documentation;
  blind spots; quality checks in the spirit of the ESGE upper-GI performance measures (inspection time
  of at least 7 minutes, photo-documented landmarks, complete coverage).
* :class:`FreezeDetector` — the processor's freeze (the endoscopist pressing "capture") seen as an
  unchanged field, so photo documentation is recorded without a foot-switch integration.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from endoedge.core.labels import LabelSet
from endoedge.edge.stages.types import ExamCheck


@dataclass
class ExamClock:
    """Exam start/end from observations or API calls.

    Args:
        auto_start: Start when the scope is seen inside the body.
        auto_end: End after a while outside the body or without signal.
        start_after_s: Inside the body this long (continuously) before the exam starts.
        end_after_s: Outside/no signal this long before the exam ends (at the last inside time).
    """

    auto_start: bool = True
    auto_end: bool = True
    start_after_s: float = 1.0
    end_after_s: float = 15.0
    running: bool = False
    exam_id: str = ""
    started_t: float | None = None
    started_wall: float | None = None
    ended_t: float | None = None
    ended_wall: float | None = None
    start_reason: str = ""
    end_reason: str = ""
    offset_s: float = 0.0
    _inside_since: float | None = field(default=None, repr=False)
    _outside_since: float | None = field(default=None, repr=False)
    _last_inside: float | None = field(default=None, repr=False)
    _counter: int = field(default=0, repr=False)

    def start(self, t: float, wall: float, reason: str = "api") -> bool:
        """Start an exam at ``t`` (monotonic) / ``wall`` (epoch). Returns False when one is running."""
        if self.running:
            return False
        self._counter += 1
        self.running = True
        self.exam_id = _exam_id(wall, self._counter)
        self.started_t, self.started_wall = t, wall
        self.ended_t = self.ended_wall = None
        self.start_reason, self.end_reason = reason, ""
        self.offset_s = 0.0
        self._outside_since = None
        self._last_inside = t
        return True

    def end(self, t: float, wall: float, reason: str = "api") -> bool:
        """End the running exam. Returns False when none is running."""
        if not self.running:
            return False
        self.running = False
        self.ended_t, self.ended_wall = t, wall
        self.end_reason = reason
        self._inside_since = None
        return True

    def elapsed(self, t: float) -> float:
        """Seconds of exam so far (or in total after it ended); 0 before any exam."""
        if self.started_t is None:
            return 0.0
        stop = t if self.running or self.ended_t is None else self.ended_t
        return max(0.0, stop - self.started_t) + self.offset_s

    def observe(self, t: float, wall: float, inside: bool) -> str | None:
        """Feed one observation: ``inside`` the body (confident site) or not (outside label, no signal).

        Returns:
            ``"started"`` or ``"ended"`` when this observation started or ended the exam, else ``None``.
        """
        if inside:
            self._outside_since = None
            self._last_inside = t
            if self._inside_since is None:
                self._inside_since = t
            if not self.running and self.auto_start and t - self._inside_since >= self.start_after_s:
                self.start(self._inside_since, wall - (t - self._inside_since), "auto: scope inside the body")
                return "started"
            return None
        self._inside_since = None
        if self._outside_since is None:
            self._outside_since = t
        if self.running and self.auto_end and t - self._outside_since >= self.end_after_s:
            last = self._last_inside if self._last_inside is not None else self._outside_since
            self.end(last, wall - (t - last), "auto: scope outside the body or no signal")
            return "ended"
        return None

    def to_dict(self, t: float) -> dict[str, Any]:
        """Checkpoint form (times as elapsed seconds and wall clock, never monotonic values)."""
        return {
            "exam_id": self.exam_id,
            "running": self.running,
            "elapsed_s": round(self.elapsed(t), 3),
            "started_wall": self.started_wall,
            "start_reason": self.start_reason,
        }

    def restore(self, data: dict[str, Any], t: float) -> None:
        """Continue a checkpointed exam: its elapsed time is carried over as an offset."""
        self.running = bool(data.get("running", True))
        self.exam_id = str(data.get("exam_id", ""))
        self.started_t = t
        self.started_wall = data.get("started_wall")
        self.offset_s = float(data.get("elapsed_s", 0.0))
        self.start_reason = str(data.get("start_reason", "")) + " (resumed after restart)"
        self.ended_t = self.ended_wall = None
        self._last_inside = t


def _exam_id(wall: float, counter: int) -> str:
    import time

    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(wall)) + f"-{counter:03d}"


class CoverageTracker:
    """Which required sites an exam has observed, for how long, and which were photo-documented.

    Args:
        labelset: The model's label set (indices = model outputs).
        required: Keys of the sites a complete exam must observe (default: the label set's required).
        observe_frames: Confident results of a site before it counts as observed.
        observe_s: Seconds a site must be displayed before it counts as observed.
        min_inspection_s: Inspection-time check (ESGE: at least 7 minutes for a diagnostic EGD).
        photo_sites: Keys of the landmarks that must be photo-documented (default: ``required``).
        max_step_s: Longest gap between two results credited to a site (AI pauses are not dwell time).
    """

    def __init__(
        self,
        labelset: LabelSet,
        required: Sequence[str] | None = None,
        observe_frames: int = 3,
        observe_s: float = 0.5,
        min_inspection_s: float = 420.0,
        photo_sites: Sequence[str] | None = None,
        max_step_s: float = 1.0,
    ) -> None:
        self.labelset = labelset
        self.required = [labelset.index_of(k) for k in required] if required is not None else labelset.required_indices
        if not self.required:
            self.required = list(range(len(labelset)))
        self.photo_sites = [labelset.index_of(k) for k in photo_sites] if photo_sites is not None else self.required
        self.observe_frames = max(1, observe_frames)
        self.observe_s = observe_s
        self.min_inspection_s = min_inspection_s
        self.max_step_s = max_step_s
        self.reset()

    def reset(self) -> None:
        """Start a fresh exam."""
        n = len(self.labelset)
        self.frames = np.zeros(n, dtype=np.int64)
        self.seconds = np.zeros(n, dtype=np.float64)
        self.observed_at: list[float | None] = [None] * n
        self.photos: list[int] = [0] * n
        self.photo_log: list[dict[str, Any]] = []
        self._last_t: float | None = None
        self._last_index: int | None = None

    def observe(self, t: float, exam_s: float, index: int | None) -> int | None:
        """Feed the displayed site (``None``: nothing confident) at time ``t``, ``exam_s`` into the exam.

        Returns:
            The site index when it became observed with this result, else ``None``.
        """
        if self._last_t is not None and self._last_index is not None and t >= self._last_t:
            self.seconds[self._last_index] += min(t - self._last_t, self.max_step_s)
        self._last_t, self._last_index = t, index
        if index is None:
            return None
        self.frames[index] += 1
        if (
            self.observed_at[index] is None
            and self.frames[index] >= self.observe_frames
            and self.seconds[index] >= self.observe_s
        ):
            self.observed_at[index] = round(exam_s, 3)
            return index
        return None

    def pause(self) -> None:
        """Stop crediting time to the current site (no signal, AI off)."""
        self._last_t = self._last_index = None

    def photo(self, exam_s: float, index: int | None, source: str = "api") -> None:
        """Record a photo (freeze/capture) taken while ``index`` was displayed."""
        if index is not None:
            self.photos[index] += 1
        self.photo_log.append(
            {"exam_s": round(exam_s, 3), "site": None if index is None else self.labelset.keys[index], "via": source}
        )

    def observed(self, index: int) -> bool:
        """Whether a site counts as observed."""
        return self.observed_at[index] is not None

    def blind_spots(self) -> list[str]:
        """Keys of required sites not observed (yet)."""
        return [self.labelset.keys[i] for i in self.required if self.observed_at[i] is None]

    def checks(self, exam_s: float) -> list[ExamCheck]:
        """The exam quality checks at ``exam_s`` seconds into the exam."""
        seen = sum(1 for i in self.required if self.observed_at[i] is not None)
        photographed = sum(1 for i in self.photo_sites if self.photos[i] > 0)
        minutes = self.min_inspection_s / 60
        return [
            ExamCheck(
                "inspection",
                exam_s >= self.min_inspection_s,
                f"{int(exam_s // 60)}:{int(exam_s % 60):02d}",
                minutes,
            ),
            ExamCheck("sites", seen == len(self.required), f"{seen}/{len(self.required)}"),
            ExamCheck(
                "photos",
                photographed == len(self.photo_sites),
                f"{photographed}/{len(self.photo_sites)}",
            ),
        ]

    def summary(self, exam_s: float) -> dict[str, Any]:
        """Report/status form: per-site data, blind spots, checks."""
        sites = []
        for label in self.labelset.labels:
            i = label.index
            sites.append(
                {
                    "key": label.key,
                    "name": label.name,
                    "name_zh": label.name_zh,
                    "required": i in self.required,
                    "observed": self.observed_at[i] is not None,
                    "observed_at_s": self.observed_at[i],
                    "seconds": round(float(self.seconds[i]), 3),
                    "frames": int(self.frames[i]),
                    "photos": self.photos[i],
                }
            )
        seen = sum(1 for i in self.required if self.observed_at[i] is not None)
        return {
            "labelset": self.labelset.tag,
            "required": len(self.required),
            "observed": seen,
            "fraction": round(seen / len(self.required), 4),
            "blind_spots": self.blind_spots(),
            "checks": [
                # ``minutes`` lets a report word the inspection check in another language.
                {"key": c.key, "name": c.name, "passed": c.passed, "detail": c.detail, "minutes": c.minutes}
                for c in self.checks(exam_s)
            ],
            "sites": sites,
            "photos": list(self.photo_log),
        }

    def to_dict(self) -> dict[str, Any]:
        """Checkpoint form."""
        return {
            "labelset": self.labelset.tag,
            "frames": self.frames.tolist(),
            "seconds": [round(float(s), 4) for s in self.seconds],
            "observed_at": list(self.observed_at),
            "photos": list(self.photos),
            "photo_log": list(self.photo_log),
        }

    def restore(self, data: dict[str, Any]) -> None:
        """Load a checkpoint written by :meth:`to_dict` (ignored when the label set differs).

        Raises:
            ValueError: The checkpoint belongs to another label set or is malformed.
        """
        n = len(self.labelset)
        if data.get("labelset") != self.labelset.tag:
            raise ValueError(f"checkpoint is for label set {data.get('labelset')!r}, not {self.labelset.tag}")
        frames, seconds, observed, photos = (data[k] for k in ("frames", "seconds", "observed_at", "photos"))
        if not all(isinstance(v, list) and len(v) == n for v in (frames, seconds, observed, photos)):
            raise ValueError(f"checkpoint arrays must have {n} entries")
        self.frames = np.asarray(frames, dtype=np.int64)
        self.seconds = np.asarray(seconds, dtype=np.float64)
        self.observed_at = [None if v is None else float(v) for v in observed]
        self.photos = [int(v) for v in photos]
        self.photo_log = list(data.get("photo_log", []))
        self._last_t = self._last_index = None


class FreezeDetector:
    """Detects the processor's freeze: the field unchanged for ``min_s`` seconds (a photo was taken).

    Args:
        min_s: Unchanged for at least this long.
        tolerance: Mean absolute difference (0–255) below which two thumbnails count as the same image.
        size: Thumbnail side used for the comparison.
        min_std: Thumbnails flatter than this (standard deviation, 0–255) are never a freeze.
    """

    def __init__(self, min_s: float = 0.4, tolerance: float = 1.0, size: int = 32, min_std: float = 6.0) -> None:
        self.min_s = min_s
        self.min_std = min_std
        self.tolerance = tolerance
        self.size = size
        self._previous: np.ndarray | None = None
        self._still_since: float | None = None
        self._reported = False

    def update(self, pixels: np.ndarray, t: float) -> bool:
        """Feed prepared pixels of one result; True exactly once per freeze, when it has lasted ``min_s``."""
        import cv2

        image = np.asarray(pixels)
        if image.ndim == 4:
            image = image[0]
        thumb = cv2.resize(image, (self.size, self.size), interpolation=cv2.INTER_AREA).astype(np.float32)
        previous, self._previous = self._previous, thumb
        # A black, white or flat field (scope covered, outside, no light) is not a photo freeze.
        if float(thumb.std()) < self.min_std:
            self._still_since, self._reported = None, False
            return False
        if previous is None or previous.shape != thumb.shape or float(np.abs(thumb - previous).mean()) > self.tolerance:
            self._still_since, self._reported = t, False
            return False
        if self._still_since is None:
            self._still_since = t
        if not self._reported and t - self._still_since >= self.min_s:
            self._reported = True
            return True
        return False
