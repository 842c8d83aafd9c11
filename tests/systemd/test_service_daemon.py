"""The service as systemd runs it: the unit's ExecStart with the shipped config (box paths swapped for
temporary ones), the notify socket (READY, WATCHDOG from the display loop — stopping when the loop is
frozen on purpose — and STOPPING), the bundle store's ``current`` link; then an upgrade and a rollback.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from _helpers import NotifyListener

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "trt"))
from _onnxbundle import MIX, onnx_bundle

from endoedge.edge.box.bundle_store import install_bundle, rollback

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "endoedge.service"


def _config(tmp: Path, sample_dir: Path) -> Path:
    """systemd/config.yaml with the box's device and folders replaced by test ones (nothing else)."""
    text = (ROOT / "systemd" / "config.yaml").read_text()
    for old, new in (
        ("v4l2:///dev/video0", f"images://{sample_dir / 'colon_polyp'}\n  loop: true"),
        ("hdmi://", "null://"),
        ("/var/lib/endoedge/", f"{tmp}/"),
        ("/var/cache/endoedge", f"{tmp}/cache"),
        ("port: 8765", "port: 0"),
    ):
        assert old in text, old
        text = text.replace(old, new)
    config = tmp / "config.yaml"
    config.write_text(text)
    return config


def _exec_start(config: Path) -> list[str]:
    (line,) = [v for v in UNIT.read_text().splitlines() if v.startswith("ExecStart=")]
    argv = shlex.split(line.split("=", 1)[1])
    assert argv[0] == "/opt/endoedge/venv/bin/endoedge"
    return [
        sys.executable,
        "-m",
        "endoedge.cli",
        *[str(config) if a == "/etc/endoedge/config.yaml" else a for a in argv[1:]],
    ]


def _run_service(tmp: Path, config: Path, freeze: bool = False) -> tuple[dict, list[str], str]:
    """Start as systemd would, wait for READY and watchdog pings, read /status, stop with SIGTERM.

    With ``freeze``, the display loop is stalled on purpose (the daemon's fault-injection hook, SIGUSR2)
    and the watchdog pings must stop, then resume when it is released.
    """
    sock = tmp / f"notify-{time.monotonic_ns()}.sock"
    listener = NotifyListener(sock)
    env = {**os.environ, "NOTIFY_SOCKET": str(sock), "WATCHDOG_USEC": "400000", "PYTHONUNBUFFERED": "1"}
    if freeze:
        env["ENDOEDGE_FAULT_INJECTION"] = "1"
    proc = subprocess.Popen(_exec_start(config), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        deadline = time.monotonic() + 90
        while listener.count("READY=1") == 0:
            assert proc.poll() is None, "".join(lines)[-3000:]
            assert time.monotonic() < deadline, "no READY=1"
            time.sleep(0.05)
        ready_at = time.monotonic()
        time.sleep(1.2)
        assert listener.count("WATCHDOG=1", since=ready_at) >= 3
        if freeze:
            proc.send_signal(signal.SIGUSR2)
            time.sleep(0.5)
            frozen_at = time.monotonic()
            time.sleep(1.5)  # 1.5 s without a ping: systemd (WatchdogSec=0.4 s here) would kill and restart
            assert listener.count("WATCHDOG=1", since=frozen_at) == 0 and proc.poll() is None
            proc.send_signal(signal.SIGUSR2)
            thawed = time.monotonic()
            time.sleep(1.0)
            assert listener.count("WATCHDOG=1", since=thawed) >= 2
        url = next(m.group(1) for m in (re.search(r"url=(http://\S+)", x) for x in lines) if m)
        with urllib.request.urlopen(f"{url}/status", timeout=10) as response:
            status = json.loads(response.read())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        reader.join(timeout=5)
        time.sleep(0.3)
        assert listener.count("STOPPING=1") == 1
        messages = [m for _, m in listener.messages]
    finally:
        proc.kill()
        listener.close()
    return status, messages, "".join(lines)


def _models(status: dict) -> list[dict]:
    return list(status["backends"])


@pytest.mark.timeout(300)
def test_service_start_upgrade_and_rollback(tmp_path: Path, sample_dir: Path) -> None:
    store = tmp_path / "bundles"
    v1 = install_bundle(onnx_bundle(tmp_path / "src1", name="sites-v1"), store)
    config = _config(tmp_path, sample_dir)

    status, messages, _ = _run_service(tmp_path, config, freeze=True)
    ready = next(m for m in messages if "READY=1" in m)
    assert "STATUS=running; AI ok" in ready
    (model,) = _models(status)
    assert model["manifest_name"] == "sites-v1" and model["backend"] == "onnxruntime"
    assert model["manifest_sha256"] == _sha(v1) and model["configured_bundle"] == str(store / "current")
    assert model["bundle"] == str(v1.resolve()) and "pending" not in model  # the version loaded, not the link

    # Upgrade: a new bundle side by side, then a restart (what 'endoedge bundle install' + systemctl do).
    mixed = onnx_bundle(tmp_path / "src2", name="sites-v2")
    v2 = install_bundle(mixed, store)
    status, _, _ = _run_service(tmp_path, config)
    assert _models(status)[0]["manifest_name"] == "sites-v2"

    # Rollback, restart: the first bundle again.
    assert rollback(store) == v1.resolve()
    status, _, _ = _run_service(tmp_path, config)
    assert _models(status)[0]["manifest_name"] == "sites-v1"
    assert v2.is_dir()
    assert MIX.shape == (3, 3)  # the bundles run the real channel-mean ONNX model


def _sha(version: Path) -> str:
    from endoedge.core.fileio import sha256_file

    return sha256_file(version / "manifest.json")
