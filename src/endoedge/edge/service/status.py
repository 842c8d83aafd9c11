"""The daemon's status endpoint: stdlib HTTP in a thread, loopback by default.

Endpoints:
    * ``GET /healthz`` — 200 while the display loop is alive, 503 when it stalled.
    * ``GET /status`` — JSON: fps in/out, inference times, skipped frames, backends (the bundle folder
      actually loaded with its checksums, and a ``pending`` one when the configured path, e.g. a store's
      ``current``, was switched since), the current exam's coverage.
    * ``GET /metrics`` — the same figures as Prometheus text (exposition format 0.0.4).
    * ``POST /exam/start``, ``POST /exam/end``, ``POST /exam/photo`` — for a foot switch or the
      reporting system. When the server listens on anything but loopback they need the configured
      token (``Authorization: Bearer <token>`` or ``X-Endoedge-Token``).

Every client gets a token bucket (``rate_per_s``, ``burst``); request bodies above ``max_body_bytes``
are refused with 413 before they are read; slow clients time out; at most ``MAX_CONCURRENT`` requests
are served at once. Nothing a client sends is echoed into logs.
"""

from __future__ import annotations

import contextlib
import hmac
import http
import json
import logging
import math
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

from endoedge.core.errors import ConfigError
from endoedge.edge.config import StatusConfig

log = logging.getLogger(__name__)

MAX_CONCURRENT = 16
REQUEST_TIMEOUT_S = 5.0
#: A connection is closed this long after it was accepted, whatever it does: a client dribbling one
#: byte every few seconds never trips the per-read timeout (slowloris) and would hold a thread for ever.
CONNECTION_LIFETIME_S = 15.0
#: Connections beyond this many open at once are closed at once (each holds a thread and a descriptor).
MAX_CONNECTIONS = 64
MAX_CLIENTS_TRACKED = 1024


class StatusProvider(Protocol):
    """What the server asks the daemon for."""

    def healthy(self) -> tuple[bool, dict[str, Any]]:
        """(alive, details) for ``/healthz``."""
        ...

    def status(self) -> dict[str, Any]:
        """The ``/status`` document."""
        ...

    def metrics(self) -> list[Metric]:
        """Figures for ``/metrics``."""
        ...

    def exam_action(self, action: str) -> tuple[int, dict[str, Any]]:
        """Run ``start``, ``end`` or ``photo``; returns (HTTP code, JSON body)."""
        ...


@dataclass(frozen=True)
class Metric:
    """One Prometheus sample.

    Attributes:
        name: Metric name (``endoedge_`` prefix added when missing).
        value: Sample value.
        kind: ``gauge`` or ``counter``.
        help: One-line description.
        labels: Label pairs.
    """

    name: str
    value: float
    kind: str = "gauge"
    help: str = ""
    labels: tuple[tuple[str, str], ...] = ()


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def prometheus_text(metrics: Iterable[Metric]) -> str:
    """Render samples in the Prometheus text exposition format (HELP/TYPE once per metric name)."""
    lines: list[str] = []
    described: set[str] = set()
    for metric in metrics:
        name = metric.name if metric.name.startswith("endoedge_") else f"endoedge_{metric.name}"
        if name not in described:
            described.add(name)
            if metric.help:
                lines.append(f"# HELP {name} {' '.join(metric.help.split())}")
            lines.append(f"# TYPE {name} {metric.kind}")
        labels = ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in metric.labels)
        value = metric.value
        text = "NaN" if math.isnan(value) else ("+Inf" if value == math.inf else repr(float(value)))
        lines.append(f"{name}{{{labels}}} {text}" if labels else f"{name} {text}")
    return "\n".join(lines) + "\n"


class RateLimiter:
    """Per-client token buckets (bounded number of clients tracked)."""

    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate_per_s
        self.burst = float(burst)
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def allow(self, client: str) -> bool:
        """Take one token from ``client``'s bucket; False when it is empty."""
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.pop(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            allowed = tokens >= 1.0
            self._buckets[client] = (tokens - 1.0 if allowed else tokens, now)
            while len(self._buckets) > MAX_CLIENTS_TRACKED:
                self._buckets.popitem(last=False)
            return allowed


def read_token(config: StatusConfig) -> str | None:
    """The POST token from the config or its token file (first line).

    Raises:
        ConfigError: The token file cannot be read or holds a short token.
    """
    if config.token_file:
        try:
            token = Path(config.token_file).read_text(encoding="utf-8").strip().splitlines()[0].strip()
        except (OSError, IndexError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the status token: {exc}", config.token_file) from None
        if len(token) < 16:
            raise ConfigError("the status token must have at least 16 characters", config.token_file)
        return token
    return config.token


class StatusServer:
    """Serves the status endpoints from a background thread.

    Args:
        config: The ``status`` config section.
        provider: The daemon (or anything implementing :class:`StatusProvider`).
    """

    def __init__(self, config: StatusConfig, provider: StatusProvider) -> None:
        self.config = config
        self.provider = provider
        self.token = read_token(config)
        self.require_token = not config.loopback or self.token is not None
        self.limiter = RateLimiter(config.rate_per_s, config.burst)
        self.slots = threading.BoundedSemaphore(MAX_CONCURRENT)
        self.requests = 0
        self.refused = 0
        self.cut_off = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: dict[socket.socket, float] = {}
        self._connections_lock = threading.Lock()
        self._reaper_stop = threading.Event()
        self._reaper: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (useful with ``port: 0``)."""
        if self._server is None:
            raise RuntimeError("server not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Base URL."""
        host = self.config.host if ":" not in self.config.host else f"[{self.config.host}]"
        return f"http://{host}:{self.port}"

    def start(self) -> StatusServer:
        """Bind and serve in a daemon thread.

        Raises:
            OSError: The address is in use or not available.
        """
        handler = _make_handler(self)
        server_class = ThreadingHTTPServer
        if ":" in self.config.host:
            import socket

            class _V6Server(ThreadingHTTPServer):
                address_family = socket.AF_INET6

            server_class = _V6Server
        self._server = server_class((self.config.host, self.config.port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="status-http", daemon=True)
        self._thread.start()
        self._reaper_stop.clear()
        self._reaper = threading.Thread(target=self._reap, name="status-reaper", daemon=True)
        self._reaper.start()
        log.info("status server listening url=%s token_required=%s", self.url, self.require_token)
        return self

    def admit(self, connection: socket.socket) -> bool:
        """Register a new connection; False (close it) when :data:`MAX_CONNECTIONS` are already open."""
        with self._connections_lock:
            if len(self._connections) >= MAX_CONNECTIONS:
                self.refused += 1
                return False
            self._connections[connection] = time.monotonic() + CONNECTION_LIFETIME_S
            return True

    def release(self, connection: socket.socket) -> None:
        """Forget a finished connection."""
        with self._connections_lock:
            self._connections.pop(connection, None)

    def _reap(self) -> None:
        """Shut down connections past their lifetime, so a blocked read in their thread returns."""
        while not self._reaper_stop.wait(0.5):
            now = time.monotonic()
            with self._connections_lock:
                expired = [c for c, deadline in self._connections.items() if deadline < now]
            for connection in expired:
                self.cut_off += 1
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._reaper_stop.set()
        if self._reaper is not None:
            self._reaper.join(timeout=2)
            self._reaper = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def authorised(self, headers: Any) -> bool:
        """Whether a POST carries the token (always True when none is required)."""
        if not self.require_token:
            return True
        if self.token is None:
            return False
        given = headers.get("X-Endoedge-Token") or ""
        auth = headers.get("Authorization") or ""
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        return hmac.compare_digest(given.encode(), self.token.encode())


def _make_handler(server: StatusServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = REQUEST_TIMEOUT_S
        server_version = "endoedge"
        sys_version = ""
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            # Requests are counted, not logged one by one (a polling dashboard would flood the journal).
            log.debug("http %s", format % args)

        def handle(self) -> None:
            if not server.admit(self.connection):
                self.close_connection = True
                return
            try:
                super().handle()
            except OSError:  # shut down by the reaper, or the client vanished
                self.close_connection = True
            finally:
                server.release(self.connection)

        def parse_request(self) -> bool:
            if not super().parse_request():
                return False
            if self.request_version == "HTTP/0.9":  # answered without any status line: refuse it
                self.send_error(400, "HTTP/0.9 is not supported")
                return False
            return True

        def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
            # The stdlib answers with an HTML page (501 for an unknown method): answer like every other
            # endpoint instead, one line of JSON, and 405 for a method this server does not have.
            code = 405 if code == 501 else code
            if self.request_version == "HTTP/0.9":
                self.request_version = "HTTP/1.0"
            self.close_connection = True
            try:
                phrase = http.HTTPStatus(code).phrase
            except ValueError:
                phrase = "Error"
            body = (json.dumps({"error": phrase}) + "\n").encode()
            self.send_response(code, phrase)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD" and code >= 200 and code not in (204, 304):
                self.wfile.write(body)

        def _send(self, code: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, code: int, obj: Any) -> None:
            self._send(code, (json.dumps(obj, sort_keys=True, default=str) + "\n").encode())

        def _guard(self) -> bool:
            server.requests += 1
            if not server.limiter.allow(self.client_address[0]):
                server.refused += 1
                self.close_connection = True
                self._json(429, {"error": "too many requests"})
                return False
            return True

        def _serve(self, method: str) -> None:
            if not server.slots.acquire(blocking=False):
                server.refused += 1
                self.close_connection = True
                self._json(503, {"error": "busy"})
                return
            try:
                if self._guard():
                    self._route(method)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
            except Exception as exc:  # a bug must not kill the server thread or print a traceback
                log.error("status handler failed: %s: %s", type(exc).__name__, exc)
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self._json(500, {"error": "internal error"})
            finally:
                server.slots.release()

        def _route(self, method: str) -> None:
            path = self.path.split("?", 1)[0]
            if method in ("GET", "HEAD"):
                if path == "/healthz":
                    ok, details = server.provider.healthy()
                    self._json(200 if ok else 503, {"ok": ok, **details})
                elif path == "/status":
                    self._json(200, server.provider.status())
                elif path == "/metrics":
                    text = prometheus_text(server.provider.metrics())
                    self._send(200, text.encode(), "text/plain; version=0.0.4; charset=utf-8")
                else:
                    self._json(404, {"error": "not found", "endpoints": ["/healthz", "/status", "/metrics"]})
                return
            if method != "POST":
                self._json(405, {"error": "method not allowed"})
                return
            actions = {"/exam/start": "start", "/exam/end": "end", "/exam/photo": "photo"}
            if path not in actions:
                self._json(404, {"error": "not found", "endpoints": list(actions)})
                return
            length_text = self.headers.get("Content-Length", "0") or "0"
            if not length_text.isdigit():
                self.close_connection = True
                self._json(400, {"error": "bad Content-Length"})
                return
            length = int(length_text)
            if length > server.config.max_body_bytes:
                self.close_connection = True
                self._json(413, {"error": f"body larger than {server.config.max_body_bytes} bytes"})
                return
            if length:
                self.rfile.read(length)  # the body is not used; read it so keep-alive stays in sync
            if not server.authorised(self.headers):
                self._json(401, {"error": "token required"})
                return
            code, body = server.provider.exam_action(actions[path])
            self._json(code, body)

        def do_GET(self) -> None:
            self._serve("GET")

        def do_HEAD(self) -> None:
            self._serve("HEAD")

        def do_POST(self) -> None:
            self._serve("POST")

        def do_PUT(self) -> None:
            self._serve("PUT")

        def do_DELETE(self) -> None:
            self._serve("DELETE")

    return Handler
