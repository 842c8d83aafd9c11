"""Contracts between the edge daemon's parts: frames, sources, sinks and backends.

Everything here is plain data or a :class:`typing.Protocol`; the implementations live in
``video/`` (sources, sinks), ``backends/`` and ``service/`` (the daemon). The types the pure stages share
(overlay state, exam checks, coverage cells) are in :mod:`endoedge.edge.stages.types`.

Conventions:
    * Frame pixels are ``uint8`` ``H×W×3`` **BGR** (OpenCV order), C-contiguous.
    * Times are ``time.monotonic()`` seconds. The pure stages see a frame's *media time* instead
      (:attr:`Frame.media_time`): the capture time live, the presentation time on a replay.
    * A backend's ``infer`` takes the ``uint8`` pixels produced by
      :func:`endoedge.core.preprocess.prepare_pixels` (already cropped, resized and in the model's
      channel order, ``N×H×W×3``) and returns ``float32`` probabilities ``N×C``. Normalisation,
      quantisation and layout are the backend's job and come only from the bundle's manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
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
        t_media: Media time, set by the daemon's :class:`~endoedge.edge.service.media_clock.MediaClock`
            (``None`` until then).
    """

    image: np.ndarray
    index: int
    t_capture: float
    pts: float | None = None
    t_media: float | None = None

    @property
    def media_time(self) -> float:
        """The time the pure stages see: :attr:`t_media` once stamped, else the capture time."""
        return self.t_capture if self.t_media is None else self.t_media


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
