"""Test helpers shared across folders: a private X server, the test's end of NOTIFY_SOCKET and the skip
marker of the tests that need GStreamer."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

#: The one line that installs what the GStreamer tests need on Debian/Ubuntu (``.ci/run`` runs it as
#: root); the venv must be made with --system-site-packages, as ``make`` does, to see the bindings.
GST_APT_LINE = (
    "apt-get install gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good "
    "gir1.2-gst-plugins-base-1.0 python3-gst-1.0 python3-gi"
)
GST_SKIP_REASON = f"GStreamer or its Python bindings are not installed; as root: {GST_APT_LINE}"


def gstreamer_missing() -> bool:
    """True unless GStreamer's tools and its Python bindings (as the daemon loads them) are both here."""
    from endoedge.edge.video.gst import gst_available

    return shutil.which("gst-launch-1.0") is None or not gst_available()


#: For tests that run GStreamer (a ``gst://`` source, an MJPEG server from gst-launch-1.0, the sinks).
needs_gstreamer = pytest.mark.skipif(gstreamer_missing(), reason=GST_SKIP_REASON)


@contextlib.contextmanager
def private_xvfb(first_display: int = 90) -> Iterator[str]:
    """Start Xvfb on the first free display number from ``first_display``; yields ``":N"``.

    Skips the test when Xvfb is not installed or does not start.
    """
    binary = shutil.which("Xvfb")
    if binary is None:
        pytest.skip("Xvfb not installed (apt install xvfb)")
    number = next(n for n in range(first_display, first_display + 150) if not Path(f"/tmp/.X11-unix/X{n}").exists())
    process = subprocess.Popen(
        [binary, f":{number}", "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 10
    while not Path(f"/tmp/.X11-unix/X{number}").exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.skip("Xvfb did not start")
        time.sleep(0.05)
    try:
        yield f":{number}"
    finally:
        process.terminate()
        process.wait(timeout=10)


class NotifyListener:
    """The test's end of ``NOTIFY_SOCKET``: collects sd_notify datagrams with their arrival time."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while self.running:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def count(self, line: str, since: float = 0.0) -> int:
        """How many datagrams since ``since`` carry ``line`` as one of their lines."""
        return sum(1 for t, m in list(self.messages) if t >= since and line in m.split("\n"))

    def close(self) -> None:
        """Stop listening."""
        self.running = False
        self.thread.join(timeout=2)
        self.sock.close()


def shared_manifest_rows(root: Path) -> list[dict[str, str]]:
    """Rows of the shared image set's ``manifest.csv``, in file order."""
    import csv

    with (root / "manifest.csv").open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))
