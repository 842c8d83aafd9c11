"""``endoedge demo`` on the committed sample clip and default bundle, and the committed defaults themselves."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from _helpers import private_xvfb
from endoedge.cli import main as cli_main
from endoedge.core.bundle import open_bundle
from endoedge.core.clip import ClipTimeline, TimelineShot, timeline_path
from endoedge.core.formats import formats_markdown_table
from endoedge.core.preprocess import detect_field, load_pixels
from endoedge.edge.service.demo import (
    DEFAULT_BUNDLE,
    DEFAULT_CLIP,
    QUICK_SECONDS,
    ShownFrame,
    _recognition,
    format_summary,
)

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / DEFAULT_BUNDLE
CLIP = ROOT / DEFAULT_CLIP
needs_defaults = pytest.mark.skipif(
    not (BUNDLE / "manifest.json").is_file() or not CLIP.is_file(), reason="the committed demo bundle or clip is absent"
)


def _read_frame(path: Path, index: int) -> np.ndarray:
    capture = cv2.VideoCapture(str(path))
    image = None
    for _ in range(index + 1):
        ok, image = capture.read()
        assert ok, f"{path} has fewer than {index + 1} frames"
    capture.release()
    assert image is not None
    return image


def _count_frames(path: Path) -> tuple[int, tuple[int, int]]:
    capture = cv2.VideoCapture(str(path))
    count, shape = 0, (0, 0)
    while True:
        ok, image = capture.read()
        if not ok:
            break
        count += 1
        shape = image.shape[:2]
    capture.release()
    return count, shape


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, dict]:
    """``endoedge demo --quick`` run once, as ``make demo`` runs it, with TensorFlow made unimportable."""
    if not (BUNDLE / "manifest.json").is_file() or not CLIP.is_file():
        pytest.skip("the committed demo bundle or clip is absent")
    out = tmp_path_factory.mktemp("demo") / "demo-output"
    code = (
        "import sys; sys.modules['tensorflow'] = None; from endoedge.cli import main; "
        f"sys.exit(main(['demo', '--quick', '--no-window', '--out', {str(out)!r}]))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    return out, done.stdout, summary


def test_demo_prints_the_summary(quick_demo) -> None:
    _, stdout, summary = quick_demo
    needles = ("frames:", "inference: p50", "added video delay", "p99", "recognised", "coverage:", "outputs:")
    needles += ("model: label set gastrovision3@1 (Normal esophagus, Normal colon mucosa, Colon polyp)",)
    needles += ("validated top-1",)  # the honest number travels with the bundle and is shown
    for needle in needles:
        assert needle in stdout, (needle, stdout)
    assert summary["ai_state"] == "ok" and summary["inferences"] > 0
    assert summary["inference_ms"]["p50"] > 0 and summary["video_delay_ms"]["p99"] > 0
    assert summary["mode"] == "as fast as possible"


def test_overlay_video_has_every_frame(quick_demo) -> None:
    out, _, summary = quick_demo
    timeline = ClipTimeline.load(timeline_path(CLIP))
    expected = round(QUICK_SECONDS * timeline.fps)
    assert summary["frames_out"] == summary["frames_in"] == summary["recorded_frames"] == expected
    assert summary["source_dropped"] == 0 and summary["recorder_dropped"] == 0
    count, shape = _count_frames(out / "overlay.mp4")
    assert count == expected and shape == (timeline.height, timeline.width)


def test_report_is_valid_and_covers_the_demo_label_set(quick_demo) -> None:
    out, _, summary = quick_demo
    report = json.loads((out / "report.json").read_text())
    assert report["schema_version"] == 1 and report["exam"]["id"]
    task = report["tasks"]["coverage"]
    assert [s["key"] for s in task["sites"]] == ["esophagus_normal", "colon_normal_mucosa", "colon_polyp"]
    assert all(s["required"] for s in task["sites"])
    coverage = cv2.imread(str(out / "coverage.png"))
    assert coverage is not None and coverage.shape[1] > 800
    assert list((out / "reports").iterdir())  # the daemon's own report folder is kept too
    assert summary["sites"] and summary["exam"]["id"] == report["exam"]["id"]


def test_screenshot_leaves_the_field_and_the_osd_untouched(quick_demo) -> None:
    out, _, summary = quick_demo
    shot = cv2.imread(str(out / "frame.png"))
    timeline = ClipTimeline.load(timeline_path(CLIP))
    assert shot is not None and shot.shape[:2] == (timeline.height, timeline.width)
    index = summary["screenshot_frame"]
    assert index is not None and index < round(QUICK_SECONDS * timeline.fps)
    clip_frame = _read_frame(CLIP, index)
    roi = detect_field(clip_frame)
    assert roi is not None
    inside = (slice(roi.y0, roi.y1), slice(roi.x0, roi.x1))
    assert np.array_equal(shot[inside], clip_frame[inside])  # the overlay never draws on the field
    osd = clip_frame[:400, :700].max(axis=2) > 180  # the processor's on-screen text
    assert osd.sum() > 500
    assert np.array_equal(shot[:400, :700][osd], clip_frame[:400, :700][osd])  # ...stays readable
    changed = np.abs(shot.astype(np.int16) - clip_frame).max(axis=2) > 30
    assert changed.sum() > 5000  # and the overlay did draw something in the margins


def test_what_the_overlay_showed_is_scored_against_the_clip(quick_demo) -> None:
    _, _, summary = quick_demo
    rec = summary["recognition"]
    assert rec["scored_frames"] > 100
    assert set(rec["per_class"]) <= {"esophagus_normal", "colon_normal_mucosa", "colon_polyp"}
    assert "esophagus_normal" in rec["per_class"]
    assert 0.0 <= rec["accuracy"] <= 1.0


@needs_defaults
def test_default_bundle_verifies_and_its_int8_model_runs_on_real_images(sample_images) -> None:
    from endoedge.edge.backends import create_backend

    bundle = open_bundle(BUNDLE)  # checks every sha256
    manifest = bundle.manifest
    assert manifest.labelset.name == "gastrovision3" and manifest.task == "sites"
    assert {a.format for a in manifest.artifacts} >= {"tflite-int8", "tflite-fp32", "onnx"}
    assert bundle.file_path("parity-reference") is not None
    assert "GastroVision" in json.dumps(manifest.source) and "CC BY 4.0" in json.dumps(manifest.source)
    pixels = load_pixels(sample_images, manifest.preprocess)
    int8 = create_backend("tflite", bundle, "tflite-int8")
    fp32 = create_backend("tflite", bundle, "tflite-fp32")
    try:
        p8, p32 = int8.infer(pixels), fp32.infer(pixels)
    finally:
        int8.close()
        fp32.close()
    assert p8.shape == p32.shape == (len(sample_images), 3)
    assert np.allclose(p8.sum(axis=1), 1.0, atol=0.05)
    assert (p8.argmax(1) == p32.argmax(1)).mean() >= 0.75  # int8 mostly agrees with its float model
    truth = np.array(
        [["esophagus_normal", "colon_normal_mucosa", "colon_polyp"].index(p.parent.name) for p in sample_images]
    )
    assert (p32.argmax(1) == truth).mean() > 1 / 3  # better than chance on real images


@needs_defaults
def test_the_clip_is_a_tower_recording_with_its_timeline() -> None:
    timeline = ClipTimeline.load(timeline_path(CLIP))
    assert (timeline.width, timeline.height) == (1920, 1080) and timeline.labelset == "gastrovision3"
    count, _ = _count_frames(CLIP)
    assert count == timeline.frame_count
    assert 30 <= count / timeline.fps <= 60 and CLIP.stat().st_size < 8_000_000
    labels = [s.label for s in timeline.shots]
    assert labels == sorted(labels, key=["esophagus_normal", "colon_normal_mucosa", "colon_polyp"].index)
    dark, lit = _read_frame(CLIP, 0), _read_frame(CLIP, timeline.frame_count // 2)
    assert detect_field(dark) is None
    roi = detect_field(lit)
    assert roi is not None
    assert all(abs(a - b) < 12 for a, b in zip(roi.as_tuple(), timeline.field_roi, strict=True))


def test_recognition_scoring_ignores_fades_and_counts_per_class() -> None:
    timeline = ClipTimeline(
        labelset="gastrovision3",
        fps=10.0,
        frame_count=60,
        width=64,
        height=36,
        field_roi=(0, 0, 64, 36),
        shots=(TimelineShot("esophagus_normal", 1.0, 3.2), TimelineShot("colon_polyp", 2.6, 5.0)),
        crossfade=0.6,
        fade=0.4,
    )
    names = {"esophagus_normal": "Normal esophagus", "colon_polyp": "Colon polyp"}
    shown = [ShownFrame(i, "Normal esophagus" if i < 30 else "Colon polyp", 0.9, 1, None, "ok") for i in range(60)]
    result = _recognition(shown, timeline, names)
    eso, polyp = result["per_class"]["esophagus_normal"], result["per_class"]["colon_polyp"]
    assert eso["frames"] == 12  # 1.4 s .. 2.6 s: after the fade-in, before the cross-fade
    assert eso["correct"] == 12
    assert polyp["frames"] == 14 and polyp["correct"] == 14  # 3.2 s .. 4.6 s
    shown[15] = ShownFrame(15, None, 0.0, 0, None, "ok")
    assert _recognition(shown, timeline, names)["per_class"]["esophagus_normal"]["correct"] == 11
    text = format_summary(
        {
            "model": "m", "format": "onnx", "backend": "onnxruntime", "clip": "c.mp4", "frames_in": 60,
            "frames_out": 60, "recorded_frames": 60, "source_dropped": 0, "recorder_dropped": 0, "source_fps": 10.0,
            "fps_out_avg": 10.0, "mode": "realtime", "wall_s": 6.0, "inference_ms": {"p50": 2.0, "p95": 3.0},
            "inferences": 50, "skipped_frames": 10, "video_delay_ms": {"p50": 5.0, "p99": 9.0}, "overlay_ms": {},
            "ai_state": "ok", "ai_reason": "", "recognition": result, "sites": [], "exam": {}, "outputs": {"a": "b"},
        }
    )  # fmt: skip
    assert re.search(r"recognised .* 100% overall", text) and "p99 9.0 ms" in text


def test_missing_inputs_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main(["demo", "--clip", str(tmp_path / "nope.mp4"), "--out", str(tmp_path / "o"), "--no-window"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "nope.mp4" in err or "bundle" in err


def test_readme_format_table_is_the_generated_one() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert formats_markdown_table() in readme


def test_readme_links_point_at_files_in_the_repository() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme)
    local = [link for link in links if "://" not in link]
    assert len(local) > 10
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, f"README links to missing paths: {missing}"


def test_readme_shows_the_committed_demo_screenshot() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "docs/images/demo-frame.png" in readme
    image = cv2.imread(str(ROOT / "docs" / "images" / "demo-frame.png"))
    assert image is not None and image.shape[:2] == (1080, 1920)


@pytest.fixture
def private_display() -> Iterator[str]:
    """A private Xvfb display (the demo opens a live window when a display is set)."""
    with private_xvfb(120) as display:
        yield display


@pytest.mark.gstreamer
@needs_defaults
def test_with_a_display_the_demo_shows_the_overlay_live_in_real_time(private_display: str, tmp_path: Path) -> None:
    pytest.importorskip("gi", reason="the live window needs GStreamer's Python bindings (python3-gi)")
    out = tmp_path / "live"
    env = {**os.environ, "DISPLAY": private_display}
    env.pop("WAYLAND_DISPLAY", None)
    done = subprocess.run(
        [sys.executable, "-m", "endoedge.cli", "demo", "--seconds", "3", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "realtime"  # a live view plays the clip at its own rate
    assert summary["live_sink"] == "window://" and summary["live_errors"] == 0
    assert summary["live_frames"] == summary["frames_out"] > 0
    assert "live view: window://" in done.stdout
    # The clip "ends" at 3 s of clip time (frame 75) however many frames a slow machine had to drop.
    assert summary["frames_out"] <= 75 and summary["screenshot_frame"] < 75


@needs_defaults
def test_a_short_run_leaves_no_output_of_an_older_run(tmp_path: Path) -> None:
    out = tmp_path / "again"
    out.mkdir()
    for name in ("report.json", "coverage.png", "frame.png"):
        (out / name).write_text("from an older run")
    # 0.2 s of clip: five dark frames, no exam starts, so no report is written this time.
    code = cli_main(["demo", "--seconds", "0.2", "--fast", "--no-window", "--out", str(out)])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames_out"] == 5 and not summary["exam"]
    assert not (out / "report.json").exists() and not (out / "coverage.png").exists()
    shot = cv2.imread(str(out / "frame.png"))
    assert shot is not None and shot.shape == (1080, 1920, 3)


@pytest.mark.slow
@needs_defaults
def test_full_demo_records_every_frame_of_the_clip(tmp_path: Path) -> None:
    out = tmp_path / "full"
    done = subprocess.run(
        [sys.executable, "-m", "endoedge.cli", "demo", "--fast", "--no-window", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    timeline = ClipTimeline.load(timeline_path(CLIP))
    assert summary["frames_out"] == summary["recorded_frames"] == timeline.frame_count
    assert _count_frames(out / "overlay.mp4")[0] == timeline.frame_count
    assert set(summary["recognition"]["per_class"]) == {"esophagus_normal", "colon_normal_mucosa", "colon_polyp"}
    observed = {s["key"] for s in summary["sites"] if s["observed"]}
    assert "esophagus_normal" in observed  # the model is perfect on esophagus images (bundle README)
    assert summary["exam"]["end_reason"].endswith("(end of source)")
