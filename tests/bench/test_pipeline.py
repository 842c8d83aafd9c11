"""The pipeline benchmark: the real daemon on replayed 1080p tower frames, and the figures' logic."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from endoedge.bench.pipeline import (
    VIDEO_DELAY_BAR_MS,
    PipelineRun,
    ReplayedFrames,
    SlowedBackend,
    figure_rows,
    run_daemon,
    tower_frames,
)


def _stats(frames_out=600, video_p99=3.0, overlay_p50=40.0, infer_p50=30.0, skipped=5):
    return {
        "frames_in": frames_out,
        "frames_out": frames_out,
        "video_delay_ms": {"n": frames_out, "p50": 1.0, "p95": 2.0, "p99": video_p99},
        "overlay_delay_ms": {"n": 100, "p50": overlay_p50, "p99": overlay_p50 * 1.5},
        "stages_ms": {"overlay": {"p50": 0.5}},
        "workers": {"coverage": {"skipped_frames": skipped, "stages_ms": {"infer": {"p50": infer_p50}}}},
    }


def test_figures_pass_and_fail_against_their_targets():
    good = PipelineRun("ok", 30.0, 20.0, _stats(), {"infer_per_s": 20.0}, 19.5, (1920, 1080), 30.0, 18.0).figures()
    assert good["output_fps_ok"] and good["video_delay_p99_ok"] and good["overlay_delay_ok"]
    assert good["inference_bound"] and good["throughput_share"] == pytest.approx(0.975) and good["throughput_ok"]
    bad = PipelineRun(
        "bad",
        60.0,
        20.0,
        _stats(video_p99=VIDEO_DELAY_BAR_MS + 0.01, overlay_p50=80.0),
        {"infer_per_s": 40.0},
        30.0,
        (1920, 1080),
        50.0,
        18.0,
    ).figures()
    assert not bad["output_fps_ok"] and not bad["video_delay_p99_ok"]
    assert not bad["overlay_delay_ok"]  # 80 ms > 30 ms inference + 16.7 ms frame
    assert bad["throughput_share"] == pytest.approx(0.75) and bad["throughput_ok"] is False
    fast = PipelineRun("fast", 30.0, 20.0, _stats(), {"infer_per_s": 500.0}, 30.0, (1920, 1080), 30.0, 18.0).figures()
    assert not fast["inference_bound"] and fast["throughput_ok"] is None
    rows = figure_rows([good, bad, fast])
    assert rows[0][6] == "yes" and rows[1][6] == "NO" and rows[2][12] == "-"


def test_replayed_frames_are_paced_stamped_and_newest_first():
    frames = [np.full((32, 32, 3), i, dtype=np.uint8) for i in range(3)]
    source = ReplayedFrames(frames, fps=200.0)
    try:
        got = [source.read(timeout=1.0) for _ in range(6)]
    finally:
        source.close()
    assert all(f is not None for f in got)
    indices = [f.index for f in got]
    assert indices == sorted(indices) and len(set(indices)) == 6
    assert all(b.t_capture >= a.t_capture for a, b in itertools.pairwise(got))
    assert all(int(f.image[0, 0, 0]) == f.index % 3 for f in got)


class _Echo:
    name = "echo"
    format = "tflite-fp32"
    manifest = None
    closed = False

    def infer(self, pixels):
        return np.ones((len(pixels), 3), dtype=np.float32) / 3

    def close(self):
        self.closed = True


def test_slowed_backend_keeps_the_answer_and_closes_the_inner_one():
    inner = _Echo()
    slowed = SlowedBackend(inner, 5.0)
    out = slowed.infer(np.zeros((2, 8, 8, 3), dtype=np.uint8))
    assert out.shape == (2, 3) and slowed.describe()["slowed_to_ms"] == 5.0
    slowed.close()
    assert inner.closed


def test_the_real_daemon_runs_on_replayed_1080p_frames(tiny_bundle, sample_images):
    frames = tower_frames(sample_images, count=4)
    assert frames[0].shape == (1080, 1920, 3)
    run = run_daemon(
        tiny_bundle, frames, fps=30.0, seconds=4.0, backend="tflite", threads=1, slow_ms=50.0, raw_seconds=0.5
    )
    figures = run.figures()
    assert figures["frames_out"] > 0 and figures["frame_size"] == "1920x1080"
    assert figures["video_delay_whole_run_ms"]["n"] == figures["frames_out"]
    # The steady-state figures cover the frames from the AI's first results on, not the start-up.
    assert 0 < figures["video_delay_ms"]["n"] < figures["frames_out"]
    assert figures["overlay_delay_ms"].get("n", 0) > 0  # the overlay showed results of inferred frames
    assert figures["raw_infer_per_s"] < 25  # slowed to >= 50 ms per inference
    assert figures["inference_bound"]
    assert set(figures["stages_ms"]) >= {"display.overlay", "display.sink", "worker.preprocess", "worker.infer"}
