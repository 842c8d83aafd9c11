"""GStreamer through PyGObject, imported only when a ``gst://``, ``rtsp://``, ``hdmi://`` or ``window://``
URI is used.

The pip OpenCV has no GStreamer, so the daemon talks to GStreamer directly:

* :class:`AppSinkPipeline` runs a capture pipeline ending in ``appsink`` (``drop=true max-buffers=1``,
  BGR caps) and pulls the newest frame as a numpy array. GStreamer's own streaming thread is the capture
  thread: the appsink holds at most one frame, so a slow reader never sees stale frames; a pad probe
  counts every frame that arrived, so frames the reader never took are counted as dropped.
* :class:`AppSrcPipeline` feeds BGR frames into ``appsrc`` (``block=false``, ``leaky-type=downstream``,
  a queue of two frames) in front of any sink chain; ``push`` copies the frame into a buffer and returns
  at once, whatever the display or encoder does.

Neither needs a GLib main loop: the pipeline bus is polled after every pull or push, so a pipeline
error surfaces as one exception naming the element and GStreamer's message.

On Debian/Ubuntu: ``apt install python3-gi gir1.2-gst-plugins-base-1.0 gstreamer1.0-plugins-good
gstreamer1.0-x``; on a Jetson, JetPack ships them. A virtualenv must be created with
``--system-site-packages`` to see them.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from endoedge.core.errors import EndoedgeError, MissingDependencyError

#: Marker file present on NVIDIA Jetson (L4T) systems.
TEGRA_RELEASE = Path("/etc/nv_tegra_release")

_INSTALL_HINT = (
    "GStreamer's Python bindings are not available: install python3-gi, gir1.2-gst-plugins-base-1.0 and "
    "gstreamer1.0-plugins-base/-good (JetPack ships them) and create the virtualenv with --system-site-packages"
)
_lock = threading.Lock()
_modules: tuple[ModuleType, ModuleType, ModuleType] | None = None
_import_error: str | None = None


class GstError(EndoedgeError):
    """A GStreamer pipeline could not be built, failed to start or reported an error."""


def _preload_freetype_users() -> None:
    """Import matplotlib's image module before GStreamer when matplotlib is installed.

    With the pinned wheels, importing ``matplotlib.image`` (its C extensions) *after* GStreamer's
    typelibs (``GstApp``/``GstVideo``) were loaded crashes the process with SIGSEGV/SIGABRT; TensorFlow
    → Keras → matplotlib does exactly that when a desktop tool (tests, ``endoedge bench``) loaded
    GStreamer first. The other order is fine.
    matplotlib is not part of ``endoedge[edge]``, so on a Jetson this does nothing.
    """
    with contextlib.suppress(ImportError):
        importlib.import_module("matplotlib.image")


def load_gst() -> tuple[Any, Any, Any]:
    """Import and initialise GStreamer once.

    Returns:
        The ``Gst``, ``GstApp`` and ``GstVideo`` modules.

    Raises:
        MissingDependencyError: PyGObject or the GStreamer typelibs are missing (says what to install).
    """
    global _modules, _import_error
    with _lock:
        if _modules is not None:
            return _modules
        if _import_error is not None:
            raise MissingDependencyError(f"{_INSTALL_HINT} ({_import_error})")
        _preload_freetype_users()
        try:
            import gi

            gi.require_version("Gst", "1.0")
            gi.require_version("GstApp", "1.0")
            gi.require_version("GstVideo", "1.0")
            from gi.repository import Gst, GstApp, GstVideo
        except (ImportError, ValueError) as exc:
            _import_error = " ".join(str(exc).split())
            raise MissingDependencyError(f"{_INSTALL_HINT} ({_import_error})") from None
        Gst.init(None)
        _modules = (Gst, GstApp, GstVideo)
        return _modules


def gst_available() -> bool:
    """True when GStreamer and its Python bindings can be loaded here."""
    try:
        load_gst()
    except MissingDependencyError:
        return False
    return True


def element_available(name: str) -> bool:
    """True when a GStreamer element factory called ``name`` is installed."""
    if not gst_available():
        return False
    gst = load_gst()[0]
    return gst.ElementFactory.find(name) is not None


def require_elements(names: list[str], what: str) -> None:
    """Raise a clear error when one of the elements a pipeline needs is not installed.

    Args:
        names: Element factory names.
        what: What the pipeline is for, for the message (e.g. ``"hdmi:// output"``).

    Raises:
        GstError: Naming the first missing element and the package that usually provides it.
    """
    packages = {
        "kmssink": "gstreamer1.0-plugins-bad",
        "nvvidconv": "JetPack's nvidia-l4t-gstreamer",
        "nvdrmvideosink": "JetPack's nvidia-l4t-gstreamer",
        "nvv4l2decoder": "JetPack's nvidia-l4t-gstreamer",
        "x264enc": "gstreamer1.0-plugins-ugly",
        "avdec_h264": "gstreamer1.0-libav",
        "xvimagesink": "gstreamer1.0-x",  # Debian/Ubuntu split the X11 sinks out of plugins-base
        "ximagesink": "gstreamer1.0-x",
        "rtspsrc": "gstreamer1.0-plugins-good",
        "v4l2src": "gstreamer1.0-plugins-good",
        "jpegdec": "gstreamer1.0-plugins-good",
    }
    load_gst()
    for name in names:
        if not element_available(name):
            hint = packages.get(name, "the GStreamer plugin package that provides it")
            raise GstError(f"GStreamer element {name!r} is not installed (install {hint})", what)


def is_jetson(release_file: Path = TEGRA_RELEASE) -> bool:
    """True on an NVIDIA Jetson (L4T writes ``/etc/nv_tegra_release``)."""
    return release_file.exists()


def caps_framerate(fps: float) -> str:
    """A GStreamer fraction string for a frame rate (``30000/1001`` for 29.97)."""
    for num, den in ((24000, 1001), (30000, 1001), (60000, 1001)):
        if abs(fps - num / den) < 1e-3:
            return f"{num}/{den}"
    if float(fps).is_integer():
        return f"{int(fps)}/1"
    return f"{round(fps * 1000)}/1000"


def _bus_problem(pipeline: Any, gst: Any) -> tuple[str, str] | None:
    """Pop the first error or end-of-stream message from a pipeline's bus without waiting.

    Returns:
        ``("error", text)``, ``("eos", "")`` or ``None`` when the bus holds neither.
    """
    bus = pipeline.get_bus()
    while True:
        message = bus.pop_filtered(gst.MessageType.ERROR | gst.MessageType.EOS)
        if message is None:
            return None
        if message.type == gst.MessageType.EOS:
            return ("eos", "")
        err, debug = message.parse_error()
        source = message.src.get_name() if message.src is not None else "pipeline"
        detail = (debug or "").strip().splitlines()
        extra = f" ({detail[-1].strip()})" if detail else ""
        return ("error", f"{source}: {err.message}{extra}")


class _Pipeline:
    """Shared start/stop logic of the appsink and appsrc pipelines."""

    def __init__(self, description: str, error: type[EndoedgeError], where: str) -> None:
        self.gst, self.gst_app, self.gst_video = load_gst()
        self.description = description
        self.error = error
        self.where = where
        try:
            self.pipeline = self.gst.parse_launch(description)
        except Exception as exc:  # GLib.Error from a syntax error or an unknown element
            message = getattr(exc, "message", None) or str(exc)
            raise error(f"cannot build GStreamer pipeline {description!r}: {message}", where) from None
        if not isinstance(self.pipeline, self.gst.Pipeline):
            # A description of a single element parses to that element; wrap it so it has a bus.
            wrapper = self.gst.Pipeline.new(None)
            wrapper.add(self.pipeline)
            self.pipeline = wrapper
        self._stopped = False
        self._early_eos = False

    def _start(self, timeout: float) -> None:
        result = self.pipeline.set_state(self.gst.State.PLAYING)
        if result == self.gst.StateChangeReturn.FAILURE:
            problem = _bus_problem(self.pipeline, self.gst)
            self.stop()
            text = problem[1] if problem else "state change to PLAYING failed"
            raise self.error(f"GStreamer pipeline failed to start: {text}", self.where)
        # Live pipelines answer NO_PREROLL at once; others preroll (bounded wait so a dead network
        # source cannot hang the caller).
        result, _, _ = self.pipeline.get_state(int(timeout * 1e9))
        problem = _bus_problem(self.pipeline, self.gst)
        if result == self.gst.StateChangeReturn.FAILURE or (problem and problem[0] == "error"):
            self.stop()
            text = problem[1] if problem else "state change to PLAYING failed"
            raise self.error(f"GStreamer pipeline failed to start: {text}", self.where)
        if problem and problem[0] == "eos":
            self._early_eos = True

    def check_bus(self) -> str | None:
        """Raise on a pipeline error; return ``"eos"`` after end-of-stream, else ``None``."""
        problem = _bus_problem(self.pipeline, self.gst)
        if problem is None:
            return None
        if problem[0] == "error":
            raise self.error(f"GStreamer error: {problem[1]}", self.where)
        return "eos"

    def stop(self) -> None:
        """Set the pipeline to NULL (idempotent)."""
        if not self._stopped:
            self._stopped = True
            self.pipeline.set_state(self.gst.State.NULL)


class AppSinkPipeline(_Pipeline):
    """A capture pipeline whose ``appsink`` delivers the newest BGR frame.

    Args:
        description: ``gst-launch`` syntax; must contain one ``appsink`` (its caps are set to BGR when
            the description leaves them open).
        error: Exception class for failures (e.g. the sources' ``SourceError``).
        where: What to name in error messages (the URI).
        sync: Let the appsink wait for the pipeline clock (pace a file pipeline at its own rate).
        start_timeout: Seconds to wait for the pipeline to start.
    """

    def __init__(
        self,
        description: str,
        error: type[EndoedgeError] = GstError,
        where: str = "gst://",
        sync: bool = False,
        start_timeout: float = 5.0,
    ) -> None:
        super().__init__(description, error, where)
        sinks = [e for e in self._elements() if e.get_factory() and e.get_factory().get_name() == "appsink"]
        if len(sinks) != 1:
            self.stop()
            raise error(f"the pipeline must contain exactly one appsink, found {len(sinks)}", where)
        self.appsink = sinks[0]
        self.appsink.set_property("drop", True)
        self.appsink.set_property("max-buffers", 1)
        self.appsink.set_property("sync", sync)
        self.appsink.set_property("emit-signals", False)
        if self.appsink.get_property("caps") is None:
            self.appsink.set_property("caps", self.gst.Caps.from_string("video/x-raw,format=BGR"))
        self.arrived = 0
        self.last_arrival = 0.0
        self._arrived_at_last_pull = 0
        self._dropped = 0
        self._count_lock = threading.Lock()
        pad = self.appsink.get_static_pad("sink")
        pad.add_probe(self.gst.PadProbeType.BUFFER, self._on_buffer)
        self.fps = 0.0
        self.width = 0
        self.height = 0
        self._eos = False
        self._start(start_timeout)

    def _elements(self) -> list[Any]:
        found = []
        iterator = self.pipeline.iterate_recurse()
        while True:
            result, element = iterator.next()
            if result != self.gst.IteratorResult.OK:
                break
            found.append(element)
        return found

    def _on_buffer(self, pad: Any, info: Any) -> Any:
        now = time.monotonic()
        with self._count_lock:
            self.arrived += 1
            self.last_arrival = now
        return self.gst.PadProbeReturn.OK

    @property
    def dropped(self) -> int:
        """Frames that reached the appsink but were replaced by a newer one before being pulled."""
        with self._count_lock:
            return self._dropped

    def pull(self, timeout: float) -> tuple[np.ndarray, float | None, float] | None:
        """Wait up to ``timeout`` seconds for a frame.

        Returns:
            ``(bgr image, pts seconds or None, monotonic time the frame reached the appsink)``, or
            ``None`` on timeout.

        Raises:
            EOFError: The pipeline reached end-of-stream.
            error: The pipeline reported an error (the device vanished, the stream broke, ...).
        """
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            if self.check_bus() == "eos" or self._early_eos:
                self._eos = True
            if self._eos:
                raise EOFError(f"{self.where}: end of stream")
            # Pull in short slices so an error on the bus is noticed while waiting.
            remaining = deadline - time.monotonic()
            slice_s = min(0.1, max(0.0, remaining))
            sample = self.appsink.try_pull_sample(int(slice_s * 1e9))
            if sample is not None:
                with self._count_lock:
                    # Every frame that arrived since the last pull, except this one, was replaced unseen.
                    self._dropped += max(0, self.arrived - self._arrived_at_last_pull - 1)
                    self._arrived_at_last_pull = self.arrived
                    arrival = self.last_arrival
                image, pts = self._to_array(sample)
                return image, pts, self._capture_time(sample, arrival)
            if self.appsink.get_property("eos"):
                self._eos = True
                continue
            if remaining <= 0:
                return None

    def _capture_time(self, sample: Any, arrival: float) -> float:
        """When the frame was captured, as a ``time.monotonic()`` time.

        A live source stamps each buffer with its running time at capture (v4l2src with the driver's
        timestamp); base time + running time is then a reading of the pipeline clock, which is
        CLOCK_MONOTONIC (the clock ``time.monotonic()`` reads) when it is GStreamer's system clock. So
        decoding and conversion inside the pipeline count in the video delay. Otherwise, or when the
        result is not within a second before the frame reached the appsink, the arrival time is used.
        """
        buffer = sample.get_buffer()
        clock = self.pipeline.get_clock()
        if buffer.pts == self.gst.CLOCK_TIME_NONE or clock is None:
            return arrival
        if not isinstance(clock, self.gst.SystemClock) or clock.get_property("clock-type") != (
            self.gst.ClockType.MONOTONIC
        ):
            return arrival
        segment = sample.get_segment()
        running = segment.to_running_time(self.gst.Format.TIME, buffer.pts) if segment is not None else buffer.pts
        if running == self.gst.CLOCK_TIME_NONE or running < 0:
            return arrival
        captured = (self.pipeline.get_base_time() + running) / 1e9
        return captured if arrival - 1.0 <= captured <= arrival else arrival

    def _to_array(self, sample: Any) -> tuple[np.ndarray, float | None]:
        caps = sample.get_caps()
        structure = caps.get_structure(0)
        fmt = structure.get_value("format")
        if fmt != "BGR":
            raise self.error(f"the appsink receives {fmt!r} frames; put 'videoconvert !' before it", self.where)
        info = self.gst_video.VideoInfo.new_from_caps(caps)
        width, height, stride = info.width, info.height, info.stride[0]
        ok, num, den = structure.get_fraction("framerate")
        if ok and den:
            self.fps = num / den
        self.width, self.height = width, height
        buffer = sample.get_buffer()
        ok, mapping = buffer.map(self.gst.MapFlags.READ)
        if not ok:
            raise self.error("cannot map a captured GStreamer buffer", self.where)
        try:
            rows = np.ndarray((height, stride), np.uint8, buffer=mapping.data)
            # One copy: drops the row padding (BGR rows are padded to 4 bytes) and detaches the frame
            # from GStreamer's memory, which is reused once unmapped.
            image = np.array(rows[:, : width * 3]).reshape(height, width, 3)
        finally:
            buffer.unmap(mapping)
        pts = buffer.pts / 1e9 if buffer.pts != self.gst.CLOCK_TIME_NONE else None
        return image, pts


class AppSrcPipeline(_Pipeline):
    """An output pipeline fed with BGR frames through ``appsrc``.

    ``appsrc`` is live, never blocks and keeps at most ``queue_frames`` frames, dropping the oldest when
    the downstream chain (display, encoder) falls behind, so :meth:`push` costs one frame copy.

    Args:
        tail: The chain after ``appsrc`` (e.g. ``"videoconvert ! ximagesink"``).
        width: Frame width the chain is negotiated for.
        height: Frame height.
        fps: Nominal frame rate (caps and buffer durations).
        error: Exception class for failures (e.g. the sinks' ``SinkError``).
        where: What to name in error messages (the URI).
        queue_frames: Frames ``appsrc`` may hold before it drops the oldest.
        start_timeout: Seconds to wait for the pipeline to start.
    """

    def __init__(
        self,
        tail: str,
        width: int,
        height: int,
        fps: float,
        error: type[EndoedgeError] = GstError,
        where: str = "gst://",
        queue_frames: int = 2,
        start_timeout: float = 5.0,
    ) -> None:
        self.width, self.height, self.fps = width, height, fps
        caps = f"video/x-raw,format=BGR,width={width},height={height},framerate={caps_framerate(fps)}"
        head = (
            f"appsrc name=endoedge_src is-live=true format=time do-timestamp=false block=false "
            f"leaky-type=downstream max-buffers={queue_frames} max-bytes=0 caps={caps}"
        )
        super().__init__(f"{head} ! {tail}", error, where)
        self.appsrc = self.pipeline.get_by_name("endoedge_src")
        self._t0: float | None = None
        self._frame_ns = int(1e9 / fps) if fps > 0 else 0
        self.pushed = 0
        self.passed = 0
        self.appsrc.get_static_pad("src").add_probe(self.gst.PadProbeType.BUFFER, self._on_output)
        self._start(start_timeout)

    def _on_output(self, pad: Any, info: Any) -> Any:
        self.passed += 1  # only GStreamer's streaming thread writes this counter
        return self.gst.PadProbeReturn.OK

    @property
    def dropped(self) -> int:
        """Frames ``appsrc`` discarded because the chain behind it was still busy (leaky queue)."""
        queued = int(self.appsrc.get_property("current-level-buffers"))
        return max(0, self.pushed - self.passed - queued)

    def push(self, image: np.ndarray, t_capture: float) -> None:
        """Copy one BGR frame into the pipeline without waiting for it to be shown.

        Raises:
            error: The pipeline reported an error (display gone, disk full, ...).
        """
        if self.check_bus() == "eos":
            raise self.error("the output pipeline ended unexpectedly", self.where)
        if self._t0 is None:
            self._t0 = t_capture
        buffer = self._buffer_from(image)
        buffer.pts = max(0, int((t_capture - self._t0) * 1e9))
        buffer.duration = self._frame_ns
        result = self.appsrc.emit("push-buffer", buffer)
        if result not in (self.gst.FlowReturn.OK,):
            problem = self.check_bus()
            raise self.error(f"the output pipeline refused a frame ({result.value_nick}, {problem})", self.where)
        self.pushed += 1

    def _buffer_from(self, image: np.ndarray) -> Any:
        """A new GStreamer buffer holding a copy of ``image`` (one memcpy when the bindings allow)."""
        buffer = self.gst.Buffer.new_allocate(None, image.nbytes, None)
        ok, mapping = buffer.map(self.gst.MapFlags.WRITE)
        if ok:
            try:
                view = mapping.data
                if isinstance(view, memoryview) and not view.readonly:
                    np.copyto(np.ndarray(image.shape, np.uint8, buffer=view), image)
                    return buffer
            finally:
                buffer.unmap(mapping)
        # Older PyGObject maps read-only: fall back to two copies (tobytes, then GStreamer's own).
        return self.gst.Buffer.new_wrapped(np.ascontiguousarray(image).tobytes())

    def finish(self, timeout: float = 5.0) -> None:
        """Send end-of-stream, wait for it to reach the sinks (so muxers write their index), stop."""
        if self._stopped:
            return
        try:
            self.appsrc.emit("end-of-stream")
            bus = self.pipeline.get_bus()
            bus.timed_pop_filtered(int(timeout * 1e9), self.gst.MessageType.EOS | self.gst.MessageType.ERROR)
        finally:
            self.stop()


def run_until_eos(description: str, timeout: float = 30.0) -> None:
    """Run a self-contained pipeline (e.g. an encoder writing a test clip) until it ends.

    Raises:
        GstError: The pipeline failed or did not finish within ``timeout`` seconds.
    """
    gst = load_gst()[0]
    try:
        pipeline = gst.parse_launch(description)
    except Exception as exc:
        raise GstError(f"cannot build pipeline: {getattr(exc, 'message', exc)}", description) from None
    pipeline.set_state(gst.State.PLAYING)
    try:
        message = pipeline.get_bus().timed_pop_filtered(int(timeout * 1e9), gst.MessageType.EOS | gst.MessageType.ERROR)
        if message is None:
            raise GstError(f"did not finish within {timeout:g} s", description)
        if message.type == gst.MessageType.ERROR:
            err, _ = message.parse_error()
            raise GstError(err.message, description)
    finally:
        pipeline.set_state(gst.State.NULL)
