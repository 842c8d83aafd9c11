"""Regression tests for daemon-side defects the fault tests found (fast, in-process)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

report = pytest.importorskip("endoedge.edge.service.report", reason="the daemon's report module is not built yet")


def test_checkpoint_load_removes_temporaries_left_by_a_killed_writer(tmp_path: Path) -> None:
    store = report.CheckpointStore(tmp_path)
    store.save({"clock": {"exam_id": "e1", "elapsed_s": 3.0}})
    stale = tmp_path / ".exam-checkpoint.json.k1ll3d.tmp"
    stale.write_text('{"clock": {"exam_id": "e1", "ela')  # what a SIGKILL mid-write leaves
    data = store.load()
    assert data is not None and data["clock"]["exam_id"] == "e1"
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exam-checkpoint.json"]


def test_report_writer_removes_a_partial_report_of_the_same_exam(tmp_path: Path) -> None:
    partial = tmp_path / ".E42.ab12cd.partial"
    partial.mkdir()
    (partial / "report.json").write_text('{"exam": {"id": "E4')
    other = tmp_path / ".E43.zz.partial"  # another exam's writer: left alone
    other.mkdir()
    written = report.write_report(tmp_path, {"exam": {"id": "E42"}, "tasks": {}}, png=False)
    assert json.loads((written / "report.json").read_text())["exam"]["id"] == "E42"
    assert not partial.exists() and other.exists()


status = pytest.importorskip("endoedge.edge.service.status")


class _Provider:
    def healthy(self) -> tuple[bool, dict[str, object]]:
        return True, {}

    def status(self) -> dict[str, object]:
        return {"ok": True}

    def metrics(self) -> list[object]:
        return []

    def exam_action(self, action: str) -> tuple[int, dict[str, object]]:
        return 200, {"action": action}


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from endoedge.edge.config import StatusConfig

    monkeypatch.setattr(status, "CONNECTION_LIFETIME_S", 1.0)
    monkeypatch.setattr(status, "MAX_CONNECTIONS", 8)
    srv = status.StatusServer(StatusConfig(port=0, rate_per_s=1000, burst=1000), _Provider()).start()
    yield srv
    srv.stop()


def _raw(port: int, data: bytes) -> bytes:
    import errno
    import socket

    chunks: list[bytes] = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except OSError as exc:
            # A server that drops the connection at once can beat our send/shutdown: that is "closed".
            if exc.errno not in (errno.ENOTCONN, errno.ECONNRESET, errno.EPIPE):
                raise
    return b"".join(chunks)


def test_http09_and_unknown_methods_get_a_status_line_and_json(server: Any) -> None:
    old = _raw(server.port, b"GET /status\r\n")  # HTTP/0.9 was answered with a bare body
    assert old.startswith(b"HTTP/1.1 400 ") and old.rstrip().endswith(b'{"error": "Bad Request"}')
    odd = _raw(server.port, b"BREW /status HTTP/1.1\r\nHost: x\r\n\r\n")  # was 501 with an HTML page
    assert odd.startswith(b"HTTP/1.1 405 ") and b"<html" not in odd.lower() and b"BREW" not in odd


def test_slow_clients_are_cut_off_after_the_connection_lifetime(server: Any) -> None:
    import socket
    import time

    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.sendall(b"GET /status HTTP/1.1\r\n")
    start = time.monotonic()
    closed = False
    while time.monotonic() - start < 6:
        try:
            sock.sendall(b"X")  # a byte every 0.2 s: no single read ever times out
            if sock.recv(1, socket.MSG_DONTWAIT) == b"":
                closed = True
                break
        except BlockingIOError:
            pass
        except OSError:
            closed = True
            break
        time.sleep(0.2)
    sock.close()
    assert closed and time.monotonic() - start < 4
    assert server.cut_off >= 1


def test_connections_beyond_the_cap_are_closed_at_once(server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket
    import time

    monkeypatch.setattr(status, "CONNECTION_LIFETIME_S", 60.0)
    held = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(8)]
    deadline = time.monotonic() + 10
    while len(server._connections) < 8 and time.monotonic() < deadline:  # accepted one by one
        time.sleep(0.1)
    assert _raw(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n") == b""
    for sock in held:
        sock.close()
    time.sleep(1.0)
    assert _raw(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 200 ")
