"""Overlay render time at 1080p: percentiles per scenario, printed as a Markdown table.

The renderer sits on the display path, whose whole added delay budget (capture → sink, overlay
included) is p99 ≤ 5.75 ms at 1080p. Two clocks are reported per frame: wall time (what the display
sees, inflated when other processes share the CPU) and this thread's CPU time (the renderer's own
cost, robust to a busy machine). Frames are synthetic tower frames (``core.synthetic``) built from
the committed sample images; states follow what the daemon produces (egd30 coverage, exam clock with
check lines, confidence changing on every inference).

    .venv/bin/python benchmarks/overlay/bench_overlay.py [--frames 900] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import PIL

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from endoedge.core.labels import get_labelset  # noqa: E402
from endoedge.core.preprocess import full_frame_roi  # noqa: E402
from endoedge.core.synthetic import TowerLayout, tower_frame  # noqa: E402
from endoedge.edge.stages.overlay import OverlayRenderer  # noqa: E402
from endoedge.edge.stages.types import OverlayState, SiteCell  # noqa: E402


def machine() -> str:
    """CPU model, cores, load and library versions."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return (
        f"{model}, {os.cpu_count()} logical CPUs, load average {load}; Python {platform.python_version()}, "
        f"numpy {np.__version__}, OpenCV {cv2.__version__}, Pillow {PIL.__version__}"
    )


def cells(observed: set[int]) -> tuple[SiteCell, ...]:
    labelset = get_labelset("egd30")
    return tuple(
        SiteCell(lb.key, lb.name, lb.name_zh, lb.region, lb.view, lb.required, i in observed, 0.0)
        for i, lb in enumerate(labelset.labels)
    )


def live_states(n: int, language: str, fps: float = 30.0) -> list[OverlayState]:
    """A 30-fps exam: confidence every frame, site every 2 s, a new site observed every 3 s."""
    rng = random.Random(0)
    labels = get_labelset("egd30").labels
    states = []
    observed: set[int] = set()
    confidence = 0.85
    for i in range(n):
        t = 95.0 + i / fps
        site = labels[(i // 60) % len(labels)]
        if i % 90 == 0:
            observed.add((i // 90) % len(labels))
        confidence = min(0.99, max(0.5, confidence + rng.uniform(-0.03, 0.03)))
        minutes = f"{int(t // 60)}:{int(t % 60):02d}"
        states.append(
            OverlayState(
                label=site.name,
                label_zh=site.name_zh,
                confidence=confidence,
                coverage=cells(observed),
                exam_seconds=t,
                exam_checks=(
                    f"inspection >= 7 min: {minutes} --",
                    f"sites observed: {len(observed)}/30 --",
                    "landmarks photographed: 1/2 --",
                ),
                fps_in=fps + rng.uniform(-0.4, 0.4),
                infer_ms=11.0 + rng.uniform(-2, 2),
                language=language,
            )
        )
    return states


def run(frames: int) -> list[dict[str, object]]:
    sample = sorted((ROOT / "tests" / "data" / "sample").rglob("*.jpg"))
    layout = TowerLayout()
    images = [tower_frame(cv2.imread(str(p)), layout) for p in sample]
    roi = layout.roi()
    blank = np.zeros_like(images[0])
    steady = live_states(1, "en")[0]
    scenarios = {
        "steady state (nothing changes)": ([steady] * frames, True, False),
        "steady state, drawn in place (copy=False)": ([steady] * frames, False, False),
        "live exam, English (confidence every frame, timer, sites)": (live_states(frames, "en"), True, False),
        "live exam, Chinese": (live_states(frames, "zh"), True, False),
        "no signal screen": ([replace(steady, signal=False)] * frames, True, True),
    }
    rows: list[dict[str, object]] = []
    copy_times, copy_cpu = [], []
    for i in range(frames):
        t0, c0 = time.perf_counter(), time.thread_time()
        images[i % len(images)].copy()
        copy_times.append(time.perf_counter() - t0)
        copy_cpu.append(time.thread_time() - c0)
    rows.append(summary("reference: one 1080p frame copy (np.copy)", copy_times, copy_cpu, None, 0))
    for name, (states, copy, no_signal) in scenarios.items():
        renderer = OverlayRenderer()
        times, cpu = [], []
        cold = None
        for i, state in enumerate(states):
            frame = blank if no_signal else images[(i // 30) % len(images)]
            target = frame if copy else frame.copy()
            field = full_frame_roi(frame) if no_signal else roi
            t0, c0 = time.perf_counter(), time.thread_time()
            renderer.render(target, state, field, copy=copy)
            elapsed, used = time.perf_counter() - t0, time.thread_time() - c0
            if i == 0:
                cold = elapsed
            else:
                times.append(elapsed)
                cpu.append(used)
        rows.append(summary(name, times, cpu, cold, renderer.cache.renders))
    return rows


def summary(name: str, times: list[float], cpu: list[float], cold: float | None, renders: int) -> dict[str, object]:
    ms = np.asarray(times) * 1000.0
    cpu_ms = np.asarray(cpu) * 1000.0
    return {
        "scenario": name,
        "frames": len(times),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "p999_ms": float(np.percentile(ms, 99.9)),
        "max_ms": float(ms.max()),
        "cpu_p50_ms": float(np.percentile(cpu_ms, 50)),
        "cpu_p99_ms": float(np.percentile(cpu_ms, 99)),
        "cpu_p999_ms": float(np.percentile(cpu_ms, 99.9)),
        "cpu_max_ms": float(cpu_ms.max()),
        "first_frame_ms": None if cold is None else cold * 1000.0,
        "sprite_renders": renders,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=900, help="frames per scenario (900 = 30 s at 30 fps)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = parser.parse_args()
    before = machine()
    rows = run(args.frames)
    print(f"Machine: {before}")
    print(f"Load after: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print()
    print(
        "| scenario (1920x1080) | frames | CPU p50 | CPU p99 | CPU p99.9 | CPU max | wall p50 | wall p99 | "
        "wall p99.9 | wall max | first frame | sprites built |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        first = "—" if r["first_frame_ms"] is None else f"{r['first_frame_ms']:.1f}"
        print(
            f"| {r['scenario']} | {r['frames']} | {r['cpu_p50_ms']:.2f} | {r['cpu_p99_ms']:.2f} | "
            f"{r['cpu_p999_ms']:.2f} | {r['cpu_max_ms']:.2f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['p999_ms']:.2f} | {r['max_ms']:.2f} | {first} | {r['sprite_renders']} |"
        )
    print()
    print("All times in milliseconds per frame; the first frame (cold caches) is reported separately.")
    if args.json:
        args.json.write_text(json.dumps({"machine": before, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
