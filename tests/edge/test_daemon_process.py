"""The real ``endoedge run`` process: SIGTERM writes the report, SIGKILL is recovered from the checkpoint,
systemd's notify protocol (READY, WATCHDOG from the display loop, STOPPING) over a socket the test owns."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from daemon_helpers import SMALL, write_clip

from _helpers import NotifyListener


@pytest.fixture(scope="module")
def clip(sample_images, tmp_path_factory) -> Path:
    return write_clip(sample_images, tmp_path_factory.mktemp("pclip") / "clip.mp4", SMALL, frames_per_image=10)


def start(tmp: Path, clip: Path, bundle: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    args = [
        sys.executable,
        "-m",
        "endoedge.cli",
        "run",
        f"file://{clip}",
        "--bundle",
        str(bundle),
        "--backend",
        "tflite",
        "--threads",
        "1",
        "--sink",
        "null://",
        "--loop",
        "--no-status",
        "--report-dir",
        str(tmp / "reports"),
        "--state-dir",
        str(tmp / "state"),
        "--set",
        "state.checkpoint_every_s=0.3",
        "--set",
        "exam.start_after_s=0.2",
        *extra,
    ]
    return subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )


def wait_for(predicate, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"daemon exited early ({proc.returncode}):\n{proc.stdout.read()[-3000:]}")
        time.sleep(0.1)
    raise AssertionError("timed out")


def checkpoint_elapsed(state: Path) -> float:
    try:
        return float(json.loads((state / "exam-checkpoint.json").read_text())["clock"]["elapsed_s"])
    except (OSError, ValueError, KeyError):
        return 0.0


def reports(tmp: Path) -> list[dict]:
    folder = tmp / "reports"
    if not folder.is_dir():
        return []
    return [json.loads((d / "report.json").read_text()) for d in sorted(folder.iterdir()) if not d.name.startswith(".")]


def test_sigterm_writes_the_complete_report_and_exits_cleanly(tmp_path, tiny_bundle, clip):
    proc = start(tmp_path, clip, tiny_bundle)
    try:
        wait_for(lambda: checkpoint_elapsed(tmp_path / "state") > 1.0, 60, proc)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, output[-2000:]
    done = reports(tmp_path)
    assert len(done) == 1
    assert done[0]["exam"]["end_reason"] == "daemon stopped (signal SIGTERM)"
    assert done[0]["exam"]["duration_s"] > 1.0 and done[0]["tasks"]["coverage"]["sites"]
    assert not (tmp_path / "state" / "exam-checkpoint.json").exists()
    assert not [p for p in (tmp_path / "reports").rglob("*") if p.name.startswith(".")]
    # Structured log lines, and nothing from the frames' on-screen text (the fake patient name).
    assert 'msg="report written"' in output and "DOE" not in output


def test_after_sigkill_the_exam_continues_from_the_checkpoint(tmp_path, tiny_bundle, clip):
    proc = start(tmp_path, clip, tiny_bundle)
    try:
        wait_for(lambda: checkpoint_elapsed(tmp_path / "state") > 1.5, 60, proc)
        proc.kill()
        proc.wait(timeout=10)
    finally:
        proc.kill()
    saved = json.loads((tmp_path / "state" / "exam-checkpoint.json").read_text())
    exam_id, elapsed = saved["clock"]["exam_id"], saved["clock"]["elapsed_s"]
    assert reports(tmp_path) == []  # killed: no report yet, only the checkpoint
    again = start(tmp_path, clip, tiny_bundle, "--duration", "3")
    output, _ = again.communicate(timeout=60)
    assert again.returncode == 0, output[-2000:]
    assert 'msg="exam resumed after restart"' in output
    done = reports(tmp_path)
    assert len(done) == 1 and done[0]["exam"]["id"] == exam_id
    assert "resumed after restart" in done[0]["exam"]["start_reason"]
    assert done[0]["exam"]["duration_s"] >= elapsed + 1.0  # the timer carried on from the checkpoint
    observed_before = sum(1 for s in saved["tasks"]["coverage"]["state"]["observed_at"] if s is not None)
    assert done[0]["tasks"]["coverage"]["observed"] >= observed_before


def test_a_stale_checkpoint_is_closed_with_a_marked_report(tmp_path, tiny_bundle, clip):
    proc = start(tmp_path, clip, tiny_bundle)
    try:
        wait_for(lambda: checkpoint_elapsed(tmp_path / "state") > 1.0, 60, proc)
        proc.kill()
        proc.wait(timeout=10)
    finally:
        proc.kill()
    again = start(tmp_path, clip, tiny_bundle, "--max-frames", "5", "--set", "state.resume_within_s=0")
    output, _ = again.communicate(timeout=60)
    assert again.returncode == 0, output[-2000:]
    recovered = [r for r in reports(tmp_path) if r["exam"]["recovered"]]
    assert len(recovered) == 1
    assert recovered[0]["exam"]["end_reason"] == "daemon stopped unexpectedly; closed from the last checkpoint"


def test_sd_notify_ready_watchdog_from_the_display_loop_and_stopping(tmp_path, tiny_bundle, clip):
    listener = NotifyListener(tmp_path / "notify.sock")
    env = {
        "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
        "WATCHDOG_USEC": "400000",  # 0.4 s: pings every 0.2 s
        "ENDOEDGE_FAULT_INJECTION": "1",
    }
    proc = start(tmp_path, clip, tiny_bundle, env=env)
    try:
        wait_for(lambda: listener.count("READY=1") == 1, 60, proc)
        ready = next(m for _, m in listener.messages if "READY=1" in m)
        assert "STATUS=running; AI ok" in ready  # READY only after the backend is warm
        t0 = time.monotonic()
        time.sleep(1.5)
        assert listener.count("WATCHDOG=1", since=t0) >= 4
        proc.send_signal(signal.SIGUSR2)  # stall the display loop on purpose
        time.sleep(0.5)
        frozen_at = time.monotonic()
        time.sleep(1.5)
        assert listener.count("WATCHDOG=1", since=frozen_at) == 0  # a stalled loop stops the pings
        assert proc.poll() is None  # ...while the process (and its other threads) is alive
        proc.send_signal(signal.SIGUSR2)
        thawed = time.monotonic()
        time.sleep(1.0)
        assert listener.count("WATCHDOG=1", since=thawed) >= 2
        assert any(m.startswith("STATUS=") and "fps" in m for _, m in listener.messages)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, output[-2000:]
        wait_for(lambda: listener.count("STOPPING=1") == 1, 5)
    finally:
        proc.kill()
        listener.close()
