from __future__ import annotations

import itertools

import numpy as np
import pytest

from endoedge.edge.stages.smoothing import DwellGate, EmaFilter, HmmFilter, Smoother


def one_hot(i: int, n: int = 4, p: float = 0.9) -> np.ndarray:
    v = np.full(n, (1 - p) / (n - 1))
    v[i] = p
    return v


def test_ema_half_life_is_in_seconds_not_steps():
    ema = EmaFilter(2, half_life_s=1.0)
    ema.update(np.array([1.0, 0.0]), 0.0)
    # One second later the old value has half the weight, whether it took 1 or 10 steps.
    single = ema.update(np.array([0.0, 1.0]), 1.0)
    assert single == pytest.approx([0.5, 0.5])
    ema2 = EmaFilter(2, half_life_s=1.0)
    ema2.update(np.array([1.0, 0.0]), 0.0)
    for k in range(1, 11):
        many = ema2.update(np.array([0.0, 1.0]), k / 10)
    assert many == pytest.approx([0.5, 0.5])


def test_ema_restarts_after_a_gap():
    ema = EmaFilter(2, half_life_s=1.0, max_gap_s=2.0)
    ema.update(np.array([1.0, 0.0]), 0.0)
    assert ema.update(np.array([0.0, 1.0]), 5.0) == pytest.approx([0.0, 1.0])


def test_hmm_ignores_a_single_outlier_frame_but_follows_a_real_change():
    hmm = HmmFilter(4, switch_per_s=0.2)
    t = 0.0
    for _ in range(20):
        post = hmm.update(one_hot(0), t)
        t += 1 / 30
    assert post.argmax() == 0
    outlier = hmm.update(one_hot(2, p=0.95), t)
    assert outlier.argmax() == 0  # one frame of evidence is not enough to leave a sticky state
    for _ in range(15):
        t += 1 / 30
        post = hmm.update(one_hot(2), t)
    assert post.argmax() == 2
    assert post.sum() == pytest.approx(1.0)


def test_hmm_transition_rows_sum_to_one_and_get_stickier_for_short_steps():
    hmm = HmmFilter(5, switch_per_s=0.5)
    short, long = hmm.transition(0.01), hmm.transition(1.0)
    assert np.allclose(short.sum(1), 1) and np.allclose(long.sum(1), 1)
    assert short[0, 0] > long[0, 0] == pytest.approx(0.5)


def test_filters_reject_bad_vectors():
    with pytest.raises(ValueError, match="expected 3 probabilities"):
        HmmFilter(3).update(np.ones(4) / 4, 0.0)
    with pytest.raises(ValueError, match="NaN"):
        EmaFilter(2).update(np.array([np.nan, 1.0]), 0.0)


def test_dwell_gate_needs_threshold_and_dwell_time_before_switching():
    gate = DwellGate(threshold=0.6, min_dwell_s=0.5, min_dwell_frames=2, clear_after_s=1.0)
    assert gate.update(np.array([0.9, 0.1]), 0.0).index is None  # candidate, not yet dwelt
    assert gate.update(np.array([0.9, 0.1]), 0.3).index is None
    shown = gate.update(np.array([0.9, 0.1]), 0.6)
    assert shown.index == 0 and shown.changed and shown.confidence == pytest.approx(0.9)
    # A short burst of class 1 does not switch the display.
    assert gate.update(np.array([0.2, 0.8]), 0.7).index == 0
    assert gate.update(np.array([0.9, 0.1]), 0.8).index == 0
    # Unconfident frames keep the last display until clear_after_s.
    assert gate.update(np.array([0.5, 0.5]), 1.0).index == 0
    assert gate.update(np.array([0.5, 0.5]), 1.9).index is None


def test_smoother_reduces_flicker_on_a_noisy_sequence():
    rng = np.random.default_rng(0)
    truth = np.repeat([0, 1, 2, 1], 60)  # four 2-second segments at 30 fps
    raw_switches = 0
    smoother = Smoother(4, method="hmm", threshold=0.5, min_dwell_s=0.2)
    shown = []
    previous_raw = None
    for k, cls in enumerate(truth):
        noisy = one_hot(int(cls), p=0.45) + rng.uniform(0, 0.6, 4)
        noisy /= noisy.sum()
        raw = int(noisy.argmax())
        raw_switches += previous_raw is not None and raw != previous_raw
        previous_raw = raw
        shown.append(smoother.update(noisy, k / 30).index)
    displayed = [s for s in shown if s is not None]
    switches = sum(a != b for a, b in itertools.pairwise(displayed))
    assert raw_switches > 60  # the raw argmax flickers
    assert switches <= 4  # the smoothed display changes only at the real transitions
    late = [shown[i] for i in range(len(truth)) if i % 60 > 40]
    assert (
        np.mean([s == c for s, c in zip(late, [truth[i] for i in range(len(truth)) if i % 60 > 40], strict=True)]) > 0.9
    )


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="unknown smoothing method 'kalman'"):
        Smoother(3, method="kalman")
