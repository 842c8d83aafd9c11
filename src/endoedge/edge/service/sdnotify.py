"""systemd's notify protocol over its datagram socket, without libsystemd.

systemd passes the socket in ``NOTIFY_SOCKET`` (a filesystem path, or ``@name`` for the abstract
namespace) and the watchdog period in ``WATCHDOG_USEC`` (with ``WATCHDOG_PID`` naming the process it is
meant for). Messages are newline-separated ``KEY=VALUE`` assignments in one datagram: ``READY=1``,
``STATUS=...``, ``WATCHDOG=1``, ``STOPPING=1``. Outside systemd every call is a cheap no-op.

The daemon calls :meth:`Notifier.watchdog_due` / :meth:`Notifier.watchdog` from its display loop, not
from a timer thread, so a hung pipeline stops the pings and systemd restarts the service.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends notifications to systemd when ``NOTIFY_SOCKET`` is set.

    Args:
        environ: Environment to read (defaults to ``os.environ``); ``NOTIFY_SOCKET``, ``WATCHDOG_USEC``
            and ``WATCHDOG_PID`` are taken from it.
        clock: Monotonic clock (injectable for tests).
    """

    def __init__(self, environ: Mapping[str, str] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        env = os.environ if environ is None else environ
        self._clock = clock
        self.address: str | bytes | None = None
        raw = env.get("NOTIFY_SOCKET", "")
        if raw.startswith("@"):
            self.address = b"\0" + raw[1:].encode()
        elif raw.startswith("/"):
            self.address = raw
        elif raw:
            log.warning("NOTIFY_SOCKET=%r is neither a path nor an abstract name; notifications are off", raw)
        self.watchdog_interval: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or (pid.isdigit() and int(pid) == os.getpid())):
            # systemd's advice: ping at half the timeout so one late loop does not trigger a restart.
            self.watchdog_interval = int(usec) / 1e6 / 2
        self._socket: socket.socket | None = None
        self._last_ping = float("-inf")
        self.sent = 0
        self.errors = 0

    @property
    def enabled(self) -> bool:
        """Whether a notify socket is configured."""
        return self.address is not None

    def notify(self, **fields: str | int) -> bool:
        """Send ``KEY=VALUE`` lines (keys upper-cased) in one datagram; False when off or failed."""
        if self.address is None:
            return False
        message = "\n".join(f"{key.upper()}={value}" for key, value in fields.items()).encode("utf-8", "replace")
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._socket.setblocking(False)
            self._socket.sendto(message, self.address)
        except OSError as exc:
            # systemd gone or the socket full: never let notification problems touch the video path.
            self.errors += 1
            if self.errors <= 3:
                log.warning("sd_notify failed: %s", exc)
            return False
        self.sent += 1
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1`` (after the backends are warm), optionally with a status line."""
        return self.notify(ready=1, **({"status": status} if status else {}))

    def status(self, text: str) -> bool:
        """``STATUS=text`` (one line: newlines would start new assignments)."""
        return self.notify(status=" ".join(text.split()))

    def stopping(self) -> bool:
        """``STOPPING=1``."""
        return self.notify(stopping=1)

    def watchdog(self) -> bool:
        """``WATCHDOG=1`` now."""
        self._last_ping = self._now()
        return self.notify(watchdog=1)

    def watchdog_due(self) -> bool:
        """True when the watchdog is on and half of ``WATCHDOG_USEC`` has passed since the last ping."""
        return self.watchdog_interval is not None and self._now() - self._last_ping >= self.watchdog_interval

    def heartbeat(self) -> bool:
        """Ping the watchdog if it is due (call once per display-loop iteration)."""
        return self.watchdog() if self.watchdog_due() else False

    def _now(self) -> float:
        return float(self._clock())

    def close(self) -> None:
        """Close the socket."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None
