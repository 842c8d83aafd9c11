"""Video sinks that need no GStreamer: null and OpenCV recordings (round trips through real files)."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from endoedge.core.errors import ConfigError
from endoedge.edge.types import Sink
from endoedge.edge.video.sinks import (
    SINKS,
    NullSink,
    SinkError,
    VideoFileSink,
    file_tail,
    hdmi_tail,
    open_sink,
    window_tail,
)

SIZE = (320, 240)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.fixture(scope="module")
def frames(sample_images: list[Path]) -> list[np.ndarray]:
    return [cv2.resize(cv2.imread(str(p)), SIZE, interpolation=cv2.INTER_AREA) for p in sample_images]


def _read_all(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, image = cap.read()
        if not ok:
            break
        out.append(image)
    cap.release()
    return out


def test_unknown_scheme_and_options():
    with pytest.raises(ConfigError) as info:
        open_sink("rtmp://server/live", 320, 240, 30)
    for scheme in SINKS:
        assert f"{scheme}://" in str(info.value)
    with pytest.raises(ConfigError, match=r"unknown option 'keep'.*valid: keep_last, record_delays"):
        open_sink("null://?keep=1", 320, 240, 30)
    with pytest.raises(ConfigError, match="sink size must be positive"):
        open_sink("null://", 0, 240, 30)
    with pytest.raises(ConfigError, match="sink fps must be positive"):
        open_sink("null://", 320, 240, 0)


def test_null_sink_counts_and_records_delays(frames):
    sink = open_sink("null://?keep_last=1&record_delays=true", *SIZE, 30)
    assert isinstance(sink, NullSink) and isinstance(sink, Sink)
    t0 = time.monotonic()
    for i, frame in enumerate(frames):
        sink.write(frame, t0 + i * 0.001)
    assert sink.frames == len(frames)
    assert sink.last_image is not None and np.array_equal(sink.last_image, frames[-1])
    assert sink.last_image is not frames[-1]
    assert len(sink.delays) == len(frames) and all(d > -1 for d in sink.delays)
    sink.close()
    with pytest.raises(SinkError, match="closed"):
        sink.write(frames[0], t0)


@pytest.mark.parametrize(("suffix", "codec", "min_psnr"), [(".mp4", "mp4v", 24), (".avi", "MJPG", 28)])
def test_file_sink_round_trip(tmp_path: Path, frames, suffix, codec, min_psnr):
    target = tmp_path / f"exam{suffix}"
    sink = open_sink(f"file://{target}", *SIZE, 30)
    assert isinstance(sink, VideoFileSink) and sink.codec == codec
    for frame in frames:
        sink.write(frame, time.monotonic())
    assert not target.exists(), "the recording must appear only when complete"
    sink.close()
    assert target.is_file() and not list(tmp_path.glob(".*partial*"))
    back = _read_all(target)
    assert len(back) == len(frames) == sink.written
    for got, sent in zip(back, frames, strict=True):
        assert _psnr(got, sent) > min_psnr
    # Frames out of order would score far lower: the check can fail.
    assert _psnr(back[0], frames[5]) < min_psnr


def test_file_sink_resizes_other_frame_sizes(tmp_path: Path, frames):
    target = tmp_path / "small.avi"
    sink = open_sink(f"file://{target}", 160, 120, 30)
    for frame in frames[:3]:
        sink.write(frame, time.monotonic())
    sink.close()
    assert sink.resized == 3
    back = _read_all(target)
    assert back[0].shape == (120, 160, 3)
    assert _psnr(back[0], cv2.resize(frames[0], (160, 120), interpolation=cv2.INTER_LINEAR)) > 28


def test_file_sink_never_blocks_the_caller_and_counts_drops(tmp_path: Path):
    """A writer that cannot keep up drops frames (counted) instead of holding up ``write``."""
    target = tmp_path / "fast.mp4"
    sink = open_sink(f"file://{target}?queue_frames=1", 1920, 1080, 60)
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 255, (1080, 1920, 3), dtype=np.uint8)  # slow to encode
    for _ in range(20):
        sink.write(noisy, time.monotonic())
    assert isinstance(sink, VideoFileSink)
    sink.close()
    assert sink.dropped > 0
    assert sink.frames + sink.dropped == 20
    assert len(_read_all(target)) == sink.written == sink.frames


def test_file_sink_errors_name_the_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="cannot choose a codec for '.xyz'"):
        open_sink(f"file://{tmp_path / 'a.xyz'}", *SIZE, 30)
    with pytest.raises(SinkError, match="folder of the recording does not exist"):
        open_sink(f"file://{tmp_path / 'missing' / 'a.mp4'}", *SIZE, 30)
    existing = tmp_path / "keep.mp4"
    existing.write_bytes(b"old")
    with pytest.raises(SinkError, match="already exists"):
        open_sink(f"file://{existing}?overwrite=0", *SIZE, 30)
    assert existing.read_bytes() == b"old"
    with pytest.raises(ConfigError, match="names no file"):
        open_sink("file://", *SIZE, 30)
    with pytest.raises(ConfigError, match="backend must be opencv or gst"):
        open_sink(f"file://{tmp_path / 'b.mp4'}?backend=vlc", *SIZE, 30)


def test_bad_frames_are_refused(tmp_path: Path):
    sink = open_sink("null://", *SIZE, 30)
    sink.close()
    recorder = open_sink(f"file://{tmp_path / 'x.avi'}", *SIZE, 30)
    with pytest.raises(SinkError, match="expected a uint8 HxWx3 BGR frame"):
        recorder.write(np.zeros((240, 320), np.uint8), 0.0)
    with pytest.raises(SinkError, match="expected a uint8 HxWx3 BGR frame"):
        recorder.write(np.zeros((240, 320, 3), np.float32), 0.0)
    recorder.close()


def test_pipeline_tails():
    desktop = hdmi_tail(jetson=False, connector=42)
    assert desktop.startswith("videoconvert ! videoscale ! kmssink") and "connector-id=42" in desktop
    assert "sync=false" in desktop and "force-modesetting=true" in desktop
    jetson = hdmi_tail(jetson=True)
    assert "nvvidconv ! video/x-raw(memory:NVMM)" in jetson and jetson.rstrip().endswith("nvdrmvideosink sync=false")
    assert "conn_id=1" in hdmi_tail(jetson=True, connector=1)
    assert (
        window_tail("ximagesink", ":99") == "videoconvert ! ximagesink sync=false display=:99 force-aspect-ratio=true"
    )
    assert window_tail("autovideosink") == "videoconvert ! autovideosink sync=false"
    with pytest.raises(ConfigError, match="element must be one of"):
        window_tail("fbdevsink")
    assert "jpegenc" in file_tail(Path("a.avi")) and "avimux" in file_tail(Path("a.avi"))
    assert "matroskamux" in file_tail(Path("a.mkv"))
    assert "x264enc" in file_tail(Path("a.mp4"))
    with pytest.raises(ConfigError, match="writes .mp4, .avi, .mkv or .webm"):
        file_tail(Path("a.gif"))


def test_blocking_file_sink_records_every_frame_of_an_offline_replay(tmp_path: Path):
    target = tmp_path / "all.avi"
    sink = open_sink(f"file://{target}?queue_frames=1&block=1", 640, 360, 30)
    rng = np.random.default_rng(1)
    noisy = rng.integers(0, 255, (360, 640, 3), dtype=np.uint8)
    for _ in range(20):
        sink.write(noisy, time.monotonic())
    sink.close()
    assert isinstance(sink, VideoFileSink)
    assert sink.dropped == 0 and sink.written == 20
    assert len(_read_all(target)) == 20
