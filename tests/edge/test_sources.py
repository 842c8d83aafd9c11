"""Video sources on real files: MP4 clips made from the sample images, image folders, error paths."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np
import pytest

from endoedge.core.errors import ConfigError
from endoedge.edge.types import Source
from endoedge.edge.video.sources import (
    SOURCES,
    FfmpegStreamSource,
    ImageFolderSource,
    ReconnectingSource,
    SourceError,
    V4L2Source,
    VideoFileSource,
    open_source,
    split_uri,
    v4l2_gst_pipeline,
    v4l2_settings,
)

CLIP_FPS = 30.0
CLIP_SIZE = (320, 240)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.fixture(scope="module")
def clip_frames(sample_images: list[Path]) -> list[np.ndarray]:
    """Two frames per sample image, resized to the clip size (24 frames)."""
    frames = []
    for path in sample_images:
        image = cv2.resize(cv2.imread(str(path)), CLIP_SIZE, interpolation=cv2.INTER_AREA)
        frames += [image, image]
    return frames


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory, clip_frames: list[np.ndarray]) -> Path:
    """A real MP4 (mp4v) at 30 fps made from the sample images."""
    path = tmp_path_factory.mktemp("clip") / "sample.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), CLIP_FPS, CLIP_SIZE)
    assert writer.isOpened()
    for frame in clip_frames:
        writer.write(frame)
    writer.release()
    return path


def test_unknown_scheme_lists_the_valid_ones():
    with pytest.raises(ConfigError) as info:
        open_source("smb://server/clip.mp4")
    for scheme in SOURCES:
        assert f"{scheme}://" in str(info.value)
    with pytest.raises(ConfigError, match="not a URI"):
        split_uri("clip.mp4")


def test_unknown_option_and_bad_values_are_named(clip: Path):
    with pytest.raises(ConfigError, match=r"unknown option 'loops'.*valid: as_fast_as_possible, fps, loop"):
        open_source(f"file://{clip}?loops=1")
    with pytest.raises(ConfigError, match="option loop: expected a boolean"):
        open_source(f"file://{clip}?loop=maybe")
    with pytest.raises(ConfigError, match="option fps: expected a number"):
        open_source(f"images://{clip.parent}", fps="fast")


def test_query_string_and_keyword_options(clip: Path, clip_frames):
    source = open_source(f"file://{clip}?as_fast_as_possible=1&loop=true")
    assert isinstance(source, VideoFileSource) and source.loop
    assert isinstance(source, Source)
    source.close()
    # Keyword arguments win over the query string.
    source = open_source(f"file://{clip}?loop=1", loop=False, as_fast_as_possible=True)
    assert isinstance(source, VideoFileSource) and not source.loop
    source.close()


def test_file_as_fast_as_possible_delivers_every_frame_then_eof(clip: Path, clip_frames):
    source = open_source(f"file://{clip}", as_fast_as_possible=True)
    assert source.fps == pytest.approx(CLIP_FPS)
    frames = []
    with pytest.raises(EOFError, match="end of source"):
        while True:
            frame = source.read(timeout=1.0)
            assert frame is not None
            frames.append(frame)
    source.close()
    assert [f.index for f in frames] == list(range(len(clip_frames)))
    assert [f.pts for f in frames] == pytest.approx([i / CLIP_FPS for i in range(len(clip_frames))])
    for got, sent in zip(frames, clip_frames, strict=True):
        assert got.image.shape == sent.shape and got.image.dtype == np.uint8
        assert got.image.flags.c_contiguous
        assert _psnr(got.image, sent) > 25  # mp4v is lossy; a wrong frame or channel order scores < 15


def test_file_is_paced_at_its_frame_rate(clip: Path, clip_frames):
    """A fast reader gets every frame, no sooner than the file's clock allows (lower bound only)."""
    source = open_source(f"file://{clip}")
    start = time.monotonic()
    indices = []
    with pytest.raises(EOFError):
        while True:
            frame = source.read(timeout=2.0)
            assert frame is not None
            indices.append(frame.index)
    elapsed = time.monotonic() - start
    source.close()
    assert elapsed >= (len(clip_frames) - 1) / CLIP_FPS * 0.9
    # Under load a frame may be replaced before it is read; every such frame is counted, none repeated.
    assert indices == sorted(set(indices))
    assert len(indices) + source.dropped == len(clip_frames)


def test_slow_reader_gets_the_newest_frame_and_drops_are_counted(clip: Path):
    source = open_source(f"file://{clip}", loop=True)
    first = source.read(timeout=2.0)
    assert first is not None
    time.sleep(0.4)  # ~12 frame periods
    second = source.read(timeout=2.0)
    assert second is not None
    source.close()
    skipped = second.index - first.index - 1
    assert skipped >= 5, "the reader received a stale frame instead of the newest one"
    assert source.dropped >= skipped
    assert source.captured >= second.index + 1


def test_loop_keeps_time_increasing(clip: Path, clip_frames):
    source = open_source(f"file://{clip}", loop=True, as_fast_as_possible=True)
    frames = [source.read() for _ in range(2 * len(clip_frames) + 3)]
    source.close()
    pts = [f.pts for f in frames if f is not None]
    assert len(pts) == len(frames)
    assert (np.diff(np.asarray(pts)) > 0).all()
    assert _psnr(frames[len(clip_frames)].image, clip_frames[0]) > 25  # wrapped to the first frame


def test_read_after_close_is_an_error(clip: Path):
    source = open_source(f"file://{clip}")
    source.close()
    source.close()  # idempotent
    with pytest.raises(SourceError, match="closed"):
        source.read()


def test_missing_and_corrupt_files_say_which(tmp_path: Path):
    with pytest.raises(SourceError, match=r"nope\.mp4: no such video file"):
        open_source(f"file://{tmp_path / 'nope.mp4'}")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 100)
    with pytest.raises(SourceError, match=r"junk\.mp4: cannot decode"):
        open_source(f"file://{junk}")


def test_image_folder_plays_sorted_images_resized_to_one_geometry(sample_dir: Path, sample_images):
    source = open_source(f"images://{sample_dir}", as_fast_as_possible=True)
    assert isinstance(source, ImageFolderSource)
    assert source.paths == sample_images
    frames = [source.read() for _ in sample_images]
    with pytest.raises(EOFError):
        source.read()
    source.close()
    shapes = {f.image.shape for f in frames if f is not None}
    assert len(shapes) == 1
    first = cv2.imread(str(sample_images[0]))
    assert frames[0] is not None and np.array_equal(frames[0].image, first)


def test_image_folder_size_option(sample_dir: Path):
    source = open_source(f"images://{sample_dir}?size=200x100&as_fast_as_possible=1")
    frame = source.read()
    source.close()
    assert frame is not None and frame.image.shape == (100, 200, 3)
    with pytest.raises(ConfigError, match="size must look like"):
        open_source(f"images://{sample_dir}?size=big")


def test_read_times_out_with_none(sample_dir: Path):
    source = open_source(f"images://{sample_dir}?fps=0.5&loop=1")
    assert source.read(timeout=2.0) is not None
    start = time.monotonic()
    assert source.read(timeout=0.1) is None
    assert time.monotonic() - start >= 0.09
    source.close()


def test_unreadable_image_reaches_the_reader_as_source_error(tmp_path: Path, sample_images):
    shutil.copy(sample_images[0], tmp_path / "a.jpg")
    (tmp_path / "b.jpg").write_bytes(b"\xff\xd8 broken jpeg")
    source = open_source(f"images://{tmp_path}?fps=50")
    assert source.read(timeout=2.0) is not None
    with pytest.raises(SourceError, match=r"b\.jpg: cannot decode image"):
        for _ in range(5):
            source.read(timeout=2.0)
    source.close()


def test_empty_or_missing_image_folder(tmp_path: Path):
    with pytest.raises(SourceError, match="no images"):
        open_source(f"images://{tmp_path}")
    with pytest.raises(SourceError, match="no such image folder"):
        open_source(f"images://{tmp_path / 'absent'}")


def test_missing_capture_device_is_a_clear_error():
    with pytest.raises(SourceError, match=r"/dev/video97: no such capture device \(video devices present:"):
        open_source("v4l2:///dev/video97?fourcc=MJPG&width=1920&height=1080&fps=60")
    with pytest.raises(ConfigError, match="fourcc must be one of MJPG, YUYV, NV12"):
        V4L2Source("v4l2:///dev/null", "/dev/null", fourcc="H264")
    with pytest.raises(ConfigError, match="backend must be opencv or gst"):
        open_source("v4l2:///dev/video97?backend=vlc")


def test_a_file_that_is_no_capture_device_is_refused():
    with pytest.raises(SourceError, match="/dev/null: cannot open the capture device"):
        open_source("v4l2:///dev/null")


def test_v4l2_settings_are_ordered_format_size_rate_buffer():
    settings = v4l2_settings("mjpg", 1920, 1080, 60, 1)
    props = [p for p, _ in settings]
    assert props == [
        cv2.CAP_PROP_FOURCC,
        cv2.CAP_PROP_FRAME_WIDTH,
        cv2.CAP_PROP_FRAME_HEIGHT,
        cv2.CAP_PROP_FPS,
        cv2.CAP_PROP_BUFFERSIZE,
    ]
    assert settings[0][1] == cv2.VideoWriter.fourcc(*"MJPG")
    assert settings[-1][1] == 1
    assert [p for p, _ in v4l2_settings(None, 0, 0, 0, 1)] == [cv2.CAP_PROP_BUFFERSIZE]


def test_v4l2_gstreamer_pipelines_per_format():
    mjpg = v4l2_gst_pipeline("/dev/video0", "MJPG", 1920, 1080, 60)
    assert "image/jpeg,width=1920,height=1080,framerate=60/1 ! jpegdec" in mjpg
    assert mjpg.endswith("video/x-raw,format=BGR ! appsink name=endoedge_sink")
    assert "nvv4l2decoder mjpeg=1" in v4l2_gst_pipeline("/dev/video0", "MJPG", 1920, 1080, 60, jetson=True)
    assert "format=YUY2,width=1280" in v4l2_gst_pipeline("/dev/video0", "YUYV", 1280, 720, 30)
    assert "format=NV12" in v4l2_gst_pipeline("/dev/video0", "NV12", 0, 0, 0)
    assert "framerate=30000/1001" in v4l2_gst_pipeline("/dev/video0", None, 0, 0, 29.97)


def test_reconnecting_source_backs_off_then_reconnects(tmp_path: Path, sample_images):
    """A folder that is missing at first: failures back off exponentially (capped), then frames flow."""
    folder = tmp_path / "later"
    uri = f"images://{folder}?fps=50&loop=1"
    source = ReconnectingSource(lambda: open_source(uri), uri, initial_backoff=0.05, max_backoff=0.2, fps=25)
    assert source.read(timeout=0.01) is None
    assert not source.connected and source.failures == 1 and "no such image folder" in (source.last_error or "")
    backoffs = []
    deadline = time.monotonic() + 3
    while source.failures < 5 and time.monotonic() < deadline:
        assert source.read(timeout=0.05) is None
        backoffs.append(source.current_backoff)
    assert source.failures >= 5
    assert backoffs[-1] == pytest.approx(0.2)  # capped
    assert sorted(backoffs) == backoffs  # never shrinks while failing
    folder.mkdir()
    shutil.copy(sample_images[0], folder / "a.jpg")
    frame = None
    deadline = time.monotonic() + 3
    while frame is None and time.monotonic() < deadline:
        frame = source.read(timeout=0.1)
    assert frame is not None and source.connected
    assert source.reconnects == 0  # the first successful open is a connect, not a reconnect
    assert source.current_backoff == pytest.approx(0.05)  # reset after success
    source.close()


def test_reconnecting_source_treats_a_stall_as_a_loss(sample_dir: Path):
    uri = f"images://{sample_dir}?fps=0.2"
    source = ReconnectingSource(lambda: open_source(uri), uri, initial_backoff=0.05, stall_timeout=0.2)
    first = source.read(timeout=2.0)
    assert first is not None and first.index == 0
    frames = []
    deadline = time.monotonic() + 5
    while not frames and time.monotonic() < deadline:
        frame = source.read(timeout=0.1)
        if frame is not None:
            frames.append(frame)
    source.close()
    assert source.failures >= 1 and "no frame for 0.2 s" in (source.last_error or "")
    assert source.reconnects >= 1
    assert frames and frames[0].index > first.index  # indices keep increasing across reconnects


def test_reconnecting_source_passes_end_of_file_through(clip: Path):
    uri = f"file://{clip}?as_fast_as_possible=1"
    source = ReconnectingSource(lambda: open_source(uri), uri)
    with pytest.raises(EOFError):
        for _ in range(1000):
            source.read()
    source.close()


def test_ffmpeg_stream_source_reads_through_its_capture_thread(clip: Path, clip_frames):
    """The FFmpeg network-stream path (rtsp://...?backend=ffmpeg) on a local file FFmpeg can open."""
    source = FfmpegStreamSource(str(clip), open_timeout=5, read_timeout=5)
    frames = []
    with pytest.raises((SourceError, EOFError)):  # a stream that ends is a lost stream
        for _ in range(len(clip_frames) + 5):
            frame = source.read(timeout=5.0)
            if frame is not None:
                frames.append(frame)
    source.close()
    assert frames and frames[0].image.shape == clip_frames[0].shape
    assert len(frames) + source.dropped == len(clip_frames)
    assert _psnr(frames[0].image, clip_frames[0]) > 25


def test_rtsp_through_ffmpeg_to_a_closed_port_fails_clearly():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SourceError, match=rf"rtsp://127.0.0.1:{port}/cam: cannot open the stream"):
        open_source(f"rtsp://127.0.0.1:{port}/cam?backend=ffmpeg&start_timeout=3")


def test_reconnecting_source_does_not_retry_configuration_errors(sample_dir: Path):
    uri = f"images://{sample_dir}?speed=2"
    source = ReconnectingSource(lambda: open_source(uri), uri)
    with pytest.raises(ConfigError, match="unknown option 'speed'"):
        source.read(timeout=0.1)
    assert source.failures == 0


class _FakeCaptureCard:
    """Stands in for cv2.VideoCapture on a V4L2 capture card (none exists on this machine).

    It negotiates like a UVC grabber that only offers 1280x720 MJPG at 30 fps, serves ``good`` frames
    and then fails every read, as a card does when its HDMI cable is pulled.
    """

    instances: ClassVar[list[_FakeCaptureCard]] = []

    def __init__(self, device: str, api: int) -> None:
        assert api == cv2.CAP_V4L2
        self.props: dict[int, float] = {
            cv2.CAP_PROP_FOURCC: float(cv2.VideoWriter.fourcc(*"YUYV")),
            cv2.CAP_PROP_FRAME_WIDTH: 640.0,
            cv2.CAP_PROP_FRAME_HEIGHT: 480.0,
            cv2.CAP_PROP_FPS: 30.0,
        }
        self.set_calls: list[tuple[int, float]] = []
        self.reads = 0
        self.good = 20
        self.released = False
        _FakeCaptureCard.instances.append(self)

    def isOpened(self) -> bool:  # OpenCV's method name
        return True

    def set(self, prop: int, value: float) -> bool:
        self.set_calls.append((prop, value))
        if prop == cv2.CAP_PROP_FOURCC:
            self.props[prop] = float(cv2.VideoWriter.fourcc(*"MJPG"))
        elif prop == cv2.CAP_PROP_FRAME_WIDTH:
            self.props[prop] = 1280.0
        elif prop == cv2.CAP_PROP_FRAME_HEIGHT:
            self.props[prop] = 720.0
        elif prop == cv2.CAP_PROP_FPS:
            self.props[prop] = 30.0
        return True

    def get(self, prop: int) -> float:
        return self.props.get(prop, 0.0)

    def grab(self) -> bool:
        self.reads += 1
        time.sleep(1 / 120)
        if self.reads > self.good:
            return False
        # The driver stamped the buffer 15 ms ago (CLOCK_MONOTONIC, in ms as OpenCV reports it).
        self.props[cv2.CAP_PROP_POS_MSEC] = (time.monotonic() - 0.015) * 1000.0
        return True

    def retrieve(self) -> tuple[bool, np.ndarray | None]:
        self.retrieved_at = time.monotonic()
        return True, np.full((720, 1280, 3), self.reads % 256, np.uint8)

    def release(self) -> None:
        self.released = True


def test_v4l2_source_negotiates_captures_and_reports_a_pulled_cable(monkeypatch, tmp_path: Path, caplog):
    import endoedge.edge.video.sources as sources_module

    device = tmp_path / "video0"
    device.touch()
    monkeypatch.setattr(sources_module.cv2, "VideoCapture", _FakeCaptureCard)
    source = open_source(f"v4l2://{device}?fourcc=MJPG&width=1920&height=1080&fps=60")
    card = _FakeCaptureCard.instances[-1]
    expected = [p for p, _ in v4l2_settings("MJPG", 1920, 1080, 60, 1)] + [cv2.CAP_PROP_READ_TIMEOUT_MSEC]
    assert [p for p, _ in card.set_calls] == expected
    assert isinstance(source, V4L2Source)
    assert source.negotiated.fourcc == "MJPG" and (source.negotiated.width, source.negotiated.height) == (1280, 720)
    assert "asked width=1920, the device gave 1280" in caplog.text
    assert source.fps == 30.0
    frames = []
    with pytest.raises(SourceError, match=r"video0: the capture device stopped delivering frames"):
        for _ in range(100):
            frame = source.read(timeout=2.0)
            if frame is not None:
                frames.append(frame)
    source.close()
    assert card.released
    assert frames and frames[0].image.shape == (720, 1280, 3)
    assert len(frames) + source.dropped == card.good
    # The capture time is the driver's buffer stamp, taken before decoding, not the time of the read.
    assert frames[-1].t_capture <= card.retrieved_at - 0.014


def test_driver_timestamps_on_another_clock_are_not_trusted():
    from endoedge.edge.video.sources import driver_timestamp

    assert driver_timestamp(99_000.0, 100.0) == pytest.approx(99.0)
    assert driver_timestamp(0.0, 100.0) == 100.0  # no stamp
    assert driver_timestamp(1.7e12, 100.0) == 100.0  # wall-clock epoch stamp
    assert driver_timestamp(101_000.0, 100.0) == 100.0  # from the future
