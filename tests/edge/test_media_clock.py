"""The media clock: the pure stages run on the clip's time, so a replay gives the same results paced or not."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from endoedge.core.clip import ClipTimeline, timeline_path
from endoedge.edge.config import config_from_dict
from endoedge.edge.service.media_clock import MediaClock
from endoedge.edge.types import Frame

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "export" / "bundles" / "gastrovision3-mobilenetv3"
CLIP = ROOT / "edge" / "demo" / "sample-exam.mp4"
#: Clip seconds replayed: the dark start, the exam's automatic start and several shots of two classes.
SECONDS = 14.0


def _frame(index: int, t_capture: float, pts: float | None) -> Frame:
    return Frame(np.zeros((2, 2, 3), np.uint8), index, t_capture, pts)


def test_live_media_time_is_the_capture_time() -> None:
    clock = MediaClock(replay=False)
    assert clock.stamp(_frame(0, 123.25, 99.0)).media_time == 123.25


def test_replay_media_time_follows_presentation_times_not_decoding_speed() -> None:
    clock = MediaClock(replay=True, fps=25.0)
    # Decoded ten times faster than real time: capture times 4 ms apart, presentation times 40 ms apart.
    stamped = [clock.stamp(_frame(i, 1000.0 + 0.004 * i, 0.04 * i)).media_time for i in range(50)]
    assert stamped[0] == pytest.approx(1000.0)
    assert np.allclose(np.diff(stamped), 0.04)
    assert clock.now() == pytest.approx(stamped[-1])
    assert clock.wall(stamped[-1]) - clock.wall(stamped[0]) == pytest.approx(0.04 * 49)


def test_a_looping_replay_keeps_media_time_going_forward() -> None:
    clock = MediaClock(replay=True, fps=25.0)
    times = [
        clock.stamp(_frame(i, 10.0 + i * 0.001, pts)).media_time for i, pts in enumerate([0.0, 0.04, 0.08, 0.0, 0.04])
    ]
    assert np.allclose(np.diff(times), 0.04)


def test_only_file_and_image_replays_use_presentation_times() -> None:
    assert MediaClock.for_source("file:///clip.mp4", as_fast_as_possible=True).replay
    assert MediaClock.for_source("images:///frames", as_fast_as_possible=False).replay
    assert not MediaClock.for_source("v4l2:///dev/video0", as_fast_as_possible=False).replay
    assert not MediaClock.for_source("gst://videotestsrc ! appsink", as_fast_as_possible=False).replay


class _Recorder:
    """Overlay renderer + sink pair that keep the label the overlay showed on every frame, in order."""

    uri = "memory://"

    def __init__(self) -> None:
        from endoedge.edge.stages.overlay import OverlayRenderer

        self.renderer = OverlayRenderer()
        self.state: Any = None
        self.shown: list[str | None] = []

    def render(self, frame: np.ndarray, state: Any, field_roi: Any) -> np.ndarray:
        self.state = state
        return frame

    def write(self, image: np.ndarray, t_capture: float) -> None:
        self.shown.append(self.state.label if self.state is not None and self.state.signal else None)

    def close(self) -> None:
        pass


class _UntilClipTime:
    """Opens the clip at the first read (as a capture card starts when the loop does) and ends it
    (``EOFError``) at a clip time, not after a count of frames (a paced source may drop some)."""

    def __init__(self, open_clip: Any, seconds: float) -> None:
        self._open = open_clip
        self._seconds = seconds
        self.source: Any = None
        self.uri = f"file://{CLIP}"
        self.fps = 25.0

    def read(self, timeout: float = 1.0) -> Frame | None:
        if self.source is None:
            self.source = self._open()
            self.fps = self.source.fps
        frame = self.source.read(timeout)
        if frame is not None and frame.pts is not None and frame.pts >= self._seconds:
            raise EOFError
        return frame

    def close(self) -> None:
        if self.source is not None:
            self.source.close()


def _replay(tmp_path: Path, paced: bool, fps: float) -> tuple[dict[str, Any], list[str | None]]:
    from endoedge.edge.service.daemon import Daemon
    from endoedge.edge.video.sources import open_source

    reports = tmp_path / ("paced" if paced else "unpaced")
    config = config_from_dict(
        {
            "source": {"uri": f"file://{CLIP}", "as_fast_as_possible": not paced},
            "sink": {"uri": "null://"},
            "models": [{"name": "sites", "bundle": str(BUNDLE), "backend": "onnxruntime"}],
            "tasks": [{"type": "egd-coverage", "name": "coverage", "model": "sites", "labelset": "gastrovision3"}],
            "status": {"enabled": False},
            "report": {"dir": str(reports), "png": False},
            "state": {"dir": None},
            "run": {"watchdog": False},
        },
        "test",
    )
    # Paced at half the clip's rate, so that on a loaded 2-core machine the model still keeps up with every
    # frame, as it does at full rate on the box; the media clock reads the container's times either way.
    options = {"fps": fps / 2} if paced else {"as_fast_as_possible": True}
    source = _UntilClipTime(lambda: open_source(f"file://{CLIP}", **options), SECONDS)
    recorder = _Recorder()
    daemon = Daemon(config, source=source, sink=recorder, renderer=recorder)
    try:
        assert daemon.run() == 0
    finally:
        source.close()
    stats = daemon.stats()
    assert stats["workers"]["coverage"]["state"] == "ok"
    (report_file,) = reports.glob("*/report.json")
    return json.loads(report_file.read_text()), recorder.shown


def _sequence(shown: list[str | None]) -> list[str]:
    """The sites the overlay displayed, in order (repeats and blank moments collapsed)."""
    out: list[str] = []
    for label in shown:
        if label is not None and (not out or out[-1] != label):
            out.append(label)
    return out


@pytest.mark.skipif(not (BUNDLE / "manifest.json").is_file() or not CLIP.is_file(), reason="no sample clip or bundle")
def test_paced_and_unpaced_replays_of_the_sample_clip_give_the_same_report(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    fps = ClipTimeline.load(timeline_path(CLIP)).fps
    frame_s = 1.0 / fps + 1e-6  # "within a frame's duration", inclusive (reports round to 0.01 s)
    paced, paced_shown = _replay(tmp_path, paced=True, fps=fps)
    unpaced, unpaced_shown = _replay(tmp_path, paced=False, fps=fps)
    assert paced["exam"]["duration_s"] == pytest.approx(unpaced["exam"]["duration_s"], abs=frame_s)
    assert 0 < unpaced["exam"]["duration_s"] <= SECONDS  # clip time, not the (shorter) time it took
    for key in ("observed_at_s", "seconds"):
        for site in paced["tasks"]["coverage"]["sites"]:
            assert site[key] is None or site[key] <= SECONDS
    assert paced["exam"]["start_reason"] == unpaced["exam"]["start_reason"]
    sites_paced = {s["key"]: s for s in paced["tasks"]["coverage"]["sites"]}
    sites_unpaced = {s["key"]: s for s in unpaced["tasks"]["coverage"]["sites"]}
    assert sites_paced.keys() == sites_unpaced.keys()
    for key, site in sites_paced.items():
        assert site["observed"] == sites_unpaced[key]["observed"], key
        for figure in ("seconds", "observed_at_s"):
            assert site[figure] == pytest.approx(sites_unpaced[key][figure], abs=frame_s), (key, figure)
    assert _sequence(paced_shown) == _sequence(unpaced_shown)
    assert _sequence(unpaced_shown)  # the overlay showed sites at all
