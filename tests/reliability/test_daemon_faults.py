"""Fault injection against the real ``endoedge run`` process.

Each test starts the daemon as a subprocess (real LiteRT backend on a tiny real bundle, real GStreamer
network source where one is needed, real status server), injects one kind of fault and reads the
outcome from ``/status``, ``/proc`` and the files on disk. Every test prints its figures as
``[figure] ...`` lines (``pytest -s``); ``benchmarks/reliability.md`` records them.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import signal
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from _daemon_harness import (
    DaemonProcess,
    free_port,
    half_written,
    kill_process,
    reports,
    tower_frames,
    write_clip,
)

from _helpers import needs_gstreamer
from endoedge.core.synthetic import TowerLayout

pytest.importorskip("endoedge.edge.service.daemon", reason="the daemon module is not built yet")
pytest.importorskip("ai_edge_litert", reason="the daemon tests run the real LiteRT backend")

GST_LAUNCH = shutil.which("gst-launch-1.0")
# The MJPEG server is gst-launch-1.0 and the daemon reads it through a gst:// source (Python bindings).
needs_gst = needs_gstreamer

#: Fast reconnection and backend restarts, so many faults fit in one test.
FAST_RECOVERY = [
    "--set",
    "source.reconnect_initial_s=0.1",
    "--set",
    "source.reconnect_max_s=0.5",
    "--set",
    "models.0.timeout_s=0.5",
    "--set",
    "models.0.restart_initial_s=0.2",
    "--set",
    "models.0.restart_max_s=1.0",
]
#: The exam is opened and closed through the API, so its identity can be followed across faults.
MANUAL_EXAM = ["--set", "exam.auto_start=false", "--set", "exam.auto_end=false"]


def figure(name: str, **values: Any) -> None:
    """Print one line of figures for the reliability report."""
    print(f"[figure] {name}: " + ", ".join(f"{k}={v}" for k, v in values.items()))


@pytest.fixture(scope="module")
def frames(sample_images: list[Path]) -> list[np.ndarray]:
    return tower_frames(sample_images)


@pytest.fixture(scope="module")
def clip(frames: list[np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip(frames, tmp_path_factory.mktemp("faults") / "clip.mp4", hold=15)


@pytest.fixture(scope="module")
def jpeg_dir(frames: list[np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("jpegs")
    for i, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"f{i:03d}.jpg"), frame)
    return folder


# ---------------------------------------------------------------------------------------------------
# Capture source lost and back
# ---------------------------------------------------------------------------------------------------


def start_stream_server(jpeg_dir: Path, port: int) -> subprocess.Popen[bytes]:
    """A ``gst-launch-1.0`` process serving the tower frames as MJPEG over TCP on loopback at 30 fps."""
    assert GST_LAUNCH is not None
    pipeline = (
        f"multifilesrc location={jpeg_dir}/f%03d.jpg loop=true caps=image/jpeg,framerate=30/1 ! jpegdec "
        f"! videoconvert ! clocksync ! jpegenc ! multipartmux ! tcpserversink host=127.0.0.1 port={port}"
    )
    return subprocess.Popen([GST_LAUNCH, "-q", *pipeline.split()], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def tcp_mjpeg_source(port: int) -> str:
    return f"gst://tcpclientsrc host=127.0.0.1 port={port} ! multipartdemux ! jpegdec ! videoconvert ! appsink"


def _source_cycles(tmp_path: Path, tiny_bundle: Path, jpeg_dir: Path, cycles: int) -> None:
    port = free_port()
    server = start_stream_server(jpeg_dir, port)
    lost_s: list[float] = []
    back_s: list[float] = []
    try:
        with DaemonProcess(
            tmp_path, tcp_mjpeg_source(port), tiny_bundle, extra=[*FAST_RECOVERY, *MANUAL_EXAM]
        ) as daemon:
            daemon.wait_status(lambda s: s["phase"] == "running" and s["signal"], 120, "signal from the stream")
            assert daemon.request("POST", "/exam/start")[0] == 200
            exam_id = daemon.status()["exam"]["exam_id"]
            assert exam_id
            for cycle in range(cycles):
                kill_process(server)
                t_kill = time.monotonic()
                status = daemon.wait_status(lambda s: not s["signal"], 30, f"no signal (cycle {cycle})")
                lost_s.append(time.monotonic() - t_kill)
                frames_during = status["stats"]["frames_out"]
                server = start_stream_server(jpeg_dir, port)
                t_back = time.monotonic()
                status = daemon.wait_status(lambda s: s["signal"], 60, f"signal back (cycle {cycle})")
                back_s.append(time.monotonic() - t_back)
                # The monitor kept receiving (no-signal) frames while the stream was away.
                assert status["stats"]["frames_out"] > frames_during
                assert status["exam"]["exam_id"] == exam_id and status["exam"]["running"], "exam state lost"
            final = daemon.status()
            assert daemon.proc.poll() is None
            reconnects = final["source"]["reconnects"]
            assert reconnects >= cycles
            assert daemon.stop() == 0
            done = reports(tmp_path / "reports")
            assert [r["exam"]["id"] for r in done] == [exam_id]
            assert "DOE" not in daemon.log_text()
    finally:
        kill_process(server)
    figure(
        "source lost and back",
        cycles=cycles,
        crashes=0,
        reconnects=reconnects,
        no_signal_frames=final["stats"]["no_signal_frames"],
        detect_loss_s_median=round(statistics.median(lost_s), 2),
        detect_loss_s_max=round(max(lost_s), 2),
        reconnect_s_median=round(statistics.median(back_s), 2),
        reconnect_s_max=round(max(back_s), 2),
        exam_kept=True,
    )


@needs_gst
def test_stream_source_lost_and_back_5_times(tmp_path: Path, tiny_bundle: Path, jpeg_dir: Path) -> None:
    _source_cycles(tmp_path, tiny_bundle, jpeg_dir, cycles=5)


@needs_gst
@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_stream_source_lost_and_back_100_times(tmp_path: Path, tiny_bundle: Path, jpeg_dir: Path) -> None:
    _source_cycles(tmp_path, tiny_bundle, jpeg_dir, cycles=100)


# ---------------------------------------------------------------------------------------------------
# Corrupt and odd frames
# ---------------------------------------------------------------------------------------------------


class MjpegServer:
    """Serves a scripted list of JPEG payloads (good, truncated, garbage...) as multipart MJPEG over TCP.

    The payloads are sent byte for byte, so the daemon's own demuxer and decoder meet the corrupt data.
    After the script it repeats the last good payload until stopped.
    """

    def __init__(self, script: list[bytes], fps: float = 30.0) -> None:
        self.script = script
        self.fps = fps
        self.port = free_port()
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.listener.settimeout(0.2)
        self.running = True
        self.sent = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        position = 0
        while self.running:
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                next_at = time.monotonic()
                while self.running:
                    payload = self.script[min(position, len(self.script) - 1)]
                    part = (
                        b"--ThisRandomString\r\nContent-Type: image/jpeg\r\n"
                        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
                        + payload
                        + b"\r\n"
                    )
                    try:
                        conn.sendall(part)
                    except OSError:
                        break  # the daemon dropped the connection (decoder error): it will reconnect
                    position += 1
                    self.sent += 1
                    next_at += 1.0 / self.fps
                    time.sleep(max(0.0, next_at - time.monotonic()))

    @property
    def finished_script(self) -> bool:
        return self.sent >= len(self.script)

    def close(self) -> None:
        self.running = False
        self.listener.close()
        self.thread.join(timeout=5)


def _jpeg(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", image)
    assert ok
    return data.tobytes()


@needs_gst
def test_corrupt_and_odd_frames_never_crash_the_daemon(
    tmp_path: Path, tiny_bundle: Path, frames: list[np.ndarray], sample_images: list[Path]
) -> None:
    rng = np.random.default_rng(0)
    good = [_jpeg(f) for f in frames]
    big = tower_frames(sample_images[:1], layout=TowerLayout())[0]
    odd = {
        "truncated": [g[: len(g) // 3] for g in good[:3]],
        "garbage": [bytes(rng.integers(0, 256, 5000, dtype=np.uint8)) for _ in range(3)],
        "jpeg-header-then-garbage": [good[0][:600] + bytes(rng.integers(0, 256, 4000, dtype=np.uint8))],
        "empty": [b""],
        "black": [_jpeg(np.zeros((360, 640, 3), np.uint8))] * 10,
        "white": [_jpeg(np.full((360, 640, 3), 255, np.uint8))] * 10,
        "noise": [_jpeg(rng.integers(0, 256, (360, 640, 3), dtype=np.uint8))] * 5,
        "1080p mid-stream": [_jpeg(big)] * 10,
        "tiny 8x8": [_jpeg(np.full((8, 8, 3), 128, np.uint8))] * 3,
    }
    script = good * 3
    for payloads in odd.values():
        script += payloads + good[:5]
    script += good * 3
    server = MjpegServer(script)
    try:
        with DaemonProcess(
            tmp_path, tcp_mjpeg_source(server.port), tiny_bundle, extra=[*FAST_RECOVERY, *MANUAL_EXAM]
        ) as daemon:
            daemon.wait_status(lambda s: s["phase"] == "running" and s["signal"], 120, "signal from the stream")
            assert daemon.request("POST", "/exam/start")[0] == 200
            exam_id = daemon.status()["exam"]["exam_id"]
            deadline = time.monotonic() + 90
            while not server.finished_script and time.monotonic() < deadline:
                assert daemon.proc.poll() is None, daemon.log_tail()
                time.sleep(0.2)
            assert server.finished_script, "the script was not consumed"
            status = daemon.wait_status(lambda s: s["signal"] and s["ai"] == "ok", 30, "good frames after the odd ones")
            first_frames = status["stats"]["frames_in"]
            status = daemon.wait_status(
                lambda s: s["stats"]["frames_in"] > first_frames + 15, 30, "frames flowing after the odd ones"
            )
            assert status["exam"]["exam_id"] == exam_id
            healthy = daemon.request("GET", "/healthz")[0]
            assert healthy == 200
            assert daemon.stop() == 0
            log = daemon.log_text()
            assert "Traceback" not in log
    finally:
        server.close()
    injected = sum(len(v) for v in odd.values())
    figure(
        "corrupt and odd frames",
        injected=injected,
        kinds=len(odd),
        crashes=0,
        bad_frames_counted=status["stats"]["bad_frames"],
        reconnects=status["source"]["reconnects"],
        frames_in=status["stats"]["frames_in"],
        exam_kept=True,
    )


# ---------------------------------------------------------------------------------------------------
# Backend failures
# ---------------------------------------------------------------------------------------------------


def test_backend_failures_keep_the_video_and_restart_the_backend(tmp_path: Path, tiny_bundle: Path, clip: Path) -> None:
    results = {}
    with DaemonProcess(tmp_path, f"file://{clip}", tiny_bundle, extra=["--loop", *FAST_RECOVERY], faulty=True) as d:
        d.wait_running()
        for action in ("raise", "nan", "shape", "range", "hang", "loadfail"):
            if action == "loadfail":
                d.set_backend("raise")  # a failure forces a reload, and the reload fails too
                d.wait_status(lambda s: s["ai"] == "off", 30, "AI off before the failing reloads")
                d.set_backend("loadfail")
            errors_before = d.status()["stats"]["workers"]["coverage"]["errors"]
            t_fault = time.monotonic()
            if action != "loadfail":
                d.set_backend(action)
            off = d.wait_status(lambda s: s["ai"] == "off", 30, f"AI off after {action}")
            to_off = time.monotonic() - t_fault
            assert off["message"], "the banner needs a reason"
            # AI stays off for a while: every captured frame must still be displayed, and the AI must
            # not come back while the fault lasts (a reload's warm-up checks outputs as inference does).
            states = set()
            while time.monotonic() - t_fault < to_off + 1.5:
                states.add(d.status()["ai"])
                time.sleep(0.05)
            assert "ok" not in states, (action, states)
            during = d.status()
            if action in ("nan", "shape", "range"):
                # One bad inference; each reload's warm-up then fails on the same garbage, so the backend
                # is never declared loaded only to fail again on the next frame.
                assert during["stats"]["workers"]["coverage"]["errors"] - errors_before == 1, action
            d_in = during["stats"]["frames_in"] - off["stats"]["frames_in"]
            d_out = during["stats"]["frames_out"] - off["stats"]["frames_out"]
            d_off = during["stats"]["workers"]["coverage"]["ai_off_s"] - off["stats"]["workers"]["coverage"]["ai_off_s"]
            assert d_in >= 20 and d_out >= d_in - 1, (action, d_in, d_out)
            assert d_off >= 0.75, (action, d_off)  # restarts may show "warming" briefly; mostly off
            d.set_backend("ok")
            t_ok = time.monotonic()
            back = d.wait_status(lambda s: s["ai"] == "ok", 60, f"AI back after {action}")
            worker = back["stats"]["workers"]["coverage"]
            results[action] = {
                "off_after_s": round(to_off, 2),
                "back_after_s": round(time.monotonic() - t_ok, 2),
                "frames_in_out_while_off": f"{d_in}/{d_out}",
                "ai_off_s_of_1.5": round(d_off, 2),
                "restarts": worker["restarts"],
            }
        final = d.status()
        assert final["stats"]["workers"]["coverage"]["hangs"] >= 1
        # The injected hang lasts 60 s and is repeated by every warm-up until the control says "ok": the
        # AI must come back long before that (the warm-up runs under a hang budget too).
        assert results["hang"]["back_after_s"] < 40, results["hang"]
        metrics = d.request("GET", "/metrics")[1].decode()
        assert "endoedge_backend_restarts_total" in metrics
        assert d.stop() == 0
        assert "Traceback" not in d.log_text()
    for action, values in results.items():
        figure(f"backend {action}", **values)
    figure(
        "backend faults total",
        errors=final["stats"]["workers"]["coverage"]["errors"],
        hangs=final["stats"]["workers"]["coverage"]["hangs"],
        restarts=final["stats"]["workers"]["coverage"]["restarts"],
        loop_p99_ms=final["stats"]["stages_ms"]["loop"].get("p99"),
        loop_max_ms=final["stats"]["stages_ms"]["loop"]["max"],
        video_delay_p99_ms=final["stats"]["video_delay_ms"].get("p99"),
    )


# ---------------------------------------------------------------------------------------------------
# SIGKILL at random moments, SIGTERM at the end
# ---------------------------------------------------------------------------------------------------


def _all_json_parse(root: Path) -> None:
    for path in root.rglob("*.json"):
        json.loads(path.read_text())  # a half-written JSON would fail here


def _kill_storm(tmp_path: Path, tiny_bundle: Path, clip: Path, kills: int, seed: int) -> None:
    rng = random.Random(seed)
    exam_ids: set[str] = set()
    resumed = 0
    leftovers = 0
    for k in range(kills):
        with DaemonProcess(tmp_path, f"file://{clip}", tiny_bundle, extra=["--loop", *FAST_RECOVERY]) as d:
            d.wait_status(lambda s: s["phase"] == "running" and s["exam"]["running"], 120, "exam running")
            time.sleep(rng.uniform(0.0, 2.0))
            status = d.try_status()
            if status is not None and status["exam"]["exam_id"]:
                exam_ids.add(status["exam"]["exam_id"])
            if k % 3 == 2:
                # Kill right after asking for the exam's end: the report may be mid-write.
                d.request("POST", "/exam/end")
                time.sleep(rng.uniform(0.0, 0.05))
            d.stop(signal.SIGKILL)
            resumed += "exam resumed after restart" in d.log_text()
        # The real names always hold complete files; a kill between creating a temporary and renaming
        # it may leave the (hidden) temporary, which the next start-up removes.
        _all_json_parse(tmp_path / "reports")
        _all_json_parse(tmp_path / "state")
        leftovers = max(leftovers, len(half_written(tmp_path)))
    with DaemonProcess(tmp_path, f"file://{clip}", tiny_bundle, extra=["--loop", *FAST_RECOVERY]) as d:
        d.wait_status(lambda s: s["phase"] == "running", 120, "running after the storm")
        time.sleep(1.0)
        assert d.stop(signal.SIGTERM) == 0
    assert half_written(tmp_path / "reports") == [] and half_written(tmp_path / "state") == []
    done = reports(tmp_path / "reports")
    assert done, "no exam was ever reported"
    reported = {r["exam"]["id"] for r in done}
    lost = exam_ids - reported
    assert not lost, f"exams seen running but never reported: {lost}"
    assert not (tmp_path / "state" / "exam-checkpoint.json").exists()
    figure(
        "SIGKILL storm",
        kills=kills,
        exams_seen=len(exam_ids),
        reports=len(done),
        recovered_reports=sum(1 for r in done if r["exam"].get("recovered")),
        resumed_after_restart=resumed,
        max_hidden_temporaries_after_a_kill=leftovers,
        temporaries_after_restart=0,
        lost_exams=0,
    )


@pytest.mark.slow
def test_sigkill_storm_never_leaves_half_written_files(tmp_path: Path, tiny_bundle: Path, clip: Path) -> None:
    _kill_storm(tmp_path, tiny_bundle, clip, kills=4, seed=1)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_sigkill_storm_30_kills(tmp_path: Path, tiny_bundle: Path, clip: Path) -> None:
    _kill_storm(tmp_path, tiny_bundle, clip, kills=30, seed=2)


# ---------------------------------------------------------------------------------------------------
# Disk full for reports
# ---------------------------------------------------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 32 KiB tmpfs (real ENOSPC) when this user may mount one; skipped otherwise."""
    mount = tmp_path / "tiny-disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=32k", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); the RLIMIT_FSIZE test covers it")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _fill(folder: Path) -> None:
    """Fill a file system to the last block."""
    handle = open(folder / "filler", "wb")  # noqa: SIM115 - closing a full file raises too
    try:
        while True:
            handle.write(b"\0" * 4096)
            handle.flush()
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            handle.close()


def _disk_full_run(tmp_path: Path, tiny_bundle: Path, clip: Path, report_dir: Path, **kwargs: Any) -> dict[str, Any]:
    extra = ["--loop", *FAST_RECOVERY, "--report-dir", str(report_dir)]
    with DaemonProcess(tmp_path / "run", f"file://{clip}", tiny_bundle, extra=extra, **kwargs) as d:
        d.wait_status(lambda s: s["phase"] == "running" and s["exam"]["running"], 120, "exam running")
        time.sleep(1.0)
        assert d.request("POST", "/exam/end")[0] == 200
        status = d.wait_status(lambda s: s["stats"]["report_errors"] >= 1, 30, "report error counted")
        frames = status["stats"]["frames_out"]
        status = d.wait_status(lambda s: s["stats"]["frames_out"] > frames + 30, 30, "video after the error")
        assert d.proc.poll() is None
        assert d.stop() == 0
        log = d.log_text()
    lines = [line for line in log.splitlines() if "report" in line and ("error" in line.lower() or "fail" in line)]
    assert lines, f"no log line says the report failed:\n{log[-2000:]}"
    assert all("Traceback" not in line for line in log.splitlines())
    assert half_written(report_dir) == [] or all(p.name == "filler" for p in half_written(report_dir))
    return {"status": status, "line": lines[0]}


def test_disk_full_for_reports_tmpfs(tmp_path: Path, tiny_bundle: Path, clip: Path, tiny_disk: Path) -> None:
    _fill(tiny_disk)
    outcome = _disk_full_run(tmp_path, tiny_bundle, clip, tiny_disk / "reports")
    assert [p.name for p in tiny_disk.iterdir()] in (["filler"], ["filler", "reports"], ["reports", "filler"])
    figure("disk full (tmpfs ENOSPC)", report_errors=outcome["status"]["stats"]["report_errors"], crashes=0)
    print(f"[figure] disk full log line: {outcome['line'][:200]}")


@pytest.mark.slow
def test_file_size_limit_for_reports(tmp_path: Path, tiny_bundle: Path, clip: Path) -> None:
    import resource

    def limit() -> None:  # runs in the child before exec: every file it writes stops at 16 KiB
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, 16 * 1024))

    outcome = _disk_full_run(tmp_path, tiny_bundle, clip, tmp_path / "reports", preexec=limit)
    assert reports(tmp_path / "reports") == []
    figure("file-size limit (EFBIG)", report_errors=outcome["status"]["stats"]["report_errors"], crashes=0)


# ---------------------------------------------------------------------------------------------------
# Tampered or wrong bundles
# ---------------------------------------------------------------------------------------------------


def _copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("fault", ["flipped-byte", pytest.param("wrong-task", marks=pytest.mark.slow)])
def test_a_refused_bundle_keeps_the_video_in_passthrough(
    tmp_path: Path, tiny_bundle: Path, clip: Path, fault: str
) -> None:
    bundle = _copy_bundle(tiny_bundle, tmp_path / "bundle")
    if fault == "flipped-byte":
        artifact = bundle / "model_fp32.tflite"
        data = bytearray(artifact.read_bytes())
        data[len(data) // 2] ^= 0x01
        artifact.write_bytes(bytes(data))
        extra = ["--loop"]
    else:
        manifest = json.loads((bundle / "manifest.json").read_text())
        manifest["task"] = "ldrf"
        (bundle / "manifest.json").write_text(json.dumps(manifest))
        extra = ["--loop", "--task", "egd-coverage"]
    with DaemonProcess(tmp_path / "run", f"file://{clip}", bundle, extra=extra) as d:
        status = d.wait_status(lambda s: s["phase"] == "running" and s["ai"] == "off", 120, "AI off")
        first = status["stats"]["frames_out"]
        time.sleep(1.5)
        status = d.status()
        assert status["ai"] == "off" and status["stats"]["frames_out"] > first + 30
        assert d.request("GET", "/healthz")[0] == 200
        message = status["message"]
        if fault == "flipped-byte":
            assert str(artifact) in message and "expected" in message and "actual" in message, message
        else:
            assert "ldrf" in message or "task" in message, message
        assert d.stop() == 0
    figure(f"refused bundle ({fault})", fps_out=status["fps_out"], banner=message[:160].replace(",", ";"))


@pytest.mark.slow
def test_an_exam_ended_just_before_a_crash_stays_ended(tmp_path: Path, tiny_bundle: Path, clip: Path) -> None:
    with DaemonProcess(tmp_path, f"file://{clip}", tiny_bundle, extra=["--loop"]) as d:
        status = d.wait_status(lambda s: s["exam"]["running"] and s["exam"]["elapsed_s"] > 2, 120, "an exam")
        exam_id = status["exam"]["exam_id"]
        # A 200 means the end is on disk: kill at once, before the supervisor can write the report.
        assert d.request("POST", "/exam/end")[0] == 200
        d.stop(signal.SIGKILL)
    with DaemonProcess(tmp_path, f"file://{clip}", tiny_bundle, extra=["--loop"]) as d:
        d.wait_status(lambda s: s["phase"] == "running", 120, "running after the crash")
        time.sleep(0.5)
        status = d.status()
        assert d.stop() == 0
    ended = [r for r in reports(tmp_path / "reports") if r["exam"]["id"] == exam_id]
    assert not (status["exam"]["running"] and status["exam"]["exam_id"] == exam_id), "the ended exam was resumed"
    assert ended and "api" in ended[0]["exam"]["end_reason"], ended
