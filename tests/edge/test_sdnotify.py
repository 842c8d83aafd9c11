from __future__ import annotations

import os
import socket

import pytest

from endoedge.edge.service.sdnotify import Notifier


@pytest.fixture
def listener(tmp_path):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    yield path, sock
    sock.close()


def test_messages_arrive_on_a_real_datagram_socket(listener):
    path, sock = listener
    notifier = Notifier({"NOTIFY_SOCKET": str(path)})
    assert notifier.enabled
    assert notifier.ready(status="warm: tflite 3.1 ms")
    assert sock.recv(4096) == b"READY=1\nSTATUS=warm: tflite 3.1 ms"
    notifier.status("fps 30.0\nexam running")
    assert sock.recv(4096) == b"STATUS=fps 30.0 exam running"
    notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    assert notifier.sent == 4
    notifier.close()


def test_abstract_namespace_socket():
    name = f"endoedge-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(2)
    try:
        Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert sock.recv(100) == b"READY=1"
    finally:
        sock.close()


def test_watchdog_is_due_at_half_the_period():
    now = [100.0]
    notifier = Notifier({"WATCHDOG_USEC": "2000000"}, clock=lambda: now[0])
    assert notifier.watchdog_interval == 1.0
    assert notifier.watchdog_due()
    notifier.watchdog()  # no socket: not sent, but the time is remembered
    now[0] += 0.9
    assert not notifier.watchdog_due()
    now[0] += 0.2
    assert notifier.watchdog_due()


def test_watchdog_for_another_pid_is_ignored_and_no_socket_is_a_noop():
    notifier = Notifier({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid() + 1)})
    assert notifier.watchdog_interval is None and not notifier.watchdog_due()
    assert not notifier.enabled and notifier.ready() is False


def test_a_vanished_socket_never_raises(tmp_path):
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert notifier.watchdog() is False
    assert notifier.errors == 1
