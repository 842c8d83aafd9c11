from __future__ import annotations

import http.client
import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from endoedge.core.errors import ConfigError
from endoedge.edge.config import StatusConfig
from endoedge.edge.service.status import Metric, RateLimiter, StatusServer, prometheus_text, read_token

TOKEN = "s3cret-token-0123456789"


class Provider:
    """The daemon's side of the status server, answering from plain data."""

    def __init__(self) -> None:
        self.actions: list[str] = []
        self.alive = True

    def healthy(self):
        return self.alive, {"loop_age_s": 0.01}

    def status(self):
        return {"fps_in": 30.0, "exam": {"running": bool(self.actions)}}

    def metrics(self):
        return [Metric("frames_in_total", 42, "counter", "frames read"), Metric("fps_in", 29.97)]

    def exam_action(self, action):
        self.actions.append(action)
        return 200, {"ok": True, "action": action}


@pytest.fixture
def serve():
    servers = []

    def make(**config):
        provider = Provider()
        server = StatusServer(StatusConfig(port=0, **config), provider).start()
        servers.append(server)
        return server, provider

    yield make
    for server in servers:
        server.stop()


def request(server, method, path, body=b"", headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read().decode(), response.getheader("Content-Type")
    finally:
        conn.close()


def test_get_endpoints(serve):
    server, provider = serve()
    code, body, kind = request(server, "GET", "/healthz")
    assert code == 200 and json.loads(body) == {"ok": True, "loop_age_s": 0.01}
    provider.alive = False
    assert request(server, "GET", "/healthz")[0] == 503
    code, body, kind = request(server, "GET", "/status")
    assert code == 200 and json.loads(body)["fps_in"] == 30.0 and kind == "application/json"
    code, body, kind = request(server, "GET", "/metrics")
    assert kind.startswith("text/plain; version=0.0.4")
    assert "# TYPE endoedge_frames_in_total counter\nendoedge_frames_in_total 42.0" in body
    assert request(server, "GET", "/nope")[0] == 404
    assert request(server, "PUT", "/status")[0] == 405
    assert request(server, "POST", "/exam/start")[0] == 200 and provider.actions == ["start"]


def test_post_needs_the_token_when_not_on_loopback(serve):
    server, provider = serve(host="0.0.0.0", token=TOKEN)
    assert server.require_token
    assert request(server, "POST", "/exam/start")[0] == 401
    assert request(server, "POST", "/exam/start", headers={"Authorization": "Bearer wrong-token-0000000"})[0] == 401
    assert request(server, "POST", "/exam/start", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
    assert request(server, "POST", "/exam/end", headers={"X-Endoedge-Token": TOKEN})[0] == 200
    assert provider.actions == ["start", "end"]
    assert request(server, "GET", "/status")[0] == 200  # reading needs no token


def test_size_and_rate_limits(serve):
    server, provider = serve(max_body_bytes=64, rate_per_s=0.01, burst=4)
    assert request(server, "POST", "/exam/start", body=b"x" * 1000)[0] == 413
    assert request(server, "POST", "/exam/start", headers={"Content-Length": "abc"})[0] == 400
    assert request(server, "POST", "/exam/photo", body=b"{}")[0] == 200
    assert request(server, "GET", "/status")[0] == 200
    assert request(server, "GET", "/status")[0] == 429  # burst of 4 used up
    assert provider.actions == ["photo"]
    assert server.refused >= 1


def test_prometheus_text_escapes_labels_and_special_values():
    text = prometheus_text(
        [
            Metric("inference_ms", 3.5, help="time", labels=(("task", 'a"b\\c\n'),)),
            Metric("inference_ms", math.nan, labels=(("task", "x"),)),
            Metric("endoedge_up", 1),
        ]
    )
    lines = text.splitlines()
    assert lines[0] == "# HELP endoedge_inference_ms time" and lines[1] == "# TYPE endoedge_inference_ms gauge"
    assert lines[2] == 'endoedge_inference_ms{task="a\\"b\\\\c\\n"} 3.5'
    assert lines[3] == 'endoedge_inference_ms{task="x"} NaN'
    assert text.count("# TYPE endoedge_inference_ms") == 1 and "endoedge_up 1.0" in text


def test_rate_limiter_refills_over_time():
    now = [0.0]
    limiter = RateLimiter(rate_per_s=2.0, burst=2, clock=lambda: now[0])
    assert limiter.allow("a") and limiter.allow("a") and not limiter.allow("a")
    assert limiter.allow("b")  # per client
    now[0] += 0.5
    assert limiter.allow("a") and not limiter.allow("a")


def test_token_file_and_binding_rules(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    assert read_token(StatusConfig(host="0.0.0.0", token_file=str(token_file))) == TOKEN
    token_file.write_text("short\n")
    with pytest.raises(ConfigError, match="at least 16 characters"):
        read_token(StatusConfig(host="0.0.0.0", token_file=str(token_file)))
    with pytest.raises(ValueError, match="needs a token"):
        StatusConfig(host="10.0.0.5")


@pytest.fixture(scope="module")
def fuzz_server():
    server = StatusServer(StatusConfig(port=0, rate_per_s=10000, burst=100000), Provider()).start()
    yield server
    server.stop()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    method=st.sampled_from(["GET", "POST", "HEAD", "DELETE", "PUT", "OPTIONS"]),
    path=st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=60).map(lambda p: "/" + p),
    body=st.binary(max_size=200),
)
def test_arbitrary_requests_get_an_answer_and_never_break_the_server(fuzz_server, method, path, body):
    code, _, _ = request(fuzz_server, method, path, body=body)
    assert code in (200, 400, 404, 405, 409, 413, 501)
    assert request(fuzz_server, "GET", "/healthz")[0] == 200
