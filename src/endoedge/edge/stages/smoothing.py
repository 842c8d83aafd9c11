"""Temporal smoothing of class probabilities: video is not a series of independent stills.

Two filters over a model's per-frame probabilities, both aware of the time between results (inference
runs at whatever rate the model allows, so a fixed per-step constant would behave differently on a
fast and a slow model):

* :class:`EmaFilter` — an exponential moving average with a half-life in seconds.
* :class:`HmmFilter` — an HMM forward filter with a "sticky" transition matrix: the true class stays
  the same from one moment to the next unless the evidence insists, with a switch probability per
  second. The model's softmax output is used as the (scaled) emission likelihood.

On top of either, :class:`DwellGate` decides what is *displayed*: a class is shown only when its
smoothed probability reaches a threshold and it has led for a minimum dwell time, so the label on the
monitor does not flicker between neighbouring sites.

Everything here is pure: numpy in, numpy out, times passed in by the caller.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Floor of emission likelihoods so one overconfident frame can never zero a class for ever.
_EMISSION_FLOOR = 1e-4


def _as_probs(probs: np.ndarray, num_classes: int) -> np.ndarray:
    vector = np.asarray(probs, dtype=np.float64).reshape(-1)
    if vector.shape[0] != num_classes:
        raise ValueError(f"expected {num_classes} probabilities, got {vector.shape[0]}")
    if not np.all(np.isfinite(vector)):
        raise ValueError("probabilities contain NaN or infinity")
    return np.clip(vector, 0.0, 1.0)


class _TimedFilter:
    """State shared by the filters: the last vector, its time, and when a gap restarts the filter."""

    def __init__(self, num_classes: int, max_gap_s: float) -> None:
        if num_classes < 1:
            raise ValueError("num_classes must be >= 1")
        self.num_classes = num_classes
        self.max_gap_s = max_gap_s
        self.state: np.ndarray | None = None
        self._t: float | None = None

    def reset(self) -> None:
        """Forget the history."""
        self.state = None
        self._t = None

    def _elapsed(self, t: float) -> float | None:
        """Seconds since the last update, or ``None`` when the filter must restart (first, gap, clock back)."""
        if self.state is None or self._t is None or t - self._t > self.max_gap_s or t < self._t:
            return None
        return t - self._t


class EmaFilter(_TimedFilter):
    """Exponential moving average of probability vectors with a half-life in seconds.

    Args:
        num_classes: Length of the probability vectors.
        half_life_s: Time after which an old observation's weight has halved.
        max_gap_s: A gap longer than this (no results: AI off, no signal) restarts the filter.
    """

    def __init__(self, num_classes: int, half_life_s: float = 0.3, max_gap_s: float = 2.0) -> None:
        super().__init__(num_classes, max_gap_s)
        if half_life_s <= 0:
            raise ValueError("half_life_s must be > 0")
        self.half_life_s = half_life_s

    def update(self, probs: np.ndarray, t: float) -> np.ndarray:
        """Fold in the probabilities observed at time ``t`` and return the smoothed vector."""
        obs = _as_probs(probs, self.num_classes)
        dt = self._elapsed(t)
        if dt is None or self.state is None:
            self.state = obs.copy()
        else:
            alpha = 1.0 - math.pow(0.5, dt / self.half_life_s)
            self.state = (1.0 - alpha) * self.state + alpha * obs
        self._t = t
        return self.state.copy()


class HmmFilter(_TimedFilter):
    """Forward filter of a hidden Markov model whose hidden state is the true class.

    The transition matrix keeps the current class with probability ``1 - p`` and moves to each other
    class with ``p / (C - 1)``, where ``p = 1 - (1 - switch_per_s) ** dt``. The emission likelihood of
    class ``c`` is the model's probability for ``c`` (floored), i.e. the posterior under a uniform prior.

    Args:
        num_classes: Number of classes.
        switch_per_s: Probability that the true class changes within one second (scope moving on).
        max_gap_s: A gap longer than this restarts the filter from the uniform prior.
    """

    def __init__(self, num_classes: int, switch_per_s: float = 0.3, max_gap_s: float = 2.0) -> None:
        super().__init__(num_classes, max_gap_s)
        if not 0.0 < switch_per_s < 1.0:
            raise ValueError("switch_per_s must be in (0, 1)")
        self.switch_per_s = switch_per_s

    def _leave(self, dt: float) -> float:
        """Probability of leaving the current class within ``dt`` seconds."""
        return 0.0 if self.num_classes == 1 else 1.0 - math.pow(1.0 - self.switch_per_s, max(dt, 0.0))

    def transition(self, dt: float) -> np.ndarray:
        """The ``C×C`` transition matrix for a step of ``dt`` seconds (rows sum to 1)."""
        c = self.num_classes
        if c == 1:
            return np.ones((1, 1))
        leave = self._leave(dt)
        matrix = np.full((c, c), leave / (c - 1))
        np.fill_diagonal(matrix, 1.0 - leave)
        return matrix

    def update(self, probs: np.ndarray, t: float) -> np.ndarray:
        """Fold in the probabilities observed at time ``t`` and return the filtered posterior."""
        obs = np.maximum(_as_probs(probs, self.num_classes), _EMISSION_FLOOR)
        dt = self._elapsed(t)
        if dt is None or self.state is None:
            prior = np.full(self.num_classes, 1.0 / self.num_classes)
        else:
            # Closed form of prior @ transition(dt): keep with 1-leave, spread leave evenly elsewhere.
            leave = self._leave(dt)
            prior = self.state * (1.0 - leave) + (1.0 - self.state) * (leave / max(self.num_classes - 1, 1))
        posterior = prior * obs
        total = posterior.sum()
        self.state = posterior / total if total > 0 else np.full(self.num_classes, 1.0 / self.num_classes)
        self._t = t
        return self.state.copy()


@dataclass(frozen=True)
class Decision:
    """What the gate shows after one update.

    Attributes:
        index: Displayed class, or ``None`` when nothing is confidently shown.
        confidence: Smoothed probability of the displayed class (0 when none).
        candidate: Current leading class (may differ from ``index`` while its dwell is pending).
        changed: True when ``index`` changed in this update.
    """

    index: int | None
    confidence: float
    candidate: int
    changed: bool


class DwellGate:
    """Hysteresis on the smoothed vector: threshold plus minimum dwell before the display changes.

    Args:
        threshold: A class is shown only when its smoothed probability is at least this.
        min_dwell_s: The leading class must lead (and be confident) this long before it is shown.
        min_dwell_frames: ...and for at least this many results (guards slow models against a single
            lucky frame).
        clear_after_s: Without a confident class for this long, the display goes blank.
    """

    def __init__(
        self,
        threshold: float = 0.6,
        min_dwell_s: float = 0.4,
        min_dwell_frames: int = 2,
        clear_after_s: float = 1.0,
    ) -> None:
        self.threshold = threshold
        self.min_dwell_s = min_dwell_s
        self.min_dwell_frames = max(1, min_dwell_frames)
        self.clear_after_s = clear_after_s
        self.reset()

    def reset(self) -> None:
        """Blank the display and forget the pending candidate."""
        self.index: int | None = None
        self._candidate: int | None = None
        self._candidate_since = 0.0
        self._candidate_frames = 0
        self._last_confident: float | None = None

    def update(self, smoothed: np.ndarray, t: float) -> Decision:
        """Decide what to display given the smoothed vector at time ``t``."""
        vector = np.asarray(smoothed, dtype=np.float64).reshape(-1)
        lead = int(np.argmax(vector))
        confident = bool(vector[lead] >= self.threshold)
        before = self.index
        if confident:
            self._last_confident = t
            if lead != self._candidate:
                self._candidate, self._candidate_since, self._candidate_frames = lead, t, 1
            else:
                self._candidate_frames += 1
            dwelt = t - self._candidate_since >= self.min_dwell_s and self._candidate_frames >= self.min_dwell_frames
            if lead != self.index and dwelt:
                self.index = lead
        else:
            self._candidate, self._candidate_frames = None, 0
            if self._last_confident is None or t - self._last_confident >= self.clear_after_s:
                self.index = None
        confidence = float(vector[self.index]) if self.index is not None else 0.0
        return Decision(self.index, confidence, lead, self.index != before)


class Smoother:
    """A filter (EMA or HMM) followed by a :class:`DwellGate`: probabilities in, displayed class out.

    Args:
        num_classes: Number of classes.
        method: ``hmm`` or ``ema``.
        half_life_s: EMA half-life.
        switch_per_s: HMM switch probability per second.
        threshold: Display threshold.
        min_dwell_s: Minimum dwell before the display changes.
        min_dwell_frames: Minimum number of results before the display changes.
        clear_after_s: Blank the display after this long without a confident class.
        max_gap_s: Restart the filter after a gap this long.
    """

    def __init__(
        self,
        num_classes: int,
        method: str = "hmm",
        half_life_s: float = 0.3,
        switch_per_s: float = 0.3,
        threshold: float = 0.6,
        min_dwell_s: float = 0.4,
        min_dwell_frames: int = 2,
        clear_after_s: float = 1.0,
        max_gap_s: float = 2.0,
    ) -> None:
        self.filter: EmaFilter | HmmFilter
        if method == "ema":
            self.filter = EmaFilter(num_classes, half_life_s, max_gap_s)
        elif method == "hmm":
            self.filter = HmmFilter(num_classes, switch_per_s, max_gap_s)
        else:
            raise ValueError(f"unknown smoothing method {method!r} (valid: hmm, ema)")
        self.method = method
        self.gate = DwellGate(threshold, min_dwell_s, min_dwell_frames, clear_after_s)
        self.smoothed: np.ndarray = np.zeros(num_classes)

    def reset(self) -> None:
        """Forget history and blank the display."""
        self.filter.reset()
        self.gate.reset()
        self.smoothed = np.zeros_like(self.smoothed)

    def update(self, probs: np.ndarray, t: float) -> Decision:
        """Smooth the probabilities of time ``t`` and decide what to display."""
        self.smoothed = self.filter.update(probs, t)
        return self.gate.update(self.smoothed, t)
