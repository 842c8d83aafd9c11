"""Figures of the running daemon: duration percentiles and event rates, in real (monotonic) time.

Used by the display loop and the task workers alike; the benchmarks read them through
:meth:`endoedge.edge.service.daemon.Daemon.stats`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np


class LatencyWindow:
    """The last ``size`` samples of a duration (seconds), with percentiles in milliseconds."""

    def __init__(self, size: int = 4096) -> None:
        self._values = np.zeros(size, dtype=np.float64)
        self._size = size
        self.count = 0
        self.last = 0.0

    def add(self, seconds: float) -> None:
        """Record one sample."""
        self._values[self.count % self._size] = seconds
        self.count += 1
        self.last = seconds

    def values(self) -> np.ndarray:
        """The samples held (seconds)."""
        return self._values[: min(self.count, self._size)].copy()

    def values_since(self, first: int) -> np.ndarray | None:
        """The samples recorded from sample number ``first`` on (seconds), or ``None`` when the window
        no longer holds them all."""
        count = self.count
        if first < 0 or first > count or count - first > self._size:
            return None
        return self._values[np.arange(first, count) % self._size].copy()

    def summary(self, percentiles: Sequence[float] = (50, 95, 99), since: int | None = None) -> dict[str, float]:
        """``{"n", "p50", ..., "max", "mean"}`` in milliseconds (empty window → only ``n``).

        Args:
            percentiles: Which percentiles.
            since: Only the samples from this sample number on (see :meth:`values_since`).
        """
        if since is None:
            data, n = self.values(), self.count
        else:
            held = self.values_since(since)
            data = held if held is not None else np.zeros(0)
            n = data.size
        if data.size == 0:
            return {"n": 0}
        out: dict[str, float] = {"n": int(n)}
        for p, v in zip(percentiles, np.percentile(data, percentiles) * 1000.0, strict=True):
            out[f"p{p:g}"] = round(float(v), 3)
        out["max"] = round(float(data.max() * 1000.0), 3)
        out["mean"] = round(float(data.mean() * 1000.0), 3)
        return out


class RateMeter:
    """Events per second over a sliding window."""

    def __init__(self, window_s: float = 2.0) -> None:
        self.window_s = window_s
        self._times: deque[float] = deque()

    def tick(self, t: float) -> None:
        """Record one event at ``t``."""
        self._times.append(t)
        while self._times and t - self._times[0] > self.window_s:
            self._times.popleft()

    def rate(self, now: float | None = None) -> float:
        """Events per second in the window ending ``now``."""
        times = list(self._times)
        if len(times) < 2:
            return 0.0
        now = times[-1] if now is None else now
        if now - times[-1] > self.window_s:
            return 0.0
        span = times[-1] - times[0]
        return (len(times) - 1) / span if span > 0 else 0.0
