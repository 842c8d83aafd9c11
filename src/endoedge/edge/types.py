"""Contracts between the edge daemon's parts: frames, sources, sinks, backends and the overlay state.

Everything here is plain data or a :class:`typing.Protocol`; the implementations live in
``sources.py``, ``sinks.py``, ``backends/``, ``overlay.py`` and ``daemon.py``.

Conventions:
    * Frame pixels are ``uint8`` ``H×W×3`` **BGR** (OpenCV order), C-contiguous.
    * Times are ``time.monotonic()`` seconds.
    * A backend's ``infer`` takes the ``uint8`` pixels produced by
      :func:`endoedge.core.preprocess.prepare_pixels` (already cropped, resized and in the model's
      channel order, ``N×H×W×3``) and returns ``float32`` probabilities ``N×C``. Normalisation,
      quantisation and layout are the backend's job and come only from the bundle's manifest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from endoedge.core.manifest import ModelManifest


@dataclass(frozen=True)
class Frame:
    """One captured video frame.

    Attributes:
        image: ``uint8`` BGR pixels.
        index: Sequence number from the source (0-based, counts every frame read).
        t_capture: ``time.monotonic()`` when the frame was captured (or read from a file).
        pts: Presentation time in seconds from the source's start (file/stream time), if known.
    """

    image: np.ndarray
    index: int
    t_capture: float
    pts: float | None = None


@runtime_checkable
class Source(Protocol):
    """A video source addressed by URI (``v4l2://``, ``file://``, ``images://``, ``gst://``, ``rtsp://``)."""

    uri: str
    fps: float

    def read(self, timeout: float = 1.0) -> Frame | None:
        """Return the next frame, or ``None`` when none arrived within ``timeout`` seconds.

        Raises:
            EOFError: A finite source (file, folder) has no more frames and is not looping.
        """
        ...

    def close(self) -> None:
        """Release the device or file."""
        ...


@runtime_checkable
class Sink(Protocol):
    """A video sink addressed by URI (``hdmi://``, ``window://``, ``file://out.mp4``, ``null://``)."""

    uri: str

    def write(self, image: np.ndarray, t_capture: float) -> None:
        """Hand one BGR frame to the output; must not block for long (the display path is timed)."""
        ...

    def close(self) -> None:
        """Flush and release the output."""
        ...


@runtime_checkable
class Backend(Protocol):
    """An inference runtime loaded from a bundle (see ``endoedge.edge.backends``)."""

    name: str
    format: str
    manifest: ModelManifest

    def infer(self, pixels: np.ndarray) -> np.ndarray:
        """``uint8`` ``N×H×W×3`` pixels in model channel order → ``float32`` ``N×C`` probabilities."""
        ...

    def close(self) -> None:
        """Free the runtime's resources."""
        ...


#: English names of the exam quality checks, for reports, logs and the English overlay. The overlay
#: takes other languages' names from its own word table (``overlay.UI_TEXT``, keys ``check_<key>``).
EXAM_CHECK_NAMES = {
    "inspection": "inspection >= {minutes:g} min",
    "sites": "sites observed",
    "photos": "landmarks photographed",
}


@dataclass(frozen=True)
class ExamCheck:
    """One exam quality check (in the spirit of the ESGE upper-GI measures).

    Kept structured rather than as a sentence so the overlay can word it in its own language.

    Attributes:
        key: ``inspection``, ``sites`` or ``photos`` (a key of :data:`EXAM_CHECK_NAMES`).
        passed: Whether the exam meets it (so far).
        detail: The measured value, e.g. ``"3:12"`` or ``"10/30"``.
        minutes: The inspection-time threshold (``inspection`` only).
    """

    key: str
    passed: bool
    detail: str
    minutes: float = 0.0

    @property
    def name(self) -> str:
        """English name, e.g. ``"inspection >= 7 min"``."""
        return EXAM_CHECK_NAMES[self.key].format(minutes=self.minutes)

    def line(self, template: str | None = None) -> str:
        """Short overlay line, e.g. ``"inspection >= 7 min: 3:12 --"``.

        Args:
            template: The check's name in another language (``{minutes}`` is filled in).
        """
        name = (template or EXAM_CHECK_NAMES[self.key]).format(minutes=self.minutes)
        return f"{name}: {self.detail} {'OK' if self.passed else '--'}"


@dataclass(frozen=True)
class SiteCell:
    """One label's cell in the overlay's coverage map."""

    key: str
    name: str
    name_zh: str
    region: str
    view: str
    required: bool
    observed: bool
    seconds: float = 0.0


@dataclass(frozen=True)
class OverlayState:
    """Everything the overlay renderer draws, computed by the daemon's pure stages.

    Attributes:
        label: Display name of the current (smoothed) class, or ``None`` when nothing is confident.
        label_zh: Chinese name of it ("" when none).
        confidence: Smoothed probability of ``label``.
        coverage: One cell per label of a coverage task (empty when no coverage task runs).
        exam_seconds: Exam timer (``None`` when no exam is running).
        exam_checks: Exam quality checks, worded by the overlay in its language.
        grade: Hemorrhoid task text (e.g. ``"Hemorrhoid 0.93 · LDRf Rf1 0.81"``) or ``None``.
        grade_zh: The same with the labels' Chinese names ("" when none).
        ai_status: ``ok``, ``off`` (backend failed or absent: banner) or ``warming``.
        signal: False when the source has no signal (the "no signal" screen).
        message: Extra banner text (reason of AI off, etc.).
        fps_in: Source frame rate, for the status corner.
        infer_ms: Latest inference time.
        language: ``en`` or ``zh``.
    """

    label: str | None = None
    label_zh: str = ""
    confidence: float = 0.0
    coverage: tuple[SiteCell, ...] = ()
    exam_seconds: float | None = None
    exam_checks: tuple[ExamCheck, ...] = ()
    grade: str | None = None
    grade_zh: str = ""
    ai_status: str = "ok"
    signal: bool = True
    message: str = ""
    fps_in: float = 0.0
    infer_ms: float = 0.0
    language: str = "en"
    extra: dict[str, str] = field(default_factory=dict)
