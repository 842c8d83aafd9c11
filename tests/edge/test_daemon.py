"""The real daemon on real frames: the sample images stitched into a tower-style clip, real LiteRT and
ONNX Runtime backends on a real bundle, the real file source, null sink and overlay renderer."""

from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from daemon_helpers import (
    FULL_HD,
    SMALL,
    RecordingRenderer,
    decode,
    make_config,
    wrapping_factory,
    write_clip,
)

from endoedge.core.synthetic import field_polygon_mask
from endoedge.edge.service.daemon import Daemon
from endoedge.edge.service.meters import LatencyWindow, RateMeter
from endoedge.edge.service.worker import Mailbox
from endoedge.edge.types import Frame
from endoedge.edge.video.sinks import open_sink
from endoedge.edge.video.sources import open_source


@pytest.fixture(scope="module")
def clip(sample_images, tmp_path_factory) -> Path:
    """120 frames (4 s at 30 fps) of 640×360 tower frames around the 12 real sample images."""
    return write_clip(sample_images, tmp_path_factory.mktemp("clip") / "clip.mp4", SMALL, frames_per_image=10)


@pytest.fixture(scope="module")
def clip_frames(clip) -> list[np.ndarray]:
    return decode(clip)


@pytest.fixture(scope="module")
def clip_1080(sample_images, tmp_path_factory) -> Path:
    """1920×1080 tower frames (fake OSD on the left, octagonal field) around one image per class."""
    chosen = [sample_images[0], sample_images[4], sample_images[8]]
    return write_clip(chosen, tmp_path_factory.mktemp("clip1080") / "clip.mp4", FULL_HD, frames_per_image=8)


def null_sink():
    return open_sink("null://", SMALL.width, SMALL.height, 30, keep_last=True)


# -- small parts ------------------------------------------------------------------------------------


def test_mailbox_keeps_only_the_newest_frame_and_counts_the_rest():
    box = Mailbox()
    for i in range(5):
        box.put(Frame(np.zeros((2, 2, 3), np.uint8), i, float(i)))
    frame = box.take(0.01)
    assert frame is not None and frame.index == 4 and box.overwritten == 4
    assert box.take(0.01) is None
    box.put(Frame(np.zeros((2, 2, 3), np.uint8), 5, 5.0))
    box.discard()  # "only what comes after now": the waiting frame is dropped and counted
    box.discard()
    assert box.take(0.01) is None and box.overwritten == 5


def test_latency_window_and_rate_meter():
    window = LatencyWindow(size=100)
    for v in range(1, 201):
        window.add(v / 1000)
    summary = window.summary()
    assert summary["n"] == 200 and summary["max"] == pytest.approx(200.0) and summary["p50"] == pytest.approx(150.5)
    assert window.values_since(190).tolist() == [v / 1000 for v in range(191, 201)]
    assert window.values_since(50) is None  # no longer held: the window keeps the last 100
    assert window.summary(since=195)["n"] == 5 and window.summary(since=195)["p50"] == pytest.approx(198.0)
    meter = RateMeter(window_s=2.0)
    for k in range(61):
        meter.tick(k / 30)
    assert meter.rate() == pytest.approx(30.0)
    assert meter.rate(now=10.0) == 0.0


# -- the whole daemon -------------------------------------------------------------------------------


@pytest.mark.parametrize(("backend", "fmt"), [("tflite", "tflite-fp32"), ("onnxruntime", "onnx")])
def test_the_daemon_runs_a_real_clip_with_a_real_backend(tmp_path, tiny_bundle, clip, clip_frames, backend, fmt):
    config = make_config(
        tmp_path,
        clip,
        tiny_bundle,
        models=[{"name": "sites", "bundle": str(tiny_bundle), "backend": backend, "format": fmt}],
        status={"enabled": False},
    )
    sink = null_sink()
    daemon = Daemon(config, sink=sink)
    assert daemon.run() == 0
    stats = daemon.stats()
    worker = stats["workers"]["coverage"]
    assert stats["frames_in"] == stats["frames_out"] == sink.frames
    assert stats["frames_out"] >= 0.9 * len(clip_frames)  # paced at 30 fps; a loaded CI box may drop a few
    assert worker["inferences"] > 10 and worker["errors"] == 0 and worker["state"] == "ok"
    # Every captured frame is either inferred or counted as skipped (the last one may be in flight).
    assert stats["frames_in"] - 2 <= worker["inferences"] + worker["skipped_frames"] <= stats["frames_in"]
    assert worker["models"][0]["backend"] == backend and worker["models"][0]["format"] == fmt
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    expected_sha = next(a["sha256"] for a in manifest["artifacts"] if a["format"] == fmt)
    assert worker["models"][0]["artifact_sha256"] == expected_sha
    for key in ("video_delay_ms", "overlay_delay_ms"):
        assert stats[key]["n"] > 0 and stats[key]["p50"] > 0
    # The exam started on the first confident site and the end of the file closed it with a report.
    assert len(daemon.reports_written) == 1
    folder = daemon.reports_written[0]
    report = json.loads((folder / "report.json").read_text())
    coverage = report["tasks"]["coverage"]
    assert coverage["observed"] >= 1 and len(coverage["sites"]) == 3
    assert report["exam"]["end_reason"] == "daemon stopped (end of source)"
    assert (folder / "coverage.png").stat().st_size > 1000
    assert not list(folder.glob("*.jpg"))  # no video frames unless the config enables them
    assert not any(p.name.startswith(".") for p in folder.parent.iterdir())  # no temporary leftovers
    assert not (tmp_path / "state" / "exam-checkpoint.json").exists()


def _drawn_at(image: np.ndarray, text: str, size: float = 16) -> bool:
    """Whether ``text``, drawn black on white by the overlay's text renderer, appears pixel for pixel in ``image``."""
    from endoedge.edge.stages.overlay import draw_text

    strip = np.full((3 * round(size), 40 * round(size), 3), 255, np.uint8)
    draw_text(strip, (2, 2 * size), text, size, (0, 0, 0))
    ys, xs = np.nonzero(strip.min(axis=2) < 255)
    template = cv2.cvtColor(strip[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1], cv2.COLOR_BGR2GRAY)
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    # Pixel for pixel up to matchTemplate's float arithmetic: a mean squared difference below 1 grey level.
    return float(cv2.matchTemplate(gray, template, cv2.TM_SQDIFF).min()) < template.size


def test_a_chinese_daemon_writes_its_report_png_in_chinese(tmp_path, tiny_bundle, clip):
    """``overlay.language: zh``: the report's coverage.png names the sites (and its words) in Chinese."""
    from endoedge.core.labels import GASTROVISION3
    from endoedge.edge.stages.overlay import REPORT_TEXT

    config = make_config(
        tmp_path,
        clip,
        tiny_bundle,
        status={"enabled": False},
        source={"as_fast_as_possible": True},
        overlay={"language": "zh"},
    )
    assert Daemon(config, sink=null_sink()).run() == 0
    (folder,) = (tmp_path / "reports").iterdir()
    png = cv2.imread(str(folder / "coverage.png"))
    for label in GASTROVISION3.labels:
        assert _drawn_at(png, label.name_zh), f"{label.name_zh} is not drawn in coverage.png"
        assert not _drawn_at(png, label.name), f"{label.name} is drawn in English"
    assert _drawn_at(png, REPORT_TEXT["zh"]["title"].split("{")[0].strip(), 26)
    report = json.loads((folder / "report.json").read_text())
    assert report["language"] == "zh"
    assert [s["name_zh"] for s in report["tasks"]["coverage"]["sites"]] == [lb.name_zh for lb in GASTROVISION3.labels]


def test_the_endoscopic_field_reaches_the_sink_unchanged(tmp_path, tiny_bundle, clip_1080):
    """Pixel test at 1080p: the overlay draws only in the margins; inside the field every pixel is the input's."""
    frames = decode(clip_1080)
    config = make_config(
        tmp_path, clip_1080, tiny_bundle, status={"enabled": False}, source={"as_fast_as_possible": True}
    )
    sink = open_sink("null://", FULL_HD.width, FULL_HD.height, 30, keep_last=True)
    renderer = RecordingRenderer()
    daemon = Daemon(config, sink=sink, renderer=renderer)
    daemon.run()
    assert sink.last_image is not None and sink.frames == len(frames)
    shown, source = sink.last_image, frames[-1]
    roi = FULL_HD.roi()
    inside = np.zeros(shown.shape[:2], bool)
    inside[roi.y0 : roi.y1, roi.x0 : roi.x1] = True
    assert np.array_equal(shown[inside], source[inside])
    margins = ~inside
    assert np.count_nonzero(np.any(shown[margins] != source[margins], axis=1)) > 2000  # the overlay is there
    # The processor's on-screen text (top left) is left readable: the overlay steps around it.
    osd = margins & (source.max(axis=2) > 100)
    assert np.count_nonzero(osd) > 1000 and np.array_equal(shown[osd], source[osd])
    assert field_polygon_mask(FULL_HD)[roi.y0 : roi.y1, roi.x0 : roi.x1].any()
    assert any(state.coverage for state in renderer.states)


def test_frames_are_kept_in_the_report_only_when_enabled(tmp_path, tiny_bundle, clip):
    config = make_config(
        tmp_path,
        clip,
        tiny_bundle,
        status={"enabled": False},
        report={"include_frames": True, "max_frames": 2},
    )
    daemon = Daemon(config, sink=null_sink())
    daemon.run()
    folder = daemon.reports_written[0]
    report = json.loads((folder / "report.json").read_text())
    observed = [s["key"] for s in report["tasks"]["coverage"]["sites"] if s["observed"]]
    saved = sorted(p.name for p in folder.glob("frame_*.jpg"))
    assert observed and len(saved) == min(2, len(observed))
    assert saved[0].startswith("frame_000_") and saved[0][len("frame_000_") : -4] in observed
    assert daemon.exam_frames == []  # handed over to the report, not kept in memory


def test_a_slow_backend_never_slows_the_video(tmp_path, tiny_bundle, clip, clip_frames):
    """Inference at ~5 fps (200 ms per frame, six frames' time) while the display keeps the source rate."""
    created = []
    config = make_config(tmp_path, clip, tiny_bundle, status={"enabled": False})
    sink = null_sink()
    # The daemon opens the clip itself, after the replay's first model load (a source opened before
    # would read and drop frames while the model loads, which is not what this test is about).
    daemon = Daemon(config, sink=sink, backend_factory=wrapping_factory(lambda n: 0.2, created))
    started = time.monotonic()
    daemon.run()
    elapsed = time.monotonic() - started
    stats = daemon.stats()
    worker = stats["workers"]["coverage"]
    duration = len(clip_frames) / 30.0
    assert worker["inferences"] <= elapsed / 0.2 + 2  # the model really was slow
    assert worker["skipped_frames"] >= stats["frames_in"] * 0.6  # ...so most frames were never inferred
    # ...yet (nearly) every source frame was displayed: the capture thread dropped few or none.
    dropped = stats["dropped_before_display"]
    assert stats["frames_out"] == stats["frames_in"] >= len(clip_frames) - max(6, dropped)
    assert dropped <= 0.1 * len(clip_frames)
    assert elapsed < duration * 1.5 + 2.0  # a display path waiting on the model would take ~6x longer
    assert stats["overlay_delay_ms"]["p50"] >= 200.0  # results arrive one inference after capture


def test_backend_failures_show_ai_off_and_the_backend_is_restarted(tmp_path, tiny_bundle, clip, clip_frames):
    created = []
    # Backend 1 raises on call 5, 2 returns NaN, 3 hangs, 4 returns the wrong shape; later ones are fine.
    plans = {0: {5: "raise"}, 1: {3: "nan"}, 2: {3: "hang"}, 3: {3: "shape"}}

    def behaviour(call: int):
        return plans.get(len(created) - 1, {}).get(call)

    config = make_config(
        tmp_path,
        clip,
        tiny_bundle,
        status={"enabled": False},
        models=[
            {
                "name": "sites",
                "bundle": str(tiny_bundle),
                "backend": "tflite",
                "timeout_s": 0.4,
                "restart_initial_s": 0.1,
                "restart_max_s": 0.2,
            }
        ],
    )
    renderer = RecordingRenderer()
    daemon = Daemon(config, sink=null_sink(), renderer=renderer, backend_factory=wrapping_factory(behaviour, created))
    daemon.run()
    stats = daemon.stats()
    worker = stats["workers"]["coverage"]
    assert stats["frames_out"] == stats["frames_in"] >= 0.9 * len(clip_frames)  # the video never stopped
    assert worker["errors"] == 3 and worker["hangs"] == 1 and worker["restarts"] >= 4
    assert worker["state"] == "ok"  # recovered by the end
    statuses = [s.ai_status for s in renderer.states]
    off = [i for i, s in enumerate(statuses) if s == "off"]
    assert len(off) >= 4 and statuses[-1] == "ok"
    messages = " ".join(s.message for s in renderer.states)
    assert "injected backend failure" in messages and "NaN" in messages and "hung for more than 0.4 s" in messages
    assert "backend returned shape (1, 5), expected (1, 3)" in messages
    assert created[0].closed and created[1].closed


def test_a_tampered_bundle_keeps_the_video_in_passthrough_with_a_banner(tmp_path, tiny_bundle, clip, clip_frames):
    bad = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bad)
    model = bad / "model_fp32.tflite"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    config = make_config(tmp_path, clip, bad, status={"enabled": False}, source={"as_fast_as_possible": True})
    config.models[0].format = "tflite-fp32"
    sink = null_sink()
    renderer = RecordingRenderer()
    daemon = Daemon(config, sink=sink, renderer=renderer)
    assert daemon.run() == 0
    stats = daemon.stats()
    assert sink.frames == len(clip_frames) == stats["frames_out"]
    worker = stats["workers"]["coverage"]
    assert worker["state"] == "refused" and worker["inferences"] == 0
    assert "sha256 mismatch" in worker["reason"] and str(model) in worker["reason"]
    assert {s.ai_status for s in renderer.states} == {"off"}
    assert "bundle refused" in renderer.states[-1].message


def test_a_bundle_of_the_wrong_task_is_refused(tmp_path, tiny_bundle, clip):
    config = make_config(
        tmp_path,
        clip,
        tiny_bundle,
        status={"enabled": False},
        source={"as_fast_as_possible": True},
        run={"max_frames": 40},
        tasks=[{"type": "hemorrhoid", "model_a": "sites"}],
    )
    daemon = Daemon(config, sink=null_sink())
    daemon.run()
    worker = daemon.stats()["workers"]["hemorrhoid"]
    assert worker["state"] == "refused"
    assert "is a 'sites' model; the hemorrhoid task (a) needs hemorrhoid" in worker["reason"]
    assert daemon.stats()["frames_out"] == 40


def test_two_models_in_one_daemon(tmp_path, tiny_bundle, clip):
    config = make_config(
        tmp_path,
        clip,
        tiny_bundle,
        status={"enabled": False},
        run={"max_frames": 60},
        models=[
            {"name": "a", "bundle": str(tiny_bundle), "backend": "tflite", "options": {"threads": 1}},
            {"name": "b", "bundle": str(tiny_bundle), "backend": "onnxruntime", "options": {"threads": 1}},
        ],
        tasks=[
            {"type": "egd-coverage", "name": "lite", "model": "a"},
            {"type": "egd-coverage", "name": "ort", "model": "b"},
        ],
    )
    daemon = Daemon(config, sink=null_sink())
    daemon.run()
    workers = daemon.stats()["workers"]
    assert set(workers) == {"lite", "ort"}
    assert all(w["inferences"] > 5 and w["state"] == "ok" for w in workers.values())
    report = json.loads((daemon.reports_written[0] / "report.json").read_text())
    assert set(report["tasks"]) == {"lite", "ort"} and {m["backend"] for m in report["models"]} == {
        "tflite",
        "onnxruntime",
    }


def test_status_endpoints_and_exam_api_over_real_http(tmp_path, tiny_bundle, clip):
    config = make_config(tmp_path, clip, tiny_bundle, source={"loop": True}, exam={"auto_start": False})
    daemon = Daemon(config, sink=null_sink())
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while (daemon.status_server is None or daemon.frames_out < 20) and time.monotonic() < deadline:
            time.sleep(0.05)
        base = daemon.status_server.url

        def get(path: str):
            with urllib.request.urlopen(base + path, timeout=5) as response:
                return response.status, response.read().decode()

        def post(path: str):
            request = urllib.request.Request(base + path, method="POST", data=b"")
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    return response.status, json.loads(response.read())
            except urllib.error.HTTPError as exc:
                return exc.code, json.loads(exc.read())

        code, body = get("/healthz")
        assert code == 200 and json.loads(body)["ok"] is True
        code, body = get("/status")
        status = json.loads(body)
        assert status["fps_in"] > 5 and status["ai"] in ("ok", "warming")
        assert status["backends"][0]["backend"] == "tflite" and len(status["backends"][0]["manifest_sha256"]) == 64
        assert status["exam"]["running"] is False and status["inference_ms"]["coverage"]["p95"] > 0
        assert status["skipped_frames"]["coverage"] >= 0 and status["stats"]["frames_in"] >= 20
        code, metrics = get("/metrics")
        assert "# TYPE endoedge_frames_in_total counter" in metrics
        assert 'endoedge_inference_ms{task="coverage",quantile="p50"}' in metrics
        assert post("/exam/start")[0] == 200
        assert post("/exam/start")[0] == 409  # already running
        assert post("/exam/photo")[0] == 200
        time.sleep(0.5)
        code, body = post("/exam/end")
        assert code == 200
        deadline = time.monotonic() + 10
        while not daemon.reports_written and time.monotonic() < deadline:
            time.sleep(0.05)
        report = json.loads((daemon.reports_written[0] / "report.json").read_text())
        assert report["exam"]["start_reason"] == "api" and report["exam"]["end_reason"] == "api"
        assert len(report["tasks"]["coverage"]["photos"]) == 1
    finally:
        daemon.request_stop("test over")
        thread.join(timeout=20)
    assert not thread.is_alive()
    assert daemon.phase == "stopped"


def test_lost_source_shows_no_signal_and_keeps_the_exam(tmp_path, tiny_bundle, clip):
    """A source that stops delivering: no-signal screens at the nominal rate, the exam is kept."""

    class StallingSource:
        """The real file source, silent (timeouts) between frames 40 and 100 of the run."""

        def __init__(self) -> None:
            self.inner = open_source(f"file://{clip}", loop=True)
            self.uri, self.fps, self.reads = self.inner.uri, self.inner.fps, 0

        def read(self, timeout: float = 1.0):
            self.reads += 1
            frame = self.inner.read(timeout)
            if frame is not None and 40 <= frame.index < 100:
                time.sleep(min(timeout, 1 / 30))
                return None
            return frame

        def close(self) -> None:
            self.inner.close()

    config = make_config(tmp_path, clip, tiny_bundle, status={"enabled": False}, run={"max_frames": 200})
    config.source.no_signal_after_s = 0.3
    renderer = RecordingRenderer()
    daemon = Daemon(config, source=StallingSource(), sink=null_sink(), renderer=renderer)
    daemon.run()
    stats = daemon.stats()
    assert stats["no_signal_frames"] >= 20  # 2 s of silence, minus the 0.3 s grace, at ~30 fps
    assert any(not s.signal for s in renderer.states)
    assert renderer.states[-1].signal
    assert len(daemon.reports_written) == 1  # one exam across the outage (end_after_s is 5 s)


def test_odd_frames_and_failing_parts_never_stop_the_video(tmp_path, tiny_bundle, clip):
    """Wrong sizes mid-stream, black/white/garbage frames, a read error and an overlay bug: counted, survived."""
    rng = np.random.default_rng(3)
    odd = {
        10: np.zeros((240, 320, 3), np.uint8),  # another resolution mid-stream
        11: np.zeros((SMALL.height, SMALL.width, 3), np.uint8),  # all black
        12: np.full((SMALL.height, SMALL.width, 3), 255, np.uint8),  # all white
        13: rng.integers(0, 256, (SMALL.height, SMALL.width, 3), dtype=np.uint8),  # noise
        14: np.zeros((SMALL.height, SMALL.width), np.float32),  # wrong dtype and shape: dropped
        15: np.zeros((4, 4, 3), np.uint8),  # too small: dropped
    }

    class OddSource:
        def __init__(self) -> None:
            self.inner = open_source(f"file://{clip}", as_fast_as_possible=True)
            self.uri, self.fps = self.inner.uri, self.inner.fps

        def read(self, timeout: float = 1.0):
            frame = self.inner.read(timeout)
            if frame is not None and frame.index == 20:
                raise RuntimeError("injected read failure")
            if frame is not None and frame.index in odd:
                return Frame(odd[frame.index], frame.index, frame.t_capture)
            return frame

        def close(self) -> None:
            self.inner.close()

    class FlakyRenderer(RecordingRenderer):
        def render(self, frame, state, field_roi):
            if len(self.states) in (30, 31):
                self.states.append(state)
                raise ValueError("injected overlay bug")
            return super().render(frame, state, field_roi)

    config = make_config(tmp_path, clip, tiny_bundle, status={"enabled": False})
    sink = null_sink()
    daemon = Daemon(config, source=OddSource(), sink=sink, renderer=FlakyRenderer())
    assert daemon.run() == 0
    stats = daemon.stats()
    assert stats["bad_frames"] == 2 and stats["source_errors"] == 1 and stats["overlay_errors"] == 2
    assert stats["frames_out"] == sink.frames == 120 - 1 - 2  # every other frame was shown
    assert stats["workers"]["coverage"]["errors"] == 0  # odd frames are not model failures


def test_a_taken_status_port_does_not_stop_the_video(tmp_path, tiny_bundle, clip):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = make_config(tmp_path, clip, tiny_bundle, status={"port": port}, run={"max_frames": 15})
        daemon = Daemon(config, sink=null_sink())
        assert daemon.run() == 0
    assert daemon.status_server is None and daemon.stats()["frames_out"] == 15


def _constant_hemorrhoid_bundle(out: Path, positive: bool) -> Path:
    """A real 2-class TFLite model (task A) whose output is constant: 'hemorrhoid' 0.95 or 'normal' 0.95."""
    import keras
    import tensorflow as tf

    from endoedge.core.fileio import sha256_file
    from endoedge.core.labels import HEMORRHOID
    from endoedge.core.manifest import Artifact, ModelManifest
    from endoedge.core.preprocess import PreprocessSpec

    spec = PreprocessSpec.for_family("inception", 64)
    inputs = keras.Input((64, 64, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    logit = np.log(0.95 / 0.05)
    bias = np.array([0.0, logit] if positive else [logit, 0.0], np.float32)
    dense = keras.layers.Dense(2, activation="softmax")
    outputs = dense(pooled)
    dense.set_weights([np.zeros((3, 2), np.float32), bias])
    model = keras.Model(inputs, outputs)
    out.mkdir(parents=True)
    (out / "model.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    manifest = ModelManifest(
        name=f"const-{'pos' if positive else 'neg'}",
        task="hemorrhoid",
        labelset=HEMORRHOID,
        preprocess=spec,
        artifacts=(Artifact("tflite-fp32", "model.tflite", sha256_file(out / "model.tflite")),),
    )
    (out / "manifest.json").write_text(manifest.to_json())
    return out


def _ldrf_bundle(tiny_bundle: Path, out: Path) -> Path:
    """The tiny 3-class model relabelled as an LDRf grader (the artifacts and their checksums unchanged)."""
    from endoedge.core.labels import LDRF

    shutil.copytree(tiny_bundle, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["task"], manifest["labelset"] = "ldrf", LDRF.to_dict()
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.mark.parametrize("positive", [True, False], ids=["A-positive", "A-negative"])
def test_hemorrhoid_cascade_runs_b_only_while_a_is_positive(tmp_path, tiny_bundle, clip, positive):
    pytest.importorskip("tensorflow")
    a = _constant_hemorrhoid_bundle(tmp_path / "a", positive)
    b = _ldrf_bundle(tiny_bundle, tmp_path / "b")
    config = make_config(
        tmp_path,
        clip,
        tiny_bundle,
        status={"enabled": False},
        run={"max_frames": 90},
        models=[
            {"name": "a", "bundle": str(a), "backend": "tflite", "options": {"threads": 1}},
            {"name": "b", "bundle": str(b), "backend": "tflite", "format": "tflite-fp32", "options": {"threads": 1}},
        ],
        tasks=[{"type": "hemorrhoid", "model_a": "a", "model_b": "b"}],
    )
    renderer = RecordingRenderer()
    daemon = Daemon(config, sink=null_sink(), renderer=renderer)
    daemon.run()
    worker = daemon.stats()["workers"]["hemorrhoid"]
    runs_a = worker["infer_ms_by_role"]["a"]["n"]
    runs_b = worker["infer_ms_by_role"]["b"].get("n", 0)
    assert worker["state"] == "ok" and runs_a > 10
    grades = [s.grade for s in renderer.states if s.grade]
    report = json.loads((daemon.reports_written[0] / "report.json").read_text())["tasks"]["hemorrhoid"]
    if positive:
        assert runs_a - 15 <= runs_b < runs_a  # B follows once A has been displayed positive (0.3 s dwell)
        assert any(g.startswith("Internal hemorrhoid 0.95 · LDRf Rf") for g in grades)
        assert report["max_grade"] in ("rf0", "rf1", "rf2") and report["seconds"]["hemorrhoid"] > 0
    else:
        assert runs_b == 0  # B never runs while A says normal
        assert grades and all(g == "Normal 0.95" for g in grades)
        assert report["max_grade"] is None and report["seconds"]["normal"] > 0


def test_the_processor_freeze_counts_as_a_photo_of_the_site(tmp_path, tiny_bundle, sample_images):
    """A capture-button freeze (the same image held for over a second) is recorded as a photo."""
    import cv2

    from endoedge.core.preprocess import read_image
    from endoedge.core.synthetic import tower_frame

    clip = tmp_path / "freeze.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 30, (SMALL.width, SMALL.height))
    images = [read_image(p) for p in sample_images[:4]]

    def moving(k: int) -> np.ndarray:  # the scope moves: the view shifts a few pixels every frame
        return tower_frame(np.roll(images[(k // 15) % 4], 6 * k, axis=1), SMALL)

    for k in range(60):
        writer.write(moving(k))
    held = tower_frame(images[3], SMALL)
    for _ in range(45):  # the freeze: 1.5 s of one image
        writer.write(held)
    for k in range(30):
        writer.write(moving(k))
    writer.release()
    config = make_config(
        tmp_path,
        clip,
        tiny_bundle,
        status={"enabled": False},
        tasks=[{"type": "egd-coverage", "model": "sites", "photo_from_freeze": True, "observe_frames": 2}],
    )
    daemon = Daemon(config, sink=null_sink())
    daemon.run()
    report = json.loads((daemon.reports_written[0] / "report.json").read_text())
    photos = report["tasks"]["coverage"]["photos"]
    assert [p["via"] for p in photos] == ["freeze"]  # exactly one, during the held image
    assert 60 / 30 - 0.5 <= photos[0]["exam_s"] <= 105 / 30 + 0.5


def test_an_exam_whose_end_was_recorded_is_reported_not_resumed_after_a_crash(tmp_path, tiny_bundle, clip):
    """The state a SIGKILL leaves between POST /exam/end and the report: the end record and a checkpoint."""
    from endoedge.edge.service.report import CheckpointStore

    store = CheckpointStore(tmp_path / "state")
    summary = {"exam_id": "E1", "running": False, "elapsed_s": 42.0, "end_reason": "api", "tasks": {}}
    store.save_ended(summary)
    store.save({"clock": {"exam_id": "E1", "running": True, "elapsed_s": 41.0}, "tasks": {}})
    config = make_config(tmp_path, clip, tiny_bundle, status={"enabled": False})
    daemon = Daemon(config, sink=null_sink())
    assert daemon.run() == 0
    reports = [json.loads((folder / "report.json").read_text()) for folder in daemon.reports_written]
    recovered = [r for r in reports if r["exam"]["id"] == "E1"]
    assert len(recovered) == 1, [r["exam"] for r in reports]
    exam = recovered[0]["exam"]
    assert exam["end_reason"] == "api" and exam["duration_s"] == 42.0 and exam["recovered"] and "ended" in exam["note"]
    others = [r for r in reports if r["exam"]["id"] != "E1"]
    assert others and all("resumed" not in r["exam"]["start_reason"] for r in others)  # E1 was not continued
    assert store.ended() == [] and store.load() is None


def test_ending_an_exam_over_http_records_the_end_before_answering(tmp_path, tiny_bundle, clip):
    from endoedge.edge.service.report import CheckpointStore

    config = make_config(tmp_path, clip, tiny_bundle, status={"enabled": False}, source={"loop": True})
    daemon = Daemon(config, sink=null_sink())
    store = CheckpointStore(tmp_path / "state")
    seen: dict[str, object] = {}
    write_report = daemon._write_report

    def report_after_looking(event, recovered=False, note=""):
        # What a crash at this moment would leave: the end on disk, the running checkpoint gone.
        seen["ended"] = [r["summary"]["exam_id"] for _, r in store.ended()]
        seen["checkpoint"] = store.load()
        return write_report(event, recovered, note)

    daemon._write_report = report_after_looking
    thread = threading.Thread(target=daemon.run)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not daemon.session.clock.running and time.monotonic() < deadline:
            time.sleep(0.05)
        exam_id = daemon.session.clock.exam_id
        code, body = daemon.exam_action("end")
        assert code == 200 and body["ok"]
        assert [r["summary"]["exam_id"] for _, r in store.ended()] == [exam_id]  # durable at the 200
        deadline = time.monotonic() + 10
        while not daemon.reports_written and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        daemon.request_stop("test")
        thread.join(30)
    assert seen["ended"] == [exam_id] and seen["checkpoint"] is None
    assert store.ended() == []


def test_inference_threads_and_their_pools_run_below_the_display_loop(tmp_path, tiny_bundle, clip):
    import os
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("per-thread nice values are a Linux feature")
    seen: dict[str, int] = {}

    def behaviour(_call: int) -> None:
        seen["worker"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

        def child() -> None:  # what a runtime's thread pool, created by this thread, gets
            seen["pool"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

        pool_thread = threading.Thread(target=child)
        pool_thread.start()
        pool_thread.join()

    main_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    config = make_config(tmp_path, clip, tiny_bundle, status={"enabled": False}, run={"inference_nice": 3})
    created: list = []
    switch_before = sys.getswitchinterval()
    daemon = Daemon(config, sink=null_sink(), backend_factory=wrapping_factory(behaviour, created))
    assert daemon.run() == 0
    assert seen["worker"] == seen["pool"] == min(19, main_nice + 3)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main_nice  # the display thread kept it
    assert sys.getswitchinterval() == switch_before  # restored after the run


def test_pixels_are_prepared_ahead_by_the_preparer_and_match_the_manifest(tmp_path, tiny_bundle, clip, monkeypatch):
    """A model slower than a frame runs back to back: its pixels are prepared in another thread, and they
    are exactly what the manifest's preprocessing makes of the frame."""
    import endoedge.edge.service.worker as worker_module
    from endoedge.core.preprocess import prepare_pixels

    threads: list[str] = []
    real_prepare = worker_module.prepare_pixels

    def recording_prepare(image, spec, roi):
        threads.append(threading.current_thread().name)
        return real_prepare(image, spec, roi)

    monkeypatch.setattr(worker_module, "prepare_pixels", recording_prepare)
    received: list[tuple[np.ndarray, object, np.ndarray]] = []
    real_process = worker_module.TaskWorker._process

    def remembering_process(self, item, loaded, detector, generation):
        if item.pixels is not None:
            received.append((item.frame.image, item.roi, item.pixels))
        return real_process(self, item, loaded, detector, generation)

    monkeypatch.setattr(worker_module.TaskWorker, "_process", remembering_process)
    config = make_config(tmp_path, clip, tiny_bundle, status={"enabled": False})
    created: list = []
    daemon = Daemon(config, sink=null_sink(), backend_factory=wrapping_factory(lambda n: 0.05, created))
    assert daemon.run() == 0
    stats = daemon.stats()["workers"]["coverage"]
    assert stats["inferences"] > 5 and received
    # Frames taken before the model had loaded are prepared by the inference thread; from then on, never.
    first = next(i for i, name in enumerate(threads) if name.startswith("prepare-"))
    assert first <= 2 and all(name.startswith("prepare-") for name in threads[first:]), threads
    spec = created[0].manifest.preprocess
    image, roi, pixels = received[-1]
    assert roi is not None
    np.testing.assert_array_equal(pixels, prepare_pixels(image, spec, roi))


def test_status_names_the_bundle_version_running_after_current_is_switched(tmp_path, tiny_bundle, clip):
    """Over the real status server: ``bundle`` is what is loaded; a switched ``current`` is only pending."""
    from endoedge.core.fileio import sha256_file
    from endoedge.edge.box.bundle_store import install_bundle
    from endoedge.edge.service.worker import load_backend

    store = tmp_path / "store"
    first = install_bundle(tiny_bundle, store)
    config = make_config(
        tmp_path,
        clip,
        tiny_bundle,
        models=[{"name": "sites", "bundle": str(store / "current"), "backend": "tflite"}],
        source={"loop": True},
    )
    may_load = threading.Event()

    def gated_load(model):  # the real loader, held back so /status can be read before anything is loaded
        may_load.wait(60)
        return load_backend(model)

    daemon = Daemon(config, sink=null_sink(), backend_factory=gated_load)
    thread = threading.Thread(target=daemon.run)
    thread.start()

    def backends() -> list[dict]:
        with urllib.request.urlopen(daemon.status_server.url + "/status", timeout=5) as response:
            return json.loads(response.read())["backends"]

    try:
        deadline = time.monotonic() + 30
        while daemon.status_server is None and time.monotonic() < deadline:
            time.sleep(0.05)
        (before,) = backends()
        may_load.set()
        while daemon.workers[0].state != "ok" and time.monotonic() < deadline + 30:
            time.sleep(0.05)
        (loaded,) = backends()
        newer = tmp_path / "newer"
        shutil.copytree(tiny_bundle, newer)
        manifest = json.loads((newer / "manifest.json").read_text())
        manifest["name"] = "a newer version"
        (newer / "manifest.json").write_text(json.dumps(manifest))
        second = install_bundle(newer, store)  # `current` now points at it; the daemon runs the first
        assert second != first
        (running,) = backends()
        stats = daemon.stats()
    finally:
        may_load.set()
        daemon.request_stop("test")
        thread.join(30)
    # Nothing loaded yet: no bundle is named as running; what `current` points at is pending.
    assert before["bundle"] is None and before["configured_bundle"] == str(store / "current")
    assert before["pending"]["bundle"] == str(first) and before["pending"]["manifest_name"] == "tiny-gastrovision3"
    assert loaded["bundle"] == str(first) and "pending" not in loaded
    # After the switch: the loaded version, its name and checksum; the new one only as pending.
    assert running["bundle"] == running["bundle_path"] == str(first)
    assert running["manifest_name"] == "tiny-gastrovision3"
    assert running["manifest_sha256"] == sha256_file(first / "manifest.json")
    assert running["configured_bundle"] == str(store / "current")
    assert running["pending"] == {
        "bundle": str(second),
        "manifest_name": "a newer version",
        "manifest_sha256": sha256_file(second / "manifest.json"),
    }
    assert isinstance(stats["dropped_before_display"], int) and stats["dropped_before_display"] >= 0


def test_fresh_pacing_waits_for_a_frame_prepared_after_each_inference(tmp_path, tiny_bundle, clip, monkeypatch):
    import endoedge.edge.service.worker as worker_module

    calls = {"discard": 0, "take": 0}
    real_discard, real_take = worker_module.Mailbox.discard, worker_module.Mailbox.take

    def counting_discard(self):
        calls["discard"] += 1
        return real_discard(self)

    def counting_take(self, timeout):
        item = real_take(self, timeout)
        if isinstance(item, worker_module._Prepared):
            calls["take"] += 1
        return item

    monkeypatch.setattr(worker_module.Mailbox, "discard", counting_discard)
    monkeypatch.setattr(worker_module.Mailbox, "take", counting_take)
    config = make_config(tmp_path, clip, tiny_bundle, status={"enabled": False}, run={"ai_pacing": "fresh"})
    created: list = []
    daemon = Daemon(config, sink=null_sink(), backend_factory=wrapping_factory(lambda n: 0.05, created))
    assert daemon.run() == 0
    worker = daemon.stats()["workers"]["coverage"]
    assert worker["inferences"] > 3 and worker["errors"] == 0
    assert calls["discard"] >= calls["take"] >= worker["inferences"]  # before every inference
    assert daemon.stats()["frames_out"] == daemon.stats()["frames_in"]  # the video is unaffected
