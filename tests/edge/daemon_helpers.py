"""Shared pieces of the daemon tests: a clip stitched from the real sample images, configs, backend wrappers."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from endoedge.core.preprocess import read_image
from endoedge.core.synthetic import TowerLayout, tower_frame
from endoedge.edge.config import DaemonConfig, ModelConfig, config_from_dict
from endoedge.edge.service.worker import load_backend
from endoedge.edge.stages.types import OverlayState
from endoedge.edge.types import Backend

SMALL = TowerLayout(width=640, height=360, field_size=320, field_left=250)
FULL_HD = TowerLayout()


def write_clip(images: list[Path], out: Path, layout: TowerLayout, frames_per_image: int, fps: float = 30.0) -> Path:
    """An mp4 of tower frames (fake OSD, black margins) around the real images, each held for some frames."""
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, (layout.width, layout.height))
    assert writer.isOpened()
    for path in images:
        frame = tower_frame(read_image(path), layout)
        for _ in range(frames_per_image):
            writer.write(frame)
    writer.release()
    return out


def decode(path: Path) -> list[np.ndarray]:
    """Every frame of a video file."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


def make_config(tmp: Path, clip: Path, bundle: Path, **sections: Any) -> DaemonConfig:
    """A daemon config for tests: file source, null sink, one coverage task, status on a free port."""
    data: dict[str, Any] = {
        "source": {"uri": f"file://{clip}"},
        "sink": {"uri": "null://"},
        "models": [{"name": "sites", "bundle": str(bundle), "backend": "tflite", "options": {"threads": 1}}],
        "tasks": [{"type": "egd-coverage", "model": "sites", "observe_frames": 2, "observe_s": 0.2}],
        "status": {"port": 0},
        "report": {"dir": str(tmp / "reports")},
        "state": {"dir": str(tmp / "state"), "checkpoint_every_s": 0.3},
        "exam": {"start_after_s": 0.2, "end_after_s": 5.0},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return config_from_dict(data)


class WrappedBackend:
    """A real backend with an injected behaviour per call (delay, exception, NaN, hang)."""

    def __init__(self, inner: Backend, behaviour: Callable[[int], str | float | None]) -> None:
        self.inner = inner
        self.name = inner.name
        self.format = inner.format
        self.manifest = inner.manifest
        self.behaviour = behaviour
        self.calls = 0
        self.closed = False

    def infer(self, pixels: np.ndarray) -> np.ndarray:
        self.calls += 1
        action = self.behaviour(self.calls)
        if isinstance(action, float):
            time.sleep(action)
        elif action == "raise":
            raise RuntimeError("injected backend failure")
        elif action == "nan":
            return np.full((len(pixels), self.manifest.num_classes), np.nan, np.float32)
        elif action == "shape":
            return np.zeros((len(pixels), self.manifest.num_classes + 2), np.float32)
        elif action == "hang":
            time.sleep(3.0)
        return self.inner.infer(pixels)

    def close(self) -> None:
        self.closed = True
        self.inner.close()


def wrapping_factory(behaviour: Callable[[int], str | float | None], created: list[WrappedBackend]):
    """A backend factory that loads the real backend and wraps it."""

    def factory(model: ModelConfig) -> Backend:
        backend = WrappedBackend(load_backend(model), behaviour)
        created.append(backend)
        return backend

    return factory


class RecordingRenderer:
    """The real overlay renderer, remembering every state it drew (for assertions on banners)."""

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        from endoedge.edge.stages.overlay import OverlayRenderer

        self.inner = OverlayRenderer(options)
        self.states: list[OverlayState] = []
        self.lock = threading.Lock()

    def render(self, frame: np.ndarray, state: OverlayState, field_roi: Any) -> np.ndarray:
        with self.lock:
            self.states.append(state)
        return self.inner.render(frame, state, field_roi)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
