"""Video I/O costs on the display path at 1080p: sink ``write`` time and source hand-off delay.

The display loop's added delay (capture → sink) is budgeted at p99 ≤ 5.75 ms at 1080p, so
``Sink.write`` must return at once whatever the display or encoder does, and a source must hand the
newest frame over quickly. For each sink this writes 1080p frames at 30 fps and times ``write``; for
each source it reads frames as they come and reports ``read return − frame.t_capture`` (how long a
frame waited between capture and the reader, conversion included). Both wall time and this thread's
CPU time are reported, because this machine is shared.

    .venv/bin/python benchmarks/videoio/bench_videoio.py [--frames 300]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from endoedge.core.synthetic import TowerLayout, tower_frame  # noqa: E402
from endoedge.edge.video.gst import gst_available  # noqa: E402
from endoedge.edge.video.sinks import open_sink  # noqa: E402
from endoedge.edge.video.sources import open_source  # noqa: E402

W, H, FPS = 1920, 1080, 30.0


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return f"{model}, {os.cpu_count()} logical CPUs, load average {load}; Python {platform.python_version()}"


def percentiles(values: list[float]) -> str:
    ms = np.asarray(values) * 1000.0
    return " | ".join(f"{np.percentile(ms, q):.2f}" for q in (50, 99, 99.9)) + f" | {ms.max():.2f}"


def tower_frames() -> list[np.ndarray]:
    sample = sorted((ROOT / "tests" / "data" / "sample").rglob("*.jpg"))
    return [tower_frame(cv2.imread(str(p)), TowerLayout()) for p in sample]


def bench_sink(uri: str, frames: list[np.ndarray], count: int) -> tuple[list[float], list[float], str]:
    sink = open_sink(uri, W, H, FPS)
    wall, cpu = [], []
    period = 1.0 / FPS
    next_due = time.monotonic()
    for i in range(count):
        image = frames[i % len(frames)]
        t0, c0 = time.perf_counter(), time.thread_time()
        sink.write(image, time.monotonic())
        wall.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
        next_due += period
        time.sleep(max(0.0, next_due - time.monotonic()))
    sink.close()
    extra = ""
    if hasattr(sink, "dropped"):
        extra = f"{sink.dropped} dropped by the output"
    return wall, cpu, extra


def bench_source(uri: str, count: int, **options: object) -> tuple[list[float], list[float], str]:
    source = open_source(uri, **options)
    delays, cpu = [], []
    got = 0
    deadline = time.monotonic() + count / FPS * 3 + 10
    while got < count and time.monotonic() < deadline:
        c0 = time.thread_time()
        try:
            frame = source.read(timeout=1.0)
        except EOFError:
            break
        if frame is None:
            continue
        delays.append(time.monotonic() - frame.t_capture)
        cpu.append(time.thread_time() - c0)
        got += 1
    dropped = getattr(source, "dropped", 0)
    source.close()
    return delays, cpu, f"{got} frames, {dropped} dropped"


class Xvfb:
    """A private X server for the window sink."""

    def __init__(self) -> None:
        self.number = next(n for n in range(90, 200) if not Path(f"/tmp/.X11-unix/X{n}").exists())
        self.process = subprocess.Popen(
            ["Xvfb", f":{self.number}", "-screen", "0", "1920x1080x24", "-nolisten", "tcp"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not Path(f"/tmp/.X11-unix/X{self.number}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300, help="frames per case (300 = 10 s at 30 fps)")
    args = parser.parse_args()
    print(f"Machine: {machine()}")
    frames = tower_frames()
    rows: list[tuple[str, list[float], list[float], str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        sinks: list[tuple[str, str]] = [
            ("null://", "null://"),
            ("file://exam.mp4 (OpenCV mp4v, writer thread)", f"file://{tmp}/exam.mp4"),
        ]
        xvfb = None
        if gst_available():
            sinks.append(
                (
                    "gst://fakesink (appsrc, videoconvert to BGRx)",
                    "gst://videoconvert ! video/x-raw,format=BGRx ! fakesink sync=false",
                )
            )
            if shutil.which("Xvfb"):
                xvfb = Xvfb()
                sinks.append(("window:// ximagesink on Xvfb", f"window://?element=ximagesink&display=:{xvfb.number}"))
        try:
            for name, uri in sinks:
                wall, cpu, extra = bench_sink(uri, frames, args.frames)
                rows.append((f"sink write: {name}", wall, cpu, extra))
        finally:
            if xvfb is not None:
                xvfb.close()
        clip = Path(tmp) / "tower.avi"
        writer = cv2.VideoWriter(str(clip), cv2.VideoWriter.fourcc(*"MJPG"), FPS, (W, H))
        for i in range(args.frames):
            writer.write(frames[i % len(frames)])
        writer.release()
        sources: list[tuple[str, str, dict[str, object]]] = [
            ("file:// 1080p MJPEG, paced at 30 fps", f"file://{clip}", {})
        ]
        if gst_available():
            sources.append(
                (
                    "gst:// videotestsrc 1080p30 live",
                    "gst://videotestsrc is-live=true ! video/x-raw,width=1920,height=1080,framerate=30/1 "
                    "! videoconvert ! appsink",
                    {},
                )
            )
        for name, uri, options in sources:
            delays, cpu, extra = bench_source(uri, args.frames, **options)
            rows.append((f"source hand-off: {name}", delays, cpu, extra))
    print(f"Load after: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print()
    print(
        "| case (1920x1080, 30 fps) | wall p50 | wall p99 | wall p99.9 | wall max "
        "| CPU p50 | CPU p99 | CPU p99.9 | CPU max | notes |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, wall, cpu, extra in rows:
        print(f"| {name} | {percentiles(wall)} | {percentiles(cpu)} | {extra} |")
    print()
    print("Milliseconds. Sink rows time write(); source rows time read() return minus the frame's capture time.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
