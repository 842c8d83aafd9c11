"""Soak benchmark: 1080p30 tower frames through the real ``endoedge run`` process for a long time.

Prints, every ``--sample-every`` seconds, the daemon's resident memory, threads, open descriptors and
frame counters read from ``/proc`` and ``/status``; at the end a summary: RSS growth after warm-up,
thread and descriptor counts (baseline, peak, final), the display backlog (frames read minus frames
shown: a queue that grows would show here) and the video delay at the start and the end.

    .venv/bin/python benchmarks/soak/soak.py --bundle BUNDLE --duration 3600 --out soak.json

The clip is made from the committed real sample images framed as a 1920x1080 processor output with a
fake patient name in the on-screen text (``--clip`` to use your own). The test suite runs the same
function for two minutes (``tests/reliability/test_soak.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "reliability"))

from _daemon_harness import DaemonProcess, tower_frames, write_clip  # noqa: E402

from endoedge.core.synthetic import TowerLayout  # noqa: E402


def make_clip(out: Path, seconds_per_image: float = 1.0, fps: float = 30.0) -> Path:
    """A 1080p30 clip of tower frames around the committed sample images."""
    images = sorted((ROOT / "tests" / "data" / "sample").rglob("*.jpg"))
    return write_clip(tower_frames(images, TowerLayout()), out, hold=max(1, round(seconds_per_image * fps)), fps=fps)


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def soak(
    bundle: Path,
    duration_s: float,
    workdir: Path,
    clip: Path | None = None,
    sample_every_s: float = 5.0,
    warmup_s: float | None = None,
    as_fast_as_possible: bool = False,
    printer: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the daemon for ``duration_s`` and return the figures (also printed as they come).

    Args:
        bundle: The model bundle.
        duration_s: Soak length after the daemon is running.
        workdir: Folder for the clip, reports, state and the daemon's log.
        clip: Source clip (default: a generated 1080p30 tower clip).
        sample_every_s: Sampling period.
        warmup_s: Samples before this are not part of the baseline (default: 20 % of the duration,
            at most 5 minutes): allocators, caches and the JIT-free runtimes settle first.
        as_fast_as_possible: Replay the file without pacing.
        printer: Where the per-sample lines go.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    clip = clip or make_clip(workdir / "soak-1080p30.mp4")
    warmup = min(300.0, 0.2 * duration_s) if warmup_s is None else warmup_s
    extra = ["--loop", "--set", "exam.end_after_s=3600"]
    if as_fast_as_possible:
        extra.append("--as-fast-as-possible")
    samples: list[dict[str, Any]] = []
    with DaemonProcess(workdir / "run", f"file://{clip}", bundle, extra=extra) as daemon:
        daemon.wait_running()
        start = time.monotonic()
        first_status = daemon.status()
        while True:
            now = time.monotonic() - start
            proc = daemon.figures()
            status = daemon.status()
            stats = status["stats"]
            sample = {
                "t_s": round(now, 1),
                "rss_mib": round(proc.rss_kib / 1024, 1),
                "threads": proc.threads,
                "fds": proc.fds,
                "frames_in": stats["frames_in"],
                "frames_out": stats["frames_out"],
                # Frames read but not shown (no-signal screens are shown without being read).
                "backlog": stats["frames_in"] - stats["frames_out"] + stats["no_signal_frames"],
                "no_signal": stats["no_signal_frames"],
                "fps_out": stats["fps_out"],
                "video_delay_p99_ms": stats["video_delay_ms"].get("p99"),
                "skipped": status["skipped_frames"],
                "ai": status["ai"],
            }
            samples.append(sample)
            printer(" ".join(f"{k}={v}" for k, v in sample.items()))
            if now >= duration_s:
                break
            time.sleep(max(0.0, min(sample_every_s, duration_s - now)))
        last_status = daemon.status()
        assert daemon.stop() == 0, daemon.log_tail()
        log = daemon.log_text()
    settled = [s for s in samples if s["t_s"] >= warmup] or samples
    head = [s["rss_mib"] for s in settled[:3]]
    tail = [s["rss_mib"] for s in samples[-3:]]
    baseline_rss, final_rss = _median(head), _median(tail)
    baseline = settled[0]
    result = {
        "machine": f"{platform.machine()} {platform.processor() or ''} cores={len(os.sched_getaffinity(0))}",
        "duration_s": samples[-1]["t_s"],
        "warmup_s": warmup,
        "frames_shown": samples[-1]["frames_out"] - samples[0]["frames_out"],
        "mean_fps_out": round(
            (samples[-1]["frames_out"] - samples[0]["frames_out"]) / max(samples[-1]["t_s"], 1e-9), 2
        ),
        "rss_mib": {"baseline": baseline_rss, "final": final_rss, "max": max(s["rss_mib"] for s in samples)},
        "rss_growth_pct": round(100.0 * (final_rss - baseline_rss) / baseline_rss, 2),
        "threads": {
            "baseline": baseline["threads"],
            "max": max(s["threads"] for s in settled),
            "final": samples[-1]["threads"],
        },
        "fds": {"baseline": baseline["fds"], "max": max(s["fds"] for s in settled), "final": samples[-1]["fds"]},
        "backlog": {"max": max(s["backlog"] for s in samples), "final": samples[-1]["backlog"]},
        "video_delay_p99_ms": {
            "start": first_status["stats"]["video_delay_ms"].get("p99"),
            "end": last_status["stats"]["video_delay_ms"].get("p99"),
        },
        "inferences": last_status["stats"]["workers"]["coverage"]["inferences"],
        "backend_errors": last_status["stats"]["workers"]["coverage"]["errors"],
        "sink_errors": last_status["stats"]["sink_errors"],
        "exam_elapsed_s": round(last_status["exam"]["elapsed_s"], 1),
        "tracebacks_in_log": log.count("Traceback"),
        "samples": samples,
    }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_bundle = ROOT / "export" / "bundles" / "gastrovision3-efficientnet-lite0"
    parser.add_argument("--bundle", type=Path, default=default_bundle, help="model bundle (default: the demo)")
    parser.add_argument("--duration", type=float, default=3600.0, help="seconds (default 3600)")
    parser.add_argument("--sample-every", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=None, help="seconds excluded from the baseline")
    parser.add_argument("--clip", type=Path, default=None, help="source clip (default: generated 1080p30)")
    parser.add_argument("--as-fast-as-possible", action="store_true")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    if not (args.bundle / "manifest.json").is_file():
        parser.error(f"{args.bundle}: no bundle there (give --bundle)")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="endoedge-soak-"))
    result = soak(
        args.bundle,
        args.duration,
        workdir,
        clip=args.clip,
        sample_every_s=args.sample_every,
        warmup_s=args.warmup,
        as_fast_as_possible=args.as_fast_as_possible,
        printer=lambda line: print(line, flush=True),
    )
    summary = {k: v for k, v in result.items() if k != "samples"}
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
