"""The one time source of the pure stages: media time, so a replay gives the same results paced or not.

The stages (smoothing, coverage, exam clock, tasks) see only the times they are given. Live, those are
the capture timestamps (``time.monotonic()`` seconds, stamped by the source), so the exam clock runs with
the procedure. On a replay (``file://``, ``images://``) they are the frames' presentation times from the
container, laid on the monotonic scale at the first frame: a clip decoded faster or slower than real time
(``--as-fast-as-possible``) then still gives a 36-second clip a 36-second exam, with the same dwell
times, observation seconds and smoothing half-lives as when it is played at its frame rate.

The daemon's own figures (added video delay, fps, inference times) keep measuring real time; they never
read this clock.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace

from endoedge.edge.types import Frame

#: Source schemes whose frames carry a presentation time from a file (replays, not live capture).
REPLAY_SCHEMES = ("file", "images")


class MediaClock:
    """Maps each frame to its media time, and "now" to the media time of the newest frame.

    Args:
        replay: Use the frames' presentation times (a replay) instead of their capture times (live).
        fps: Nominal frame rate, for frames without a presentation time.

    Attributes:
        replay: Whether this clock follows presentation times.
    """

    def __init__(self, replay: bool, fps: float = 30.0) -> None:
        self.replay = replay
        self.fps = fps if fps > 0 else 30.0
        self._lock = threading.Lock()
        self._origin: float | None = None  # media time of presentation time 0
        self._last_pts: float | None = None
        self._offset = 0.0  # added to presentation times after the file looped
        self._latest: float | None = None
        self._latest_wall: float | None = None
        self._wall_origin: float | None = None

    @classmethod
    def for_source(cls, uri: str, as_fast_as_possible: bool, fps: float = 30.0) -> MediaClock:
        """The clock for a configured source: presentation times for file and image-folder replays.

        Replays follow presentation times paced or not, so both give the same figures; ``as_fast_as_possible``
        is accepted for symmetry and changes nothing.
        """
        del as_fast_as_possible
        scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
        return cls(replay=scheme in REPLAY_SCHEMES, fps=fps)

    def stamp(self, frame: Frame) -> Frame:
        """Return ``frame`` with its media time set (:attr:`Frame.t_media`), and advance "now" to it."""
        with self._lock:
            t = self._replay_time(frame) if self.replay else frame.t_capture
            if self._latest is None or t >= self._latest:
                self._latest = t
        return replace(frame, t_media=t)

    def _replay_time(self, frame: Frame) -> float:
        pts = frame.pts
        if pts is None:  # no presentation time: one nominal frame after the previous one
            pts = (self._last_pts + 1.0 / self.fps) if self._last_pts is not None else 0.0
        elif self._last_pts is not None and pts + self._offset <= self._last_pts:
            # The file looped (or the decoder restarted): continue one frame after the last time.
            self._offset = self._last_pts + 1.0 / self.fps - pts
        if self._origin is None:
            self._origin = frame.t_capture - pts
            self._wall_origin = time.time() - (time.monotonic() - self._origin)
        t_pts = pts + self._offset
        self._last_pts = t_pts
        return self._origin + t_pts

    def now(self) -> float:
        """Media time now: live, the monotonic clock; on a replay, the newest frame's media time (the
        clock stands still between frames and when the replay stops)."""
        if not self.replay:
            return time.monotonic()
        with self._lock:
            return self._latest if self._latest is not None else time.monotonic()

    def wall(self, t: float) -> float:
        """The wall-clock (epoch) time of media time ``t``: live, when it happened; on a replay, the
        wall time the replay started plus the media time since its first frame."""
        if not self.replay or self._wall_origin is None or self._origin is None:
            return time.time() - (time.monotonic() - t)
        return self._wall_origin + (t - self._origin)
