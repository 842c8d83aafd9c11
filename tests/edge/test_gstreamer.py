"""Real GStreamer pipelines: gst:// and rtsp:// sources, appsrc sinks, a window under Xvfb, lost streams."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from _helpers import GST_SKIP_REASON, private_xvfb
from endoedge.core.errors import EndoedgeError
from endoedge.edge.video.gst import gst_available
from endoedge.edge.video.sinks import GstSink, SinkError, open_sink
from endoedge.edge.video.sources import GstSource, ReconnectingSource, SourceError, open_source

pytestmark = [
    pytest.mark.gstreamer,
    pytest.mark.skipif(
        not gst_available(),
        reason=GST_SKIP_REASON,
    ),
]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def odd_png(sample_images: list[Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A real image with an odd width (GStreamer pads its BGR rows to 4 bytes)."""
    image = cv2.resize(cv2.imread(str(sample_images[3])), (321, 237), interpolation=cv2.INTER_AREA)
    path = tmp_path_factory.mktemp("png") / "odd.png"
    cv2.imwrite(str(path), image)
    return path, image


@pytest.fixture(scope="module")
def mjpeg_clip(sample_images: list[Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    path = tmp_path_factory.mktemp("clip") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 30.0, (320, 240))
    for p in sample_images:
        writer.write(cv2.resize(cv2.imread(str(p)), (320, 240)))
    writer.release()
    return path, len(sample_images)


def test_gst_source_delivers_exact_bgr_pixels_of_a_real_image(odd_png):
    path, image = odd_png
    source = open_source(f"gst://filesrc location={path} ! pngdec ! imagefreeze ! videoconvert ! appsink")
    frame = source.read(timeout=5.0)
    source.close()
    assert frame is not None
    assert frame.image.shape == image.shape and frame.image.flags.c_contiguous and frame.image.flags.writeable
    assert np.array_equal(frame.image, image), "row stride or channel order is wrong"


def test_gst_source_appends_an_appsink_and_reads_red_as_bgr():
    source = open_source("gst://videotestsrc pattern=red is-live=true ! video/x-raw,width=64,height=48,framerate=30/1")
    frame = source.read(timeout=5.0)
    assert frame is not None and frame.image.shape == (48, 64, 3)
    assert (frame.image[..., 2] > 240).all() and (frame.image[..., :2] < 15).all()
    assert source.fps == pytest.approx(30.0)
    source.close()


def test_gst_source_keeps_only_the_newest_frame_and_counts_drops():
    source = open_source("gst://videotestsrc is-live=true ! video/x-raw,width=160,height=120,framerate=30/1 ! appsink")
    assert isinstance(source, GstSource)
    first = source.read(timeout=5.0)
    time.sleep(0.5)
    second = source.read(timeout=5.0)
    source.close()
    assert first is not None and second is not None
    assert second.index - first.index >= 5
    assert source.dropped >= second.index - first.index - 1
    assert second.pts is not None and first.pts is not None and second.pts - first.pts >= 0.3


def test_capture_time_is_when_the_frame_arrived_not_when_it_was_read():
    source = open_source("gst://videotestsrc is-live=true ! video/x-raw,width=32,height=32,framerate=4/1 ! appsink")
    assert source.read(timeout=5.0) is not None
    time.sleep(0.6)  # more than one frame period: a frame is waiting in the appsink
    called = time.monotonic()
    frame = source.read(timeout=5.0)
    source.close()
    assert frame is not None and frame.t_capture < called


def test_capture_time_includes_the_time_spent_inside_the_pipeline():
    """A 100 ms stage between the live source and the appsink shows up in now - t_capture."""
    source = open_source(
        "gst://videotestsrc is-live=true ! video/x-raw,width=64,height=48,framerate=5/1 "
        "! identity sleep-time=100000 ! videoconvert ! appsink"
    )
    delays = []
    for _ in range(4):
        frame = source.read(timeout=5.0)
        assert frame is not None
        delays.append(time.monotonic() - frame.t_capture)
    source.close()
    assert min(delays) >= 0.095


def test_gst_read_times_out_with_none():
    source = open_source("gst://videotestsrc is-live=true ! video/x-raw,width=32,height=32,framerate=1/1 ! appsink")
    assert source.read(timeout=5.0) is not None
    assert source.read(timeout=0.1) is None
    source.close()


def test_bad_pipelines_give_one_line_errors():
    with pytest.raises(SourceError, match='cannot build GStreamer pipeline .*no element "nosuchelement"'):
        open_source("gst://nosuchelement ! appsink")
    with pytest.raises(SourceError, match="exactly one appsink, found 2"):
        open_source("gst://videotestsrc ! tee name=t ! queue ! appsink t. ! queue ! appsink")
    source = open_source("gst://videotestsrc ! video/x-raw,format=I420 ! appsink caps=video/x-raw,format=I420")
    with pytest.raises(SourceError, match="receives 'I420' frames; put 'videoconvert !' before it"):
        source.read(timeout=5.0)
    source.close()


def test_missing_device_through_gstreamer_is_a_clear_error():
    with pytest.raises(SourceError) as info:
        source = open_source("gst://v4l2src device=/dev/video97 ! videoconvert ! appsink")
        source.read(timeout=5.0)
    assert "v4l2src" in str(info.value) and "/dev/video97" in str(info.value)
    with pytest.raises(SourceError, match="no such capture device"):
        open_source("v4l2:///dev/video97?backend=gst&fourcc=MJPG&width=1280&height=720&fps=30")


def test_file_pipeline_ends_as_eof_when_finite_and_as_a_lost_stream_otherwise(mjpeg_clip):
    path, count = mjpeg_clip
    pipeline = f"filesrc location={path} ! avidemux ! jpegdec ! videoconvert ! appsink"
    finite = open_source(f"gst://{pipeline}", finite=True, sync=True)
    frames = []
    with pytest.raises(EOFError):
        for _ in range(count + 5):
            frame = finite.read(timeout=5.0)
            if frame is not None:
                frames.append(frame)
    finite.close()
    assert 1 <= len(frames) <= count and frames[0].image.shape == (240, 320, 3)
    live = open_source(f"gst://{pipeline}")
    with pytest.raises(SourceError, match="the stream ended"):
        for _ in range(count + 5):
            live.read(timeout=5.0)
    live.close()


def test_rtsp_to_a_closed_port_fails_clearly():
    port = _free_port()
    with pytest.raises(SourceError) as info:
        source = open_source(f"rtsp://127.0.0.1:{port}/stream?start_timeout=3")
        for _ in range(30):
            source.read(timeout=0.5)
    assert f"rtsp://127.0.0.1:{port}/stream" in str(info.value)


def _tcp_camera(port: int) -> subprocess.Popen[bytes]:
    """A separate process serving a live MJPEG stream over TCP, standing in for a network camera."""
    launch = shutil.which("gst-launch-1.0")
    assert launch, "gst-launch-1.0 missing"
    return subprocess.Popen(
        [
            launch,
            "-q",
            "videotestsrc",
            "is-live=true",
            "!",
            "video/x-raw,width=160,height=120,framerate=30/1",
            "!",
            "jpegenc",
            "!",
            "multipartmux",
            "!",
            "tcpserversink",
            "host=127.0.0.1",
            f"port={port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def test_killed_camera_process_is_reported_and_reconnected(tmp_path: Path):
    port = _free_port()
    uri = f"gst://tcpclientsrc host=127.0.0.1 port={port} ! multipartdemux ! jpegdec ! videoconvert ! appsink"
    camera = _tcp_camera(port)
    try:
        source = ReconnectingSource(
            lambda: open_source(uri), uri, initial_backoff=0.1, max_backoff=0.5, stall_timeout=2
        )
        frame = None
        deadline = time.monotonic() + 15
        while frame is None and time.monotonic() < deadline:
            frame = source.read(timeout=0.2)
        assert frame is not None and frame.image.shape == (120, 160, 3)
        _stop(camera)
        # The loss shows as None reads (the daemon's "no signal"), never as an exception.
        deadline = time.monotonic() + 15
        while source.connected and time.monotonic() < deadline:
            assert source.read(timeout=0.2) is None or source.connected
        assert not source.connected and source.failures >= 1
        assert source.last_error
        camera = _tcp_camera(port)
        frame = None
        deadline = time.monotonic() + 20
        while frame is None and time.monotonic() < deadline:
            frame = source.read(timeout=0.2)
        assert frame is not None and source.reconnects == 1
        source.close()
    finally:
        _stop(camera)


def test_killed_camera_process_raises_source_error_on_the_plain_source():
    port = _free_port()
    camera = _tcp_camera(port)
    try:
        source = None
        deadline = time.monotonic() + 15
        while source is None and time.monotonic() < deadline:
            try:
                source = open_source(
                    f"gst://tcpclientsrc host=127.0.0.1 port={port} ! multipartdemux ! jpegdec ! videoconvert ! appsink"
                )
                if source.read(timeout=2.0) is None:
                    source.close()
                    source = None
            except SourceError:
                time.sleep(0.2)
        assert source is not None
        _stop(camera)
        with pytest.raises(SourceError, match=r"gst://tcpclientsrc.*(stream ended|GStreamer error)"):
            for _ in range(100):
                source.read(timeout=0.2)
        source.close()
    finally:
        _stop(camera)


# -- sinks ------------------------------------------------------------------------------------------------


def test_appsrc_chain_records_what_was_sent(tmp_path: Path, sample_images):
    frames = [cv2.resize(cv2.imread(str(p)), (320, 240)) for p in sample_images[:6]]
    target = tmp_path / "gst.avi"
    sink = open_sink(f"gst://videoconvert ! jpegenc quality=95 ! avimux ! filesink location={target}", 320, 240, 30)
    assert isinstance(sink, GstSink)
    t0 = time.monotonic()
    for i, frame in enumerate(frames):
        sink.write(frame, t0 + i / 30)
        time.sleep(0.04)  # slower than the chain, so the leaky queue drops nothing
    assert sink.dropped == 0
    sink.close()
    cap = cv2.VideoCapture(str(target))
    back = []
    while True:
        ok, image = cap.read()
        if not ok:
            break
        back.append(image)
    assert len(back) == len(frames)
    for got, sent in zip(back, frames, strict=True):
        assert _psnr(got, sent) > 30


def test_file_sink_through_gstreamer(tmp_path: Path, sample_images):
    frame = cv2.resize(cv2.imread(str(sample_images[0])), (320, 240))
    target = tmp_path / "rec.mkv"
    sink = open_sink(f"file://{target}?backend=gst", 320, 240, 30)
    for _ in range(5):
        sink.write(frame, time.monotonic())
        time.sleep(0.04)
    sink.close()
    cap = cv2.VideoCapture(str(target))
    ok, image = cap.read()
    assert ok and _psnr(image, frame) > 30


def test_write_never_waits_for_a_slow_display():
    """A sink that shows 5 frames/s: 30 writes all return, and the leaky appsrc dropped the excess."""
    import gi

    gi.require_version("Gst", "1.0")
    shown = []
    sink = open_sink(
        "gst://videoconvert ! identity name=slow sleep-time=200000 signal-handoffs=true ! fakesink sync=false",
        320,
        240,
        30,
    )
    assert isinstance(sink, GstSink)
    slow = sink._pipeline.pipeline.get_by_name("slow")
    slow.connect("handoff", lambda *args: shown.append(1))
    image = np.zeros((240, 320, 3), np.uint8)
    for _ in range(30):
        sink.write(image, time.monotonic())
    pushed = sink.frames
    time.sleep(0.5)
    dropped = sink.dropped
    sink.close()
    assert pushed == 30
    assert len(shown) < 15, "the display chain received every frame: write must have waited for it"
    # Every frame is accounted for: shown, dropped by the leaky appsrc, or still queued (at most 2 + 2
    # in the slow element) when the count was taken.
    assert dropped >= 30 - len(shown) - 4 and dropped > 0


def test_hdmi_without_kms_or_jetson_elements_says_what_to_install():
    from endoedge.edge.video.gst import element_available, is_jetson

    if is_jetson() or element_available("kmssink"):
        pytest.skip("kmssink (or the Jetson elements) installed: nothing is missing to report")
    with pytest.raises(EndoedgeError, match=r"'kmssink' is not installed \(install gstreamer1.0-plugins-bad\)"):
        open_sink("hdmi://", 1920, 1080, 60)


def test_hdmi_through_kms_without_a_display_device_fails_clearly():
    """With kmssink installed but no DRM device (a container, a headless CI runner) the real hdmi://
    pipeline is built and reports why it cannot show anything."""
    from endoedge.edge.video.gst import element_available, is_jetson

    if is_jetson() or not element_available("kmssink"):
        pytest.skip("needs kmssink (gstreamer1.0-plugins-bad) on a non-Jetson machine")
    if Path("/dev/dri").exists():
        pytest.skip("this machine has a DRM device: hdmi:// might really take over a screen")
    with pytest.raises(SinkError, match=r"hdmi://: GStreamer pipeline failed to start: kmssink.*DRM"):
        open_sink("hdmi://", 1920, 1080, 60)


def test_window_sink_error_when_no_display(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(SinkError, match="failed to start"):
        open_sink("window://?element=ximagesink", 320, 240, 30)


@pytest.fixture(scope="module")
def xvfb() -> Iterator[str]:
    """A private X server on a free display number."""
    with private_xvfb(90) as display:
        yield display


def _screenshot(display: str, path: Path) -> np.ndarray:
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg missing (needed for the x11grab screenshot)")
    grab = ["ffmpeg", "-loglevel", "error", "-f", "x11grab", "-video_size", "1280x800", "-i", display]
    subprocess.run(
        [*grab, "-frames:v", "1", "-y", str(path)],
        check=True,
        timeout=30,
    )
    shot = cv2.imread(str(path))
    assert shot is not None
    return shot


SHOW_IN_WINDOW = """
import sys, time
import cv2
from endoedge.edge.video.sinks import open_sink
frame = cv2.imread(sys.argv[2])
sink = open_sink(sys.argv[1], frame.shape[1], frame.shape[0], 30)
for _ in range(10):
    sink.write(frame, time.monotonic())
    time.sleep(0.03)
time.sleep(0.5)
print("shown", flush=True)
sys.stdin.read()  # keep the window up until the test has its screenshot
sink.close()
"""


def _screenshot_of_window(uri: str, frame: np.ndarray, display: str, tmp_path: Path, env: dict | None = None):
    """Show ``frame`` through a window sink in a fresh process (as the daemon does: no TensorFlow loaded)
    and screenshot the X server while it is up.

    In this test process TensorFlow is loaded and, after a Keras fit or a TFLite conversion, an Xlib
    client opened here can die of an X error in XInput on some machines; the daemon never has
    TensorFlow, so the sink is exercised where it runs for real.
    """
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), frame)
    child = subprocess.Popen(
        [sys.executable, "-c", SHOW_IN_WINDOW, uri, str(image)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "shown", child.stderr
        return _screenshot(display, tmp_path / "shot.png")
    finally:
        _, err = child.communicate("", timeout=30)
        assert child.returncode == 0, err[-2000:]


def test_window_sink_shows_the_frame_under_xvfb(xvfb: str, tmp_path: Path, sample_images):
    from endoedge.core.synthetic import TowerLayout, tower_frame

    layout = TowerLayout(width=960, height=540, field_size=480, field_left=380)
    frame = tower_frame(cv2.imread(str(sample_images[5])), layout)
    shot = _screenshot_of_window(f"window://?element=ximagesink&display={xvfb}", frame, xvfb, tmp_path)
    # Without a window manager the window sits at the origin; allow a few pixels of offset.
    best = max((_psnr(shot[dy : dy + 540, dx : dx + 960], frame), dx, dy) for dx in range(0, 4) for dy in range(0, 4))
    assert best[0] > 35, f"screen does not show the frame (best PSNR {best[0]:.1f} dB at {best[1:]})"
    other = tower_frame(cv2.imread(str(sample_images[0])), layout)
    assert _psnr(shot[best[2] : best[2] + 540, best[1] : best[1] + 960], other) < best[0] - 5


# -- RTSP against a real RTSP server (GStreamer's rtsp-server library) ------------------------------------

RTSP_SERVER = """
import sys
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer
Gst.init(None)
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(sys.argv[1])
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(
    "( videotestsrc is-live=true pattern=ball ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 "
    "! jpegenc ! rtpjpegpay name=pay0 pt=26 )"
)
factory.set_shared(True)
server.get_mount_points().add_factory("/cam", factory)
server.attach(None)
print("ready", flush=True)
GLib.MainLoop().run()
"""


def _rtsp_server_available() -> bool:
    try:
        import gi

        gi.require_version("GstRtspServer", "1.0")
        from gi.repository import GstRtspServer  # noqa: F401
    except (ImportError, ValueError):
        return False
    return True


@pytest.fixture
def rtsp_camera() -> Iterator[tuple[str, Callable[[], None]]]:
    """A real RTSP server in its own process streaming MJPEG/RTP at 30 fps; yields (url, kill)."""
    if not _rtsp_server_available():
        pytest.skip("GStreamer RTSP server bindings absent (apt install gir1.2-gst-rtsp-server-1.0)")
    import sys

    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", RTSP_SERVER, str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == b"ready"
    yield f"rtsp://127.0.0.1:{port}/cam", lambda: _stop(process)
    _stop(process)


def _first_frame(source, seconds: float = 20.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        frame = source.read(timeout=0.5)
        if frame is not None:
            return frame
    return None


@pytest.mark.parametrize("backend", ["gst", "ffmpeg"])
def test_rtsp_stream_is_received(rtsp_camera, backend):
    url, _ = rtsp_camera
    source = open_source(f"{url}?backend={backend}&transport=tcp" if backend == "gst" else f"{url}?backend=ffmpeg")
    frame = _first_frame(source)
    assert frame is not None and frame.image.shape == (240, 320, 3)
    second = _first_frame(source)
    source.close()
    assert second is not None and second.index > frame.index
    # The test pattern is a white ball on black: both are present, so real pixels were decoded.
    assert frame.image.max() > 200 and frame.image.min() < 30


def test_rtsp_camera_that_dies_reads_as_no_signal(rtsp_camera):
    url, kill = rtsp_camera
    uri = f"{url}?transport=tcp"
    source = ReconnectingSource(lambda: open_source(uri), uri, initial_backoff=0.2, max_backoff=1.0, stall_timeout=2.0)
    assert _first_frame(source) is not None
    kill()
    deadline = time.monotonic() + 20
    while source.connected and time.monotonic() < deadline:
        source.read(timeout=0.2)
    assert not source.connected and source.failures >= 1
    assert source.read(timeout=0.2) is None  # still down: no signal, no exception
    source.close()


@pytest.mark.parametrize("fourcc", ["MJPG", "YUYV", "NV12"])
def test_v4l2_gstreamer_pipelines_build_and_fail_clearly_on_a_non_device(tmp_path: Path, fourcc):
    """The generated v4l2src pipelines are valid GStreamer; a node that is not a camera is named."""
    fake = tmp_path / "video0"
    fake.write_bytes(b"")
    with pytest.raises(SourceError) as info:
        source = open_source(f"v4l2://{fake}?backend=gst&fourcc={fourcc}&width=1280&height=720&fps=30")
        source.read(timeout=5.0)
    message = str(info.value)
    assert "cannot build" not in message and "v4l2src" in message and str(fake) in message


def test_default_window_sink_finds_a_working_video_sink_under_xvfb(xvfb: str, tmp_path: Path):
    """``window://`` with no options picks a sink that works on this X server (ximagesink: no GL needed)."""
    frame = np.zeros((240, 320, 3), np.uint8)
    frame[:, :, 1] = 200  # green
    shot = _screenshot_of_window("window://", frame, xvfb, tmp_path, env={"DISPLAY": xvfb})
    green = (shot[..., 1] > 180) & (shot[..., 0] < 40) & (shot[..., 2] < 40)
    assert green.sum() > 0.8 * 320 * 240


def test_gstreamer_mp4_recording_without_x264_says_what_to_install(tmp_path: Path):
    from endoedge.edge.video.gst import element_available

    if element_available("x264enc"):
        pytest.skip("x264enc is installed here")
    with pytest.raises(EndoedgeError, match=r"'x264enc' is not installed \(install gstreamer1.0-plugins-ugly\)"):
        open_sink(f"file://{tmp_path / 'exam.mp4'}?backend=gst", 320, 240, 30)


def _rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


@pytest.mark.slow
def test_no_memory_growth_over_thousands_of_1080p_frames():
    """Buffers mapped and wrapped through PyGObject are released: a leak would grow 6 MB per frame."""
    image = np.random.default_rng(0).integers(0, 255, (1080, 1920, 3), dtype=np.uint8)
    sink = open_sink("gst://fakesink sync=false", 1920, 1080, 30)
    for _ in range(200):
        sink.write(image, time.monotonic())
    before = _rss_mb()
    for _ in range(3000):
        sink.write(image, time.monotonic())
    sink_growth = _rss_mb() - before
    sink.close()
    source = open_source("gst://videotestsrc ! video/x-raw,width=1920,height=1080 ! appsink")
    for _ in range(100):
        source.read(timeout=5.0)
    before = _rss_mb()
    for _ in range(3000):
        assert source.read(timeout=5.0) is not None
    source_growth = _rss_mb() - before
    source.close()
    assert sink_growth < 40 and source_growth < 40, (sink_growth, source_growth)
