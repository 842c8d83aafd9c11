"""Video sinks addressed by URI: the procedure-room monitor, a desktop window, a recording, nothing.

::

    sink = open_sink("hdmi://", 1920, 1080, 60)            # kmssink, or nvdrmvideosink on a Jetson
    sink = open_sink("window://?element=ximagesink", 1920, 1080, 30)
    sink = open_sink("file://exam.mp4", 1920, 1080, 30)    # OpenCV mp4v in a writer thread
    sink = open_sink("gst://videoconvert ! jpegenc ! avimux ! filesink location=x.avi", 1920, 1080, 30)
    sink = open_sink("null://", 1920, 1080, 30)            # counts frames (benchmarks)
    sink.write(bgr_image, frame.t_capture)

The display loop is timed, so :meth:`write` never waits for the output: GStreamer sinks copy the
frame into a leaky ``appsrc`` (two frames at most; the oldest is dropped when the display or encoder
falls behind) and the file sink hands a copy to a writer thread through a bounded queue (a full queue
drops the frame and counts it). Frames of another size than the sink's are resized.

Options come from keyword arguments or the URI query string (not for ``gst://``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from endoedge.core.errors import ConfigError, EndoedgeError
from endoedge.edge.types import Sink
from endoedge.edge.video.sources import coerce_options, split_uri

log = logging.getLogger(__name__)

#: OpenCV writer codecs that work with the pip OpenCV (FFmpeg inside): fourcc -> file suffixes.
OPENCV_CODECS: Mapping[str, tuple[str, ...]] = {
    "mp4v": (".mp4", ".mov", ".m4v"),
    "MJPG": (".avi", ".mkv"),
    "XVID": (".avi", ".mkv"),
}
WINDOW_ELEMENTS = ("auto", "autovideosink", "xvimagesink", "ximagesink", "glimagesink", "waylandsink")


class SinkError(EndoedgeError):
    """A video output cannot be opened or failed while running (display gone, disk full, ...)."""


class _SizedSink:
    """Shared bookkeeping: size conformance and frame counting."""

    def __init__(self, uri: str, width: int, height: int, fps: float) -> None:
        if width <= 0 or height <= 0:
            raise ConfigError(f"sink size must be positive, got {width}x{height}", uri)
        if fps <= 0:
            raise ConfigError(f"sink fps must be positive, got {fps}", uri)
        self.uri = uri
        self.width = width
        self.height = height
        self.fps = float(fps)
        self.frames = 0
        self.resized = 0
        self._closed = False

    def _conform(self, image: np.ndarray) -> np.ndarray:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise SinkError(f"expected a uint8 HxWx3 BGR frame, got {image.dtype} {image.shape}", self.uri)
        if image.shape[0] != self.height or image.shape[1] != self.width:
            if self.resized == 0:
                log.warning(
                    "%s: frames of %dx%d are resized to the output's %dx%d",
                    self.uri,
                    image.shape[1],
                    image.shape[0],
                    self.width,
                    self.height,
                )
            self.resized += 1
            image = cv2.resize(image, (self.width, self.height), interpolation=cv2.INTER_LINEAR)
        return np.ascontiguousarray(image)

    def _check_open(self) -> None:
        if self._closed:
            raise SinkError("sink is closed", self.uri)


class NullSink(_SizedSink):
    """Discards frames, counting them (and keeping the last one when ``keep_last``).

    Attributes:
        frames: Frames written.
        last_t_capture: ``t_capture`` of the last frame.
        delays: Seconds from capture to ``write`` of every frame, when ``record_delays``.
    """

    def __init__(
        self, uri: str, width: int, height: int, fps: float, keep_last: bool = False, record_delays: bool = False
    ) -> None:
        super().__init__(uri, width, height, fps)
        self.keep_last = keep_last
        self.record_delays = record_delays
        self.last_image: np.ndarray | None = None
        self.last_t_capture: float | None = None
        self.delays: list[float] = []

    def write(self, image: np.ndarray, t_capture: float) -> None:
        """Count the frame."""
        self._check_open()
        if self.record_delays:
            self.delays.append(time.monotonic() - t_capture)
        self.frames += 1
        self.last_t_capture = t_capture
        if self.keep_last:
            self.last_image = image.copy()

    def close(self) -> None:
        """Nothing to release."""
        self._closed = True


class VideoFileSink(_SizedSink):
    """Records to a video file with OpenCV's writer in a background thread.

    The file is written under a temporary name beside the target and renamed on :meth:`close`, so a
    recording is either complete or absent (a crash leaves ``.<name>.partial<suffix>``).

    Args:
        uri: ``file://out.mp4``.
        path: Target file.
        width: Frame width.
        height: Frame height.
        fps: Frame rate stored in the file.
        codec: OpenCV fourcc (``mp4v`` for .mp4, ``MJPG``/``XVID`` for .avi); chosen from the suffix.
        queue_frames: Frames the writer may lag behind before new frames are dropped (reused buffers
            made at open: 16 frames of 1080p take 100 MB).
        block: Wait for the writer instead of dropping (offline replays that must record every frame;
            never on a live display path).
        overwrite: Replace an existing file.
    """

    def __init__(
        self,
        uri: str,
        path: str | Path,
        width: int,
        height: int,
        fps: float,
        codec: str | None = None,
        queue_frames: int = 16,
        overwrite: bool = True,
        block: bool = False,
    ) -> None:
        super().__init__(uri, width, height, fps)
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if codec is None:
            codec = next((c for c, suffixes in OPENCV_CODECS.items() if suffix in suffixes), None)
            if codec is None:
                known = ", ".join(sorted({s for v in OPENCV_CODECS.values() for s in v}))
                raise ConfigError(f"cannot choose a codec for {suffix or 'no suffix'!r} (use one of {known})", uri)
        if self.path.exists() and not overwrite:
            raise SinkError("the recording already exists (pass overwrite=1 to replace it)", self.path)
        if not self.path.parent.is_dir():
            raise SinkError("the folder of the recording does not exist", self.path.parent)
        self._partial = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
        self._writer = cv2.VideoWriter(str(self._partial), cv2.VideoWriter.fourcc(*codec), self.fps, (width, height))
        if not self._writer.isOpened():
            self._writer.release()
            with contextlib.suppress(OSError):
                self._partial.unlink()
            raise SinkError(f"OpenCV cannot write codec {codec!r} to this file", self.path)
        self.codec = codec
        self.block = block
        self.dropped = 0
        self.written = 0
        # Frames are copied into a small pool of reused buffers: a fresh 6 MB allocation per 1080p frame
        # costs page faults on the display thread.
        self._pool_size = max(1, queue_frames)
        self._free: queue.SimpleQueue[np.ndarray] = queue.SimpleQueue()
        for _ in range(self._pool_size):
            # Filled at open so their pages are mapped before a frame needs them (once, not per frame).
            self._free.put(np.full((height, width, 3), 0, np.uint8))
        self._queue: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=self._pool_size + 1)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"record {self.path.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            image = self._queue.get()
            if image is None:
                return
            try:
                self._writer.write(image)
                self.written += 1
            except Exception as exc:  # surfaced on the next write; the writer thread must not die silently
                self._error = exc
                return
            self._free.put(image)

    def write(self, image: np.ndarray, t_capture: float) -> None:
        """Queue a copy of the frame for the writer thread (dropped and counted when it lags).

        Raises:
            SinkError: The writer failed.
        """
        self._check_open()
        if self._error is not None:
            raise SinkError(f"recording failed: {self._error}", self.path)
        frame = self._conform(image)
        try:
            buffer = self._free.get() if self.block else self._free.get_nowait()
        except queue.Empty:
            self.dropped += 1  # the writer is behind by the whole pool
            return
        np.copyto(buffer, frame)
        self._queue.put_nowait(buffer)
        self.frames += 1

    def close(self) -> None:
        """Write the queued frames, finish the file and move it into place."""
        if self._closed:
            return
        self._closed = True
        # The writer may have died on an error with a full queue: only wait for room while it runs.
        while self._thread.is_alive():
            try:
                self._queue.put(None, timeout=0.1)
                break
            except queue.Full:
                continue
        self._thread.join()
        self._writer.release()
        if self._error is not None:
            with contextlib.suppress(OSError):
                self._partial.unlink()
            raise SinkError(f"recording failed: {self._error}", self.path)
        os.replace(self._partial, self.path)


class GstSink(_SizedSink):
    """Frames pushed through a leaky ``appsrc`` into a GStreamer chain.

    Args:
        uri: The sink URI.
        tail: The chain after ``appsrc`` (``videoconvert ! ...``).
        width: Frame width.
        height: Frame height.
        fps: Frame rate.
        queue_frames: Frames ``appsrc`` holds before dropping the oldest.
        start_timeout: Seconds to wait for the chain to start.
    """

    def __init__(
        self,
        uri: str,
        tail: str,
        width: int,
        height: int,
        fps: float,
        queue_frames: int = 2,
        start_timeout: float = 5.0,
    ) -> None:
        from endoedge.edge.video.gst import AppSrcPipeline

        super().__init__(uri, width, height, fps)
        self.tail = tail
        self._pipeline = AppSrcPipeline(
            tail, width, height, fps, SinkError, uri, queue_frames=queue_frames, start_timeout=start_timeout
        )

    @property
    def dropped(self) -> int:
        """Frames the output skipped because the display or encoder was still busy with older ones."""
        return self._pipeline.dropped

    def write(self, image: np.ndarray, t_capture: float) -> None:
        """Copy the frame into the pipeline; returns without waiting for the display.

        Raises:
            SinkError: The pipeline failed (display lost, file not writable, ...).
        """
        self._check_open()
        self._pipeline.push(self._conform(image), t_capture)
        self.frames += 1

    def close(self) -> None:
        """Send end-of-stream (so files are finalised) and stop the pipeline."""
        if self._closed:
            return
        self._closed = True
        self._pipeline.finish()


# ---------------------------------------------------------------------------------------------------------
# Pipeline tails


def hdmi_tail(jetson: bool, connector: int = -1, plane: int = -1, scale: bool = True) -> str:
    """The GStreamer chain that shows frames full screen on a display without a desktop.

    On a Jetson, ``nvvidconv`` moves frames into NVMM memory and ``nvdrmvideosink`` scans them out
    directly (stop the desktop first: ``systemctl stop gdm``). Elsewhere ``kmssink`` does the same
    through DRM/KMS with a mode set for the frame size.

    Args:
        jetson: Build the Jetson chain.
        connector: DRM connector id (``-1``: the first connected one).
        plane: DRM plane id (``-1``: automatic).
        scale: Insert ``videoscale`` so the frame fills the current display mode (kmssink).
    """
    if jetson:
        extra = f" conn_id={connector}" if connector >= 0 else ""
        extra += f" plane_id={plane}" if plane >= 0 else ""
        return (
            "videoconvert ! video/x-raw,format=BGRx ! nvvidconv ! video/x-raw(memory:NVMM),format=NV12 ! "
            f"nvdrmvideosink sync=false{extra}"
        )
    extra = f" connector-id={connector}" if connector >= 0 else ""
    extra += f" plane-id={plane}" if plane >= 0 else ""
    scaler = "videoscale ! " if scale else ""
    return f"videoconvert ! {scaler}kmssink sync=false force-modesetting=true{extra}"


def window_tail(element: str = "ximagesink", display: str | None = None) -> str:
    """The GStreamer chain that shows frames in a desktop window."""
    if element not in WINDOW_ELEMENTS:
        raise ConfigError(f"element must be one of {', '.join(WINDOW_ELEMENTS)}, got {element!r}")
    props = " sync=false"
    if display and element in ("xvimagesink", "ximagesink"):
        props += f" display={display}"
    if element in ("xvimagesink", "ximagesink", "glimagesink", "waylandsink"):
        props += " force-aspect-ratio=true"
    return f"videoconvert ! {element}{props}"


def file_tail(path: Path) -> str:
    """A GStreamer recording chain chosen by file suffix (x264 for .mp4 needs plugins-ugly)."""
    suffix = path.suffix.lower()
    location = f'location="{path}"'
    if suffix == ".mp4":
        return f"videoconvert ! x264enc tune=zerolatency speed-preset=ultrafast ! mp4mux ! filesink {location}"
    if suffix in (".avi", ".mkv"):
        mux = "avimux" if suffix == ".avi" else "matroskamux"
        return f"videoconvert ! jpegenc quality=90 ! {mux} ! filesink {location}"
    if suffix == ".webm":
        return f"videoconvert ! vp8enc deadline=1 ! webmmux ! filesink {location}"
    raise ConfigError(f"the GStreamer recorder writes .mp4, .avi, .mkv or .webm, not {suffix or 'no suffix'!r}")


# ---------------------------------------------------------------------------------------------------------
# Registry


@dataclass(frozen=True)
class SinkKind:
    """One URI scheme of the sink registry."""

    scheme: str
    options: Mapping[str, tuple[type, Any]]
    open: Callable[[str, str, int, int, float, dict[str, Any]], Sink]
    description: str
    parse_query: bool = True


def _open_null(uri: str, target: str, w: int, h: int, fps: float, o: dict[str, Any]) -> Sink:
    return NullSink(uri, w, h, fps, keep_last=o["keep_last"], record_delays=o["record_delays"])


def _open_file(uri: str, target: str, w: int, h: int, fps: float, o: dict[str, Any]) -> Sink:
    if not target:
        raise ConfigError("the URI names no file (file://out.mp4)", uri)
    if o["backend"] == "opencv":
        return VideoFileSink(
            uri,
            target,
            w,
            h,
            fps,
            codec=o["codec"],
            queue_frames=o["queue_frames"],
            overwrite=o["overwrite"],
            block=o["block"],
        )
    if o["backend"] != "gst":
        raise ConfigError(f"backend must be opencv or gst, got {o['backend']!r}", uri)
    path = Path(target)
    if path.exists() and not o["overwrite"]:
        raise SinkError("the recording already exists (pass overwrite=1 to replace it)", path)
    from endoedge.edge.video.gst import require_elements

    tail = file_tail(path)
    if "x264enc" in tail:
        require_elements(["x264enc"], uri)
    return GstSink(uri, tail, w, h, fps, queue_frames=o["queue_frames"])


def _open_hdmi(uri: str, target: str, w: int, h: int, fps: float, o: dict[str, Any]) -> Sink:
    from endoedge.edge.video.gst import is_jetson, require_elements

    jetson = is_jetson()
    require_elements(["nvvidconv", "nvdrmvideosink"] if jetson else ["kmssink"], uri)
    tail = hdmi_tail(jetson, connector=o["connector"], plane=o["plane"], scale=o["scale"])
    return GstSink(uri, tail, w, h, fps)


def _resolve_window_element(element: str, display: str | None) -> str:
    """``auto``: ximagesink on X11, waylandsink on Wayland, else autovideosink.

    autovideosink ranks glimagesink first where GStreamer's GL plugin is installed; Mesa's software GL
    (llvmpipe) then loads its own LLVM, which crashed a process that also had TensorFlow loaded. Plain
    X11 output needs no GL, and a window is a preview anyway (the procedure-room output is hdmi://).
    """
    import os

    from endoedge.edge.video.gst import element_available

    if element != "auto":
        return element
    if (display or os.environ.get("DISPLAY")) and element_available("ximagesink"):
        return "ximagesink"
    if os.environ.get("WAYLAND_DISPLAY") and element_available("waylandsink"):
        return "waylandsink"
    return "autovideosink"


def _open_window(uri: str, target: str, w: int, h: int, fps: float, o: dict[str, Any]) -> Sink:
    from endoedge.edge.video.gst import require_elements

    element = _resolve_window_element(o["element"], o["display"])
    tail = window_tail(element, o["display"])
    require_elements([element], uri)
    return GstSink(uri, tail, w, h, fps)


def _open_gst(uri: str, target: str, w: int, h: int, fps: float, o: dict[str, Any]) -> Sink:
    if not target.strip():
        raise ConfigError("the URI names no pipeline (gst://videoconvert ! autovideosink)", uri)
    return GstSink(uri, target, w, h, fps, queue_frames=o["queue_frames"])


SINKS: Mapping[str, SinkKind] = {
    kind.scheme: kind
    for kind in (
        SinkKind(
            "hdmi",
            {"connector": (int, -1), "plane": (int, -1), "scale": (bool, True)},
            _open_hdmi,
            "full screen without a desktop: nvdrmvideosink on a Jetson, kmssink elsewhere",
        ),
        SinkKind(
            "window",
            {"element": (str, "auto"), "display": (str, None)},
            _open_window,
            "a desktop window (X11/Wayland): window://?element=ximagesink",
        ),
        SinkKind(
            "file",
            {
                "codec": (str, None),
                "backend": (str, "opencv"),
                "queue_frames": (int, 16),
                "block": (bool, False),
                "overwrite": (bool, True),
            },
            _open_file,
            "a recording: file://exam.mp4 (OpenCV mp4v) or backend=gst (.avi/.mkv MJPEG, .webm VP8, .mp4 x264)",
        ),
        SinkKind(
            "gst",
            {"queue_frames": (int, 2)},
            _open_gst,
            "any GStreamer chain after appsrc: gst://videoconvert ! autovideosink",
            parse_query=False,
        ),
        SinkKind(
            "null",
            {"keep_last": (bool, False), "record_delays": (bool, False)},
            _open_null,
            "discard frames, counting them (benchmarks)",
        ),
    )
}


def open_sink(uri: str, width: int, height: int, fps: float, **options: Any) -> Sink:
    """Open a video output by URI.

    Args:
        uri: ``hdmi://``, ``window://``, ``file://out.mp4``, ``gst://<chain>`` or ``null://``.
        width: Frame width (frames of another size are resized).
        height: Frame height.
        fps: Frame rate.
        **options: Options of the scheme (override the URI query string).

    Raises:
        ConfigError: Unknown scheme (valid ones listed), unknown option or bad value.
        SinkError: The output cannot be opened.
        MissingDependencyError: A GStreamer sink without GStreamer installed.
    """
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme not in SINKS:
        valid = ", ".join(f"{s}://" for s in SINKS)
        raise ConfigError(f"unknown video sink scheme {scheme + '://' if scheme else uri!r} (valid: {valid})", uri)
    kind = SINKS[scheme]
    _, target, query = split_uri(uri, parse_query=kind.parse_query)
    return kind.open(uri, target, width, height, fps, coerce_options(kind.options, {**query, **options}, uri))
