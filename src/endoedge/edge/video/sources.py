"""Video sources addressed by URI: capture cards, files, image folders, GStreamer pipelines, RTSP.

::

    source = open_source("v4l2:///dev/video0?fourcc=MJPG&width=1920&height=1080&fps=60")
    source = open_source("file://clip.mp4", loop=True)              # paced at the file's fps
    source = open_source("images://tests/data/sample?fps=5")
    source = open_source("gst://videotestsrc is-live=true ! videoconvert ! appsink")
    source = open_source("rtsp://10.0.0.5/stream1?latency=0")
    frame = source.read(timeout=0.5)                                 # Frame, or None on timeout

Options come from keyword arguments or the URI's query string (``?key=value&...``; not for ``gst://``,
whose text is a pipeline); unknown options are rejected with the list of valid ones.

Live sources (and paced files, so that a replay behaves exactly like live capture) have a capture
thread that keeps only the newest frame: a slow reader never receives a queue of stale frames, and
every frame it missed is counted in :attr:`CapturedSource.dropped`. ``gst://`` and ``rtsp://`` use
GStreamer's own streaming thread and a one-frame ``appsink`` for the same effect.

A lost device or stream raises :class:`SourceError`; :class:`ReconnectingSource` turns that into
``None`` reads (the daemon shows "no signal") while it reopens the source with capped exponential
backoff.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import cv2
import numpy as np

from endoedge.core.errors import ConfigError, EndoedgeError
from endoedge.edge.types import Frame, Source

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
V4L2_FOURCCS = ("MJPG", "YUYV", "NV12")


class SourceError(EndoedgeError):
    """A video source cannot be opened, or stopped delivering frames (device unplugged, stream lost)."""


# ---------------------------------------------------------------------------------------------------------
# URI and option parsing


def split_uri(uri: str, parse_query: bool = True) -> tuple[str, str, dict[str, str]]:
    """Split ``scheme://target?key=value`` into its parts.

    Args:
        uri: The URI.
        parse_query: Split off a query string (off for ``gst://`` pipelines, which may contain ``?``).

    Returns:
        ``(scheme, target, query options)``.

    Raises:
        ConfigError: The text has no ``scheme://`` prefix.
    """
    if "://" not in uri:
        raise ConfigError(f"{uri!r} is not a URI (expected scheme://..., e.g. file://clip.mp4)")
    scheme, rest = uri.split("://", 1)
    query: dict[str, str] = {}
    if parse_query and "?" in rest:
        rest, text = rest.split("?", 1)
        for key, value in parse_qsl(text, keep_blank_values=True, strict_parsing=False):
            query[key] = value
    return scheme.lower(), rest, query


def _coerce(value: Any, kind: type, where: str) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on", ""):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"expected a boolean, got {value!r}", where)
    if kind in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"expected a number, got {value!r}", where)
        try:
            number = kind(value)
        except (TypeError, ValueError):
            raise ConfigError(f"expected a number, got {value!r}", where) from None
        return number
    return str(value)


def coerce_options(declared: Mapping[str, tuple[type, Any]], given: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Validate and type options against a declaration.

    Args:
        declared: ``name -> (type, default)``.
        given: Options from the URI query and keyword arguments (strings are converted).
        where: The URI, for error messages.

    Returns:
        Every declared option, given or defaulted.

    Raises:
        ConfigError: An unknown option (listing the valid ones) or a value of the wrong type.
    """
    unknown = sorted(k for k in given if k not in declared)
    if unknown:
        valid = ", ".join(sorted(declared)) or "none"
        raise ConfigError(f"unknown option {unknown[0]!r} (valid: {valid})", where)
    result = {name: default for name, (_, default) in declared.items()}
    for name, value in given.items():
        kind = declared[name][0]
        result[name] = None if value is None else _coerce(value, kind, f"{where}: option {name}")
    return result


# ---------------------------------------------------------------------------------------------------------
# The newest-frame slot and capture thread shared by live and paced sources


class LatestFrameSlot:
    """Holds only the newest frame between a capture thread and a reader, counting frames never read."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._fresh = False
        self._error: BaseException | None = None
        self._ended = False
        self.dropped = 0
        self.published = 0

    def publish(self, frame: Frame) -> None:
        """Replace the held frame (an unread one counts as dropped) and wake the reader."""
        with self._cond:
            if self._fresh:
                self.dropped += 1
            self._frame = frame
            self._fresh = True
            self.published += 1
            self._cond.notify_all()

    def fail(self, error: BaseException) -> None:
        """Make the next read raise ``error`` (after any unread frame)."""
        with self._cond:
            self._error = error
            self._cond.notify_all()

    def end(self) -> None:
        """Make the next read raise :class:`EOFError` (after any unread frame)."""
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def take(self, timeout: float) -> Frame | None:
        """Return a frame not returned before, waiting up to ``timeout`` seconds; ``None`` on timeout.

        Raises:
            SourceError: The capture thread failed.
            EOFError: The source ended.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            while not self._fresh:
                if self._error is not None:
                    raise self._error
                if self._ended:
                    raise EOFError("end of source")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
            self._fresh = False
            return self._frame


GrabFn = Callable[[], tuple[np.ndarray, float | None]]


class CapturedSource:
    """Base of sources read by a capture thread that publishes into a :class:`LatestFrameSlot`.

    Subclasses implement :meth:`_grab` (blocking: return one frame and its pts, raise
    :class:`SourceError` when the device is lost or :class:`EOFError` at the end of a finite source)
    and :meth:`_release`. With ``pace`` the thread publishes frame ``n`` no earlier than
    ``start + n / fps``, so a file plays like a live camera; with ``threaded=False`` (benchmarks:
    ``as_fast_as_possible``) :meth:`read` grabs synchronously and never drops a frame.
    """

    def __init__(self, uri: str, fps: float, pace: bool, threaded: bool = True) -> None:
        self.uri = uri
        self.fps = float(fps)
        self._pace = pace
        self._threaded = threaded
        self._slot = LatestFrameSlot()
        self._stop = threading.Event()
        self._index = 0
        self._thread: threading.Thread | None = None
        self._closed = False
        self._captured_at: float | None = None

    def _start(self) -> None:
        if self._threaded:
            self._thread = threading.Thread(target=self._run, name=f"capture {self.uri}", daemon=True)
            self._thread.start()

    @property
    def dropped(self) -> int:
        """Frames captured but replaced by a newer one before :meth:`read` took them."""
        return self._slot.dropped

    @property
    def captured(self) -> int:
        """Frames captured so far."""
        return self._index

    def _grab(self) -> tuple[np.ndarray, float | None]:
        raise NotImplementedError

    def _release(self) -> None:
        """Free the device or file (called once, after the capture thread stopped)."""

    def _make_frame(self, image: np.ndarray, pts: float | None) -> Frame:
        # A live source's _grab may record when the frame was really captured (before decoding);
        # otherwise the frame counts as captured now.
        captured_at, self._captured_at = self._captured_at, None
        frame = Frame(image=image, index=self._index, t_capture=captured_at or time.monotonic(), pts=pts)
        self._index += 1
        return frame

    def _run(self) -> None:
        start = time.monotonic()
        published = 0
        interval = 1.0 / self.fps if self.fps > 0 else 0.0
        try:
            while not self._stop.is_set():
                image, pts = self._grab()
                if self._pace and interval:
                    due = start + published * interval
                    now = time.monotonic()
                    if due > now:
                        if self._stop.wait(due - now):
                            break
                    elif now - due > 2 * interval:
                        # Decoding fell behind: restart the clock instead of bursting to catch up.
                        start, published = now, 0
                self._slot.publish(self._make_frame(image, pts))
                published += 1
        except EOFError:
            self._slot.end()
        except SourceError as exc:
            self._slot.fail(exc)
        except Exception as exc:  # any other failure of a capture library must still reach the reader
            self._slot.fail(SourceError(f"capture failed: {type(exc).__name__}: {exc}", self.uri))

    def read(self, timeout: float = 1.0) -> Frame | None:
        """Return the newest frame not returned before, or ``None`` after ``timeout`` seconds.

        Raises:
            SourceError: The device or stream is lost.
            EOFError: A finite source ended (and does not loop).
        """
        if self._closed:
            raise SourceError("source is closed", self.uri)
        try:
            if not self._threaded:
                image, pts = self._grab()
                return self._make_frame(image, pts)
            return self._slot.take(timeout)
        except EOFError:
            raise EOFError(f"{self.uri}: end of source") from None

    def close(self) -> None:
        """Stop the capture thread and release the device or file."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            if self._thread.is_alive():
                # Still blocked inside the capture library: releasing the device under it could crash
                # the process, so leave it to the (daemon) thread and say so.
                log.warning("%s: capture thread did not stop within 5 s; device left open", self.uri)
                return
        self._release()

    def __enter__(self) -> CapturedSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------------------
# file:// — a video file


class VideoFileSource(CapturedSource):
    """A video file decoded with OpenCV (FFmpeg).

    Args:
        uri: ``file://path`` (relative or ``file:///absolute``).
        path: The file.
        loop: Start again at the end instead of raising :class:`EOFError`.
        as_fast_as_possible: Decode on demand in :meth:`read`, never pacing or dropping (benchmarks).
        fps: Override the frame rate stored in the file (used for pacing).
    """

    def __init__(
        self,
        uri: str,
        path: str | Path,
        loop: bool = False,
        as_fast_as_possible: bool = False,
        fps: float | None = None,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise SourceError("no such video file", self.path)
        self._cap = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)
        if not self._cap.isOpened():
            raise SourceError("cannot decode this file as video (unsupported or corrupt)", self.path)
        stored = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        if fps is None and not 1.0 <= stored <= 1000.0:
            log.warning("%s: the file stores no usable frame rate (%s); pacing at 30 fps", self.path, stored)
            stored = 30.0
        super().__init__(
            uri, fps if fps is not None else stored, pace=not as_fast_as_possible, threaded=not as_fast_as_possible
        )
        self.loop = loop
        self.frame_count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self._decoded = 0
        # Added to the container's times after each rewind, so a looping file's time keeps increasing.
        self._loop_offset = 0.0
        self._last_pts = -1.0
        self._start()

    def _grab(self) -> tuple[np.ndarray, float | None]:
        ok, image = self._cap.read()
        if not ok:
            if not self.loop:
                raise EOFError
            if self._decoded == 0:
                raise SourceError("the video has no decodable frames", self.path)
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, image = self._cap.read()
            if not ok:
                raise SourceError("cannot rewind the video to loop it", self.path)
            self._loop_offset = self._last_pts + (1.0 / self.fps if self.fps > 0 else 0.0)
        # The container's presentation time of this frame, so a replay paced at another rate (``fps``) or
        # not paced at all still tells the daemon's media clock the clip's own time.
        stamp_ms = float(self._cap.get(cv2.CAP_PROP_POS_MSEC))
        if math.isfinite(stamp_ms) and stamp_ms >= 0.0:
            pts: float | None = self._loop_offset + stamp_ms / 1000.0
        else:
            pts = self._decoded / self.fps if self.fps > 0 else None
        if pts is not None:
            self._last_pts = pts
        self._decoded += 1
        return image, pts

    def _release(self) -> None:
        self._cap.release()


# ---------------------------------------------------------------------------------------------------------
# images:// — a folder of still images played as video


class ImageFolderSource(CapturedSource):
    """Still images (sorted by path, searched recursively) played as a video at ``fps``.

    Every image is resized to ``size`` (default: the first image's size) so the stream has one geometry,
    like a real capture.

    Args:
        uri: ``images://folder``.
        folder: The folder.
        fps: Frame rate to pace at.
        loop: Start again after the last image.
        as_fast_as_possible: Load on demand in :meth:`read`, never pacing or dropping.
        size: ``"WxH"`` output size.
    """

    def __init__(
        self,
        uri: str,
        folder: str | Path,
        fps: float = 30.0,
        loop: bool = False,
        as_fast_as_possible: bool = False,
        size: str | None = None,
    ) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise SourceError("no such image folder", self.folder)
        self.paths = sorted(p for p in self.folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise SourceError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in the folder", self.folder)
        if fps <= 0:
            raise ConfigError(f"fps must be positive, got {fps}", uri)
        self._size = _parse_size(size, uri) if size else None
        self.loop = loop
        self._position = 0
        super().__init__(uri, fps, pace=not as_fast_as_possible, threaded=not as_fast_as_possible)
        self._start()

    def _grab(self) -> tuple[np.ndarray, float | None]:
        if self._position >= len(self.paths) and not self.loop:
            raise EOFError
        path = self.paths[self._position % len(self.paths)]
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise SourceError("cannot decode image", path)
        if self._size is None:
            self._size = (image.shape[1], image.shape[0])
        if (image.shape[1], image.shape[0]) != self._size:
            image = cv2.resize(image, self._size, interpolation=cv2.INTER_AREA)
        pts = self._position / self.fps
        self._position += 1
        return image, pts


def _parse_size(text: str, where: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"size must look like 1920x1080, got {text!r}", where) from None
    if width <= 0 or height <= 0:
        raise ConfigError(f"size must be positive, got {text!r}", where)
    return width, height


# ---------------------------------------------------------------------------------------------------------
# v4l2:// — capture cards and UVC grabbers through OpenCV's V4L2 backend


def v4l2_devices() -> list[str]:
    """Video4Linux device nodes present on this machine."""
    return sorted(str(p) for p in Path("/dev").glob("video*"))


@dataclass(frozen=True)
class Negotiated:
    """What a capture device agreed to (it may differ from what was asked)."""

    fourcc: str
    width: int
    height: int
    fps: float


def _fourcc_text(code: float) -> str:
    value = int(code)
    return "".join(chr((value >> (8 * i)) & 0xFF) for i in range(4)).strip("\0 ")


class V4L2Source(CapturedSource):
    """A V4L2 capture device read by OpenCV, with a driver queue of one buffer.

    Args:
        uri: ``v4l2:///dev/video0``.
        device: The device node.
        fourcc: ``MJPG``, ``YUYV`` or ``NV12`` (default: the driver's current format).
        width: Requested width (0: keep the driver's).
        height: Requested height.
        fps: Requested frame rate (0: keep the driver's).
        buffer_size: Driver buffers (1 so a frame is never older than one frame period).
        max_failed_reads: Consecutive failed reads before the device counts as lost.
    """

    def __init__(
        self,
        uri: str,
        device: str,
        fourcc: str | None = None,
        width: int = 0,
        height: int = 0,
        fps: float = 0.0,
        buffer_size: int = 1,
        max_failed_reads: int = 3,
    ) -> None:
        if fourcc is not None and fourcc.upper() not in V4L2_FOURCCS:
            raise ConfigError(f"fourcc must be one of {', '.join(V4L2_FOURCCS)}, got {fourcc!r}", uri)
        if not os.path.exists(device):
            present = ", ".join(v4l2_devices()) or "none"
            raise SourceError(f"no such capture device (video devices present: {present})", device)
        self.device = device
        self._cap = cv2.VideoCapture(device, cv2.CAP_V4L2)
        if not self._cap.isOpened():
            raise SourceError("cannot open the capture device (busy, not a capture node, or no permission)", device)
        for prop, value in v4l2_settings(fourcc, width, height, fps, buffer_size):
            self._cap.set(prop, value)
        # A card without input signal blocks a read for OpenCV's default 10 s; 2 s keeps close() and
        # reconnection prompt (ignored by OpenCV builds whose V4L2 backend lacks the property).
        self._cap.set(cv2.CAP_PROP_READ_TIMEOUT_MSEC, 2000.0)
        self.negotiated = Negotiated(
            fourcc=_fourcc_text(self._cap.get(cv2.CAP_PROP_FOURCC)),
            width=int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            height=int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            fps=float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0),
        )
        asked = {"fourcc": (fourcc or "").upper(), "width": width, "height": height, "fps": fps}
        for key, wanted in asked.items():
            got = getattr(self.negotiated, key)
            if wanted and got != wanted:
                log.warning("%s: asked %s=%s, the device gave %s", device, key, wanted, got)
        self._max_failed = max_failed_reads
        super().__init__(uri, self.negotiated.fps or fps or 30.0, pace=False)
        self._start()

    def _grab(self) -> tuple[np.ndarray, float | None]:
        for _ in range(self._max_failed):
            # grab() dequeues the driver buffer, retrieve() decodes it (MJPG at 1080p takes milliseconds):
            # the capture time is taken in between so decoding counts in the video delay.
            if self._cap.grab():
                grabbed = time.monotonic()
                ok, image = self._cap.retrieve()
                if ok and image is not None:
                    self._captured_at = driver_timestamp(self._cap.get(cv2.CAP_PROP_POS_MSEC), grabbed)
                    return image, None
            if self._stop.is_set():
                raise EOFError
        raise SourceError(
            f"the capture device stopped delivering frames ({self._max_failed} failed reads)", self.device
        )

    def _release(self) -> None:
        self._cap.release()


def driver_timestamp(msec: float, fallback: float) -> float:
    """The V4L2 buffer timestamp (OpenCV reports it in ms) as a ``time.monotonic()`` time.

    Drivers stamp buffers with CLOCK_MONOTONIC when the frame was captured, which is the same clock as
    ``time.monotonic()`` on Linux; a stamp that is absent or not within a second before ``fallback`` (a
    driver using another clock) is replaced by ``fallback``.
    """
    stamp = msec / 1000.0 if msec and msec > 0 else 0.0
    return stamp if fallback - 1.0 <= stamp <= fallback else fallback


def v4l2_settings(fourcc: str | None, width: int, height: int, fps: float, buffer_size: int) -> list[tuple[int, float]]:
    """The OpenCV capture properties to set, in the order V4L2 needs (format before size before rate)."""
    settings: list[tuple[int, float]] = []
    if fourcc:
        settings.append((cv2.CAP_PROP_FOURCC, float(cv2.VideoWriter.fourcc(*fourcc.upper()))))
    if width:
        settings.append((cv2.CAP_PROP_FRAME_WIDTH, float(width)))
    if height:
        settings.append((cv2.CAP_PROP_FRAME_HEIGHT, float(height)))
    if fps:
        settings.append((cv2.CAP_PROP_FPS, float(fps)))
    settings.append((cv2.CAP_PROP_BUFFERSIZE, float(buffer_size)))
    return settings


def v4l2_gst_pipeline(
    device: str, fourcc: str | None, width: int, height: int, fps: float, jetson: bool = False
) -> str:
    """A GStreamer capture pipeline for a V4L2 device ending in a BGR ``appsink``.

    On a Jetson, MJPG is decoded by the hardware JPEG decoder (``nvv4l2decoder mjpeg=1``).
    """
    fields = []
    if width:
        fields.append(f"width={width}")
    if height:
        fields.append(f"height={height}")
    if fps:
        from endoedge.edge.video.gst import caps_framerate

        fields.append(f"framerate={caps_framerate(fps)}")
    extra = "".join("," + f for f in fields)
    code = (fourcc or "").upper()
    head = f"v4l2src device={device} io-mode=mmap"
    if code == "MJPG":
        decode = (
            f"image/jpeg{extra} ! nvv4l2decoder mjpeg=1 ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert"
            if jetson
            else f"image/jpeg{extra} ! jpegdec ! videoconvert"
        )
    elif code == "YUYV":
        decode = f"video/x-raw,format=YUY2{extra} ! videoconvert"
    elif code == "NV12":
        decode = f"video/x-raw,format=NV12{extra} ! videoconvert"
    else:
        decode = f"video/x-raw{extra} ! videoconvert" if extra else "videoconvert"
    return f"{head} ! {decode} ! video/x-raw,format=BGR ! appsink name=endoedge_sink"


# ---------------------------------------------------------------------------------------------------------
# gst:// and rtsp:// through GStreamer; rtsp:// through FFmpeg as an alternative


class GstSource:
    """A GStreamer capture pipeline ending in ``appsink`` (see :class:`endoedge.edge.video.gst.AppSinkPipeline`).

    Args:
        uri: The source URI (for messages).
        pipeline: ``gst-launch`` description containing one ``appsink``; ``! videoconvert ! appsink`` is
            appended when it has none.
        fps: Nominal frame rate until the caps tell (``0``: unknown).
        finite: End-of-stream means the end of a file (:class:`EOFError`); otherwise it means the stream
            was lost (:class:`SourceError`, so a :class:`ReconnectingSource` reconnects).
        sync: Pace at the pipeline clock (for file pipelines).
        start_timeout: Seconds to wait for the pipeline to start.
    """

    def __init__(
        self,
        uri: str,
        pipeline: str,
        fps: float = 0.0,
        finite: bool = False,
        sync: bool = False,
        start_timeout: float = 5.0,
    ) -> None:
        from endoedge.edge.video.gst import AppSinkPipeline

        if "appsink" not in pipeline:
            pipeline = f"{pipeline} ! videoconvert ! appsink name=endoedge_sink"
        self.uri = uri
        self.fps = float(fps)
        self.finite = finite
        self._index = 0
        self._pipeline = AppSinkPipeline(pipeline, SourceError, uri, sync=sync, start_timeout=start_timeout)

    @property
    def dropped(self) -> int:
        """Frames that reached the appsink but were replaced by newer ones before being read."""
        return self._pipeline.dropped

    @property
    def captured(self) -> int:
        """Frames that reached the appsink."""
        return self._pipeline.arrived

    def read(self, timeout: float = 1.0) -> Frame | None:
        """Return the newest frame, or ``None`` after ``timeout`` seconds.

        Raises:
            SourceError: The pipeline failed, or a live stream ended.
            EOFError: A ``finite`` pipeline ended.
        """
        try:
            pulled = self._pipeline.pull(timeout)
        except EOFError:
            if self.finite:
                raise
            raise SourceError("the stream ended (end-of-stream from the pipeline)", self.uri) from None
        if pulled is None:
            return None
        image, pts, arrival = pulled
        if self._pipeline.fps:
            self.fps = self._pipeline.fps
        # The appsink holds only the newest frame, so its arrival count is this frame's sequence number.
        index = max(self._index, self._pipeline.arrived - 1)
        self._index = index + 1
        # The capture time is the source's own buffer stamp (or the arrival at the appsink), so the time
        # spent decoding in the pipeline and waiting for the reader counts in the daemon's video delay.
        return Frame(image=image, index=index, t_capture=arrival or time.monotonic(), pts=pts)

    def close(self) -> None:
        """Stop the pipeline."""
        self._pipeline.stop()


class FfmpegStreamSource(CapturedSource):
    """A network stream (``rtsp://``, ``http://``...) decoded by OpenCV's FFmpeg backend.

    Args:
        uri: Stream URI as FFmpeg understands it.
        open_timeout: Seconds to wait for the stream to open.
        read_timeout: Seconds without data before a read fails (the stream counts as lost).
    """

    def __init__(self, uri: str, open_timeout: float = 5.0, read_timeout: float = 5.0) -> None:
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            int(open_timeout * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            int(read_timeout * 1000),
        ]
        self._cap = cv2.VideoCapture(uri, cv2.CAP_FFMPEG, params)
        if not self._cap.isOpened():
            raise SourceError("cannot open the stream (unreachable, refused or not a video stream)", uri)
        fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        super().__init__(uri, fps if 1.0 <= fps <= 1000.0 else 30.0, pace=False)
        self._start()

    def _grab(self) -> tuple[np.ndarray, float | None]:
        ok, image = self._cap.read()
        if not ok or image is None:
            raise SourceError("the stream stopped delivering frames", self.uri)
        msec = self._cap.get(cv2.CAP_PROP_POS_MSEC)
        return image, (msec / 1000.0 if msec and msec > 0 else None)

    def _release(self) -> None:
        self._cap.release()


def rtsp_gst_pipeline(uri: str, latency_ms: int = 0, transport: str = "auto", jetson: bool = False) -> str:
    """A GStreamer pipeline receiving an RTSP stream into a BGR ``appsink``.

    ``latency=0`` keeps the jitter buffer from holding frames back; on a Jetson the hardware decoder is
    used for H.264/H.265 through ``decodebin`` picking ``nvv4l2decoder``.
    """
    protocols = {"auto": "", "tcp": " protocols=tcp", "udp": " protocols=udp"}
    if transport not in protocols:
        raise ConfigError(f"transport must be auto, tcp or udp, got {transport!r}", uri)
    convert = "nvvidconv ! video/x-raw,format=BGRx ! videoconvert" if jetson else "videoconvert"
    return (
        f"rtspsrc location={uri} latency={latency_ms}{protocols[transport]} ! decodebin ! {convert} "
        f"! video/x-raw,format=BGR ! appsink name=endoedge_sink"
    )


# ---------------------------------------------------------------------------------------------------------
# Reconnection


class ReconnectingSource:
    """Wrap a source factory: a lost source reads as ``None`` (no signal) while it is reopened with backoff.

    Each failed attempt doubles the wait (``initial_backoff`` up to ``max_backoff``); a successful open
    resets it. A live source that delivers nothing for ``stall_timeout`` seconds counts as lost too
    (a capture card whose cable was pulled often just stops). :class:`EOFError` of a finite source is
    passed through: the end of a file is not a lost signal. Configuration errors (bad URI or option,
    missing GStreamer) are raised, never retried.

    Args:
        factory: Opens the underlying source (e.g. ``lambda: open_source(uri)``).
        uri: The URI, for status and logs.
        initial_backoff: Seconds before the first reconnect attempt.
        max_backoff: Cap of the backoff.
        stall_timeout: Seconds without a frame before reconnecting (``0``: never).
        fps: Nominal frame rate reported before the first open succeeds.
    """

    def __init__(
        self,
        factory: Callable[[], Source],
        uri: str,
        initial_backoff: float = 0.5,
        max_backoff: float = 10.0,
        stall_timeout: float = 5.0,
        fps: float = 30.0,
    ) -> None:
        self.uri = uri
        self.fps = fps
        self._factory = factory
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.stall_timeout = stall_timeout
        self._source: Source | None = None
        self._backoff = initial_backoff
        self._next_attempt = 0.0
        self._last_frame_at = time.monotonic()
        self._ever_connected = False
        self.reconnects = 0
        self.failures = 0
        self.last_error: str | None = None
        self._index_offset = 0
        self._last_index = -1

    @property
    def connected(self) -> bool:
        """True while the underlying source is open."""
        return self._source is not None

    @property
    def current_backoff(self) -> float:
        """The wait before the next attempt after a failure."""
        return self._backoff

    def _open(self) -> bool:
        try:
            source = self._factory()
        except SourceError as exc:
            # Only a missing/broken device or stream is worth retrying; a bad URI, option or missing
            # dependency (ConfigError, MissingDependencyError) is raised to the caller at once.
            self._failed(str(exc))
            return False
        self._source = source
        self.fps = source.fps or self.fps
        self._last_frame_at = time.monotonic()
        if self._ever_connected:
            self.reconnects += 1
            log.info("%s: reconnected (reconnect %d)", self.uri, self.reconnects)
        self._ever_connected = True
        self._backoff = self.initial_backoff
        # Keep frame indices increasing across reconnects.
        self._index_offset = self._last_index + 1
        return True

    def _failed(self, reason: str) -> None:
        self.failures += 1
        self.last_error = reason
        self._next_attempt = time.monotonic() + self._backoff
        log.warning("%s: %s; retrying in %.1f s", self.uri, reason, self._backoff)
        self._backoff = min(self._backoff * 2.0, self.max_backoff)

    def _drop_source(self, reason: str) -> None:
        if self._source is not None:
            try:
                self._source.close()
            except Exception as exc:  # closing a broken device may fail too; the reason is already known
                log.debug("%s: close after failure: %s", self.uri, exc)
            self._source = None
        self._failed(reason)

    def read(self, timeout: float = 1.0) -> Frame | None:
        """Return a frame, or ``None`` on timeout or while the source is lost; never raises on a loss.

        Raises:
            EOFError: A finite source ended.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        if self._source is None:
            wait = self._next_attempt - time.monotonic()
            if wait > 0:
                time.sleep(min(wait, max(0.0, deadline - time.monotonic())))
                if time.monotonic() < self._next_attempt:
                    return None
            if not self._open():
                return None
        assert self._source is not None
        try:
            frame = self._source.read(max(0.0, deadline - time.monotonic()))
        except SourceError as exc:
            self._drop_source(exc.message)
            return None
        now = time.monotonic()
        if frame is None:
            if self.stall_timeout and now - self._last_frame_at > self.stall_timeout:
                self._drop_source(f"no frame for {self.stall_timeout:g} s")
            return None
        self._last_frame_at = now
        if self._source.fps:
            self.fps = self._source.fps
        index = frame.index + self._index_offset
        self._last_index = index
        if index != frame.index:
            frame = Frame(image=frame.image, index=index, t_capture=frame.t_capture, pts=frame.pts)
        return frame

    def close(self) -> None:
        """Close the underlying source."""
        if self._source is not None:
            self._source.close()
            self._source = None


# ---------------------------------------------------------------------------------------------------------
# Registry


@dataclass(frozen=True)
class SourceKind:
    """One URI scheme of the source registry."""

    scheme: str
    options: Mapping[str, tuple[type, Any]]
    open: Callable[[str, str, dict[str, Any]], Source]
    description: str
    parse_query: bool = True


def _open_file(uri: str, target: str, o: dict[str, Any]) -> Source:
    return VideoFileSource(uri, target, loop=o["loop"], as_fast_as_possible=o["as_fast_as_possible"], fps=o["fps"])


def _open_images(uri: str, target: str, o: dict[str, Any]) -> Source:
    return ImageFolderSource(
        uri, target, fps=o["fps"], loop=o["loop"], as_fast_as_possible=o["as_fast_as_possible"], size=o["size"]
    )


def _open_v4l2(uri: str, target: str, o: dict[str, Any]) -> Source:
    backend = o["backend"]
    if backend == "opencv":
        return V4L2Source(
            uri,
            target,
            fourcc=o["fourcc"],
            width=o["width"],
            height=o["height"],
            fps=o["fps"],
            buffer_size=o["buffer_size"],
        )
    if backend == "gst":
        if not os.path.exists(target):
            present = ", ".join(v4l2_devices()) or "none"
            raise SourceError(f"no such capture device (video devices present: {present})", target)
        from endoedge.edge.video.gst import is_jetson

        pipeline = v4l2_gst_pipeline(target, o["fourcc"], o["width"], o["height"], o["fps"], jetson=is_jetson())
        return GstSource(uri, pipeline, fps=o["fps"])
    raise ConfigError(f"backend must be opencv or gst, got {backend!r}", uri)


def _open_gst(uri: str, target: str, o: dict[str, Any]) -> Source:
    return GstSource(uri, target, fps=o["fps"], finite=o["finite"], sync=o["sync"], start_timeout=o["start_timeout"])


def _open_rtsp(uri: str, target: str, o: dict[str, Any]) -> Source:
    stream = uri.split("?", 1)[0]
    if o["backend"] == "ffmpeg":
        return FfmpegStreamSource(stream, open_timeout=o["start_timeout"], read_timeout=o["start_timeout"])
    if o["backend"] != "gst":
        raise ConfigError(f"backend must be gst or ffmpeg, got {o['backend']!r}", uri)
    from endoedge.edge.video.gst import is_jetson

    pipeline = rtsp_gst_pipeline(stream, o["latency"], o["transport"], jetson=is_jetson())
    return GstSource(uri, pipeline, start_timeout=o["start_timeout"])


SOURCES: Mapping[str, SourceKind] = {
    kind.scheme: kind
    for kind in (
        SourceKind(
            "v4l2",
            {
                "fourcc": (str, None),
                "width": (int, 0),
                "height": (int, 0),
                "fps": (float, 0.0),
                "buffer_size": (int, 1),
                "backend": (str, "opencv"),
            },
            _open_v4l2,
            "V4L2 capture card or UVC grabber: v4l2:///dev/video0?fourcc=MJPG&width=1920&height=1080&fps=60",
        ),
        SourceKind(
            "file",
            {"loop": (bool, False), "as_fast_as_possible": (bool, False), "fps": (float, None)},
            _open_file,
            "video file, paced at its frame rate: file://clip.mp4?loop=1",
        ),
        SourceKind(
            "images",
            {"fps": (float, 30.0), "loop": (bool, False), "as_fast_as_possible": (bool, False), "size": (str, None)},
            _open_images,
            "folder of images played as video: images://folder?fps=5",
        ),
        SourceKind(
            "gst",
            {"fps": (float, 0.0), "finite": (bool, False), "sync": (bool, False), "start_timeout": (float, 5.0)},
            _open_gst,
            "GStreamer pipeline ending in appsink: gst://videotestsrc is-live=true ! videoconvert ! appsink",
            parse_query=False,
        ),
        SourceKind(
            "rtsp",
            {"latency": (int, 0), "transport": (str, "auto"), "backend": (str, "gst"), "start_timeout": (float, 5.0)},
            _open_rtsp,
            "RTSP stream through GStreamer (or backend=ffmpeg): rtsp://host/stream?latency=0",
        ),
    )
}


def open_source(uri: str, **options: Any) -> Source:
    """Open a video source by URI.

    Args:
        uri: ``v4l2://``, ``file://``, ``images://``, ``gst://`` or ``rtsp://`` URI; options may follow
            as a query string (except ``gst://``).
        **options: Options of the scheme (they override the query string).

    Raises:
        ConfigError: Unknown scheme (valid ones listed), unknown option or bad value.
        SourceError: The device, file or stream cannot be opened.
        MissingDependencyError: A GStreamer source without GStreamer installed.
    """
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme not in SOURCES:
        valid = ", ".join(f"{s}://" for s in SOURCES)
        raise ConfigError(f"unknown video source scheme {scheme + '://' if scheme else uri!r} (valid: {valid})", uri)
    kind = SOURCES[scheme]
    _, target, query = split_uri(uri, parse_query=kind.parse_query)
    merged = {**query, **options}
    if not target:
        raise ConfigError("the URI names no device, file or pipeline", uri)
    return kind.open(uri, target, coerce_options(kind.options, merged, uri))
