"""Security checks against the real ``endoedge run`` process: where the status server listens, who may
POST, request size/rate/slowness limits, raw-socket HTTP fuzzing, what reaches the disk and the logs,
and that nothing in a bundle is ever unpickled or executed.
"""

from __future__ import annotations

import io
import json
import pickle
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _daemon_harness import PATIENT_NAME, DaemonProcess, reports, tower_frames, write_clip
from _fuzzing import PROFILE_NAMES, run_property
from hypothesis import given
from hypothesis import strategies as st

from endoedge.core.fileio import sha256_file

pytest.importorskip("endoedge.edge.service.daemon", reason="the daemon module is not built yet")
pytest.importorskip("ai_edge_litert", reason="the daemon tests run the real LiteRT backend")

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "reliability-token-0123456789"
# 10^4 cases take tens of minutes on a loaded 2-core machine: above the suite-wide 900 s timeout.
PROFILES = [pytest.param("default"), pytest.param("slow", marks=[pytest.mark.slow, pytest.mark.timeout(7200)])]
assert set(PROFILE_NAMES) == {"default", "slow"}


def figure(name: str, **values: Any) -> None:
    print(f"[figure] {name}: " + ", ".join(f"{k}={v}" for k, v in values.items()))


@pytest.fixture(scope="module")
def clip(sample_images: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip(tower_frames(sample_images), tmp_path_factory.mktemp("sec") / "clip.mp4", hold=15)


def listening_addresses(pid: int, port: int) -> list[str]:
    """Local addresses (``ip`` text) of the process's listening TCP sockets on ``port``, from /proc."""
    found = []
    for table, family in (("tcp", 4), ("tcp6", 6)):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.is_file():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local, state = fields[1], fields[3]
            address, port_hex = local.split(":")
            if state != "0A" or int(port_hex, 16) != port:  # 0A: LISTEN
                continue
            if family == 4:
                found.append(".".join(str(b) for b in bytes.fromhex(address)[::-1]))
            else:
                found.append(address)
    return found


def test_status_server_listens_on_loopback_only_by_default(tmp_path: Path, tiny_bundle: Path, clip: Path) -> None:
    with DaemonProcess(tmp_path, f"file://{clip}", tiny_bundle, extra=["--loop"]) as d:
        d.wait_running()
        addresses = listening_addresses(d.pid, d.port)
        assert addresses == ["127.0.0.1"], addresses
        # On loopback no token is configured, so POST works for the local foot switch.
        assert d.request("POST", "/exam/start")[0] in (200, 409)
        assert d.stop() == 0
    figure("status bind default", listening=addresses)


def test_exposed_status_server_refuses_to_start_without_a_token(tmp_path: Path, tiny_bundle: Path, clip: Path) -> None:
    with DaemonProcess(tmp_path, f"file://{clip}", tiny_bundle, extra=["--status-host", "0.0.0.0"]) as d:
        code = d.proc.wait(timeout=60)
        log = d.log_text()
    assert code == 2
    lines = [line for line in log.splitlines() if "error" in line]
    assert len(lines) == 1 and "token" in lines[0], log
    assert "Traceback" not in log


def test_exposed_status_server_needs_the_token_for_post(tmp_path: Path, tiny_bundle: Path, clip: Path) -> None:
    extra = ["--loop", "--status-host", "0.0.0.0", "--set", f"status.token={TOKEN}"]
    with DaemonProcess(tmp_path, f"file://{clip}", tiny_bundle, extra=extra) as d:
        d.wait_running()
        assert listening_addresses(d.pid, d.port) == ["0.0.0.0"]
        codes = {
            "none": d.request("POST", "/exam/start")[0],
            "wrong": d.request("POST", "/exam/start", headers={"Authorization": "Bearer wrong-token-000000"})[0],
            "prefix": d.request("POST", "/exam/start", headers={"X-Endoedge-Token": TOKEN[:-1]})[0],
            "bearer": d.request("POST", "/exam/start", headers={"Authorization": f"Bearer {TOKEN}"})[0],
        }
        assert codes["none"] == codes["wrong"] == codes["prefix"] == 401
        assert codes["bearer"] in (200, 409)
        assert d.stop() == 0
        assert TOKEN not in d.log_text()
    figure("token on exposed status", **codes)


def test_request_size_and_rate_limits(tmp_path: Path, tiny_bundle: Path, clip: Path) -> None:
    extra = ["--loop", "--set", "status.rate_per_s=5", "--set", "status.burst=20"]
    with DaemonProcess(tmp_path, f"file://{clip}", tiny_bundle, extra=extra) as d:
        d.wait_status(lambda s: s["phase"] == "running", 120, "running")
        time.sleep(4.5)  # let the bucket refill after the start-up polling
        big = d.request("POST", "/exam/start", body=b"x" * 100_000)[0]
        t0 = time.monotonic()
        codes = [d.request("GET", "/healthz")[0] for _ in range(60)]
        elapsed = time.monotonic() - t0
        assert big == 413
        # At most the burst plus what the bucket refilled meanwhile gets through; the rest is refused.
        allowed = 20 + 5 * elapsed + 1
        assert codes[0] == 200 and codes.count(200) <= allowed and codes.count(429) == 60 - codes.count(200), codes
        assert codes.count(429) > 0
        assert d.proc.poll() is None
        assert d.stop() == 0
    figure("size and rate limits", oversize_body=big, ok=codes.count(200), too_many=codes.count(429))


# ---------------------------------------------------------------------------------------------------
# Raw-socket HTTP fuzzing and slow clients
# ---------------------------------------------------------------------------------------------------

_methods = st.sampled_from(["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE", "CONNECT", "G\x00T", ""]) | (
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=12)
)
_paths = st.sampled_from(
    ["/healthz", "/status", "/metrics", "/exam/start", "/exam/end", "/exam/photo", "/", "*", "//status", "/%00"]
) | st.text(max_size=40).map(lambda t: "/" + t)
_versions = st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/9", "", "http/1.1", "HTTP/1.1 extra"])
_header_lines = st.lists(
    st.sampled_from(
        [
            b"Host: x",
            b"Content-Length: 5",
            b"Content-Length: -1",
            b"Content-Length: 99999999999999999999",
            b"Content-Length: abc",
            b"Transfer-Encoding: chunked",
            b"Authorization: Bearer " + b"a" * 5000,
            b"X-Endoedge-Token: \xff\xfe",
            b"Expect: 100-continue",
            b"Connection: keep-alive",
            b"X: " + b"y" * 70000,
            b"NoColonHeader",
            b" folded continuation",
        ]
    )
    | st.binary(max_size=60),
    max_size=6,
)


@st.composite
def raw_requests(draw: st.DrawFn) -> bytes:
    line = f"{draw(_methods)} {draw(_paths)} {draw(_versions)}".encode("utf-8", "surrogateescape")
    eol = draw(st.sampled_from([b"\r\n", b"\n", b"\r"]))
    headers = draw(_header_lines)
    body = draw(st.binary(max_size=64))
    if draw(st.integers(0, 9)) == 7:
        return draw(st.binary(max_size=300))  # not HTTP at all
    return line + eol + eol.join(headers) + (eol if headers else b"") + eol + body


def send_raw(port: int, data: bytes, timeout: float = 8.0) -> bytes:
    """Send bytes, half-close, return what the server answered (possibly nothing)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            return b""
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


@pytest.mark.parametrize("profile", PROFILES)
def test_raw_http_fuzzing_never_breaks_the_daemon(profile: str, tmp_path: Path, tiny_bundle: Path, clip: Path) -> None:
    outcomes: dict[str, int] = {}
    with DaemonProcess(tmp_path, f"file://{clip}", tiny_bundle, extra=["--loop"]) as d:
        d.wait_running()
        baseline = d.figures()
        frames_before = d.status()["stats"]["frames_out"]

        @given(data=raw_requests())
        def prop(data: bytes) -> None:
            answer = send_raw(d.port, data)
            if answer:
                status_line = answer.split(b"\r\n", 1)[0]
                assert re.fullmatch(rb"HTTP/1\.[01] [1-5]\d\d .*", status_line), status_line[:100]
                code = status_line.split()[1].decode()
                assert not code.startswith("5") or code in ("503", "505"), answer[:300]  # busy; HTTP/2+
                outcomes[code] = outcomes.get(code, 0) + 1
            else:
                outcomes["closed"] = outcomes.get("closed", 0) + 1
            assert d.proc.poll() is None

        run_property(prop, profile, default_cases=120)
        assert d.request("GET", "/healthz")[0] == 200
        after = d.figures()
        status = d.status()
        assert status["stats"]["frames_out"] > frames_before
        assert after.threads <= baseline.threads + 4 and after.fds <= baseline.fds + 4, (baseline, after)
        assert d.stop() == 0
        log = d.log_text()
        assert "Traceback" not in log
    figure(
        f"raw HTTP fuzz [{profile}]",
        requests=sum(outcomes.values()),
        **{f"answer_{k}": v for k, v in sorted(outcomes.items())},
        threads=f"{baseline.threads}->{after.threads}",
        fds=f"{baseline.fds}->{after.fds}",
    )


@pytest.mark.slow
def test_slow_clients_are_cut_off_and_bounded(tmp_path: Path, tiny_bundle: Path, clip: Path) -> None:
    clients = 300
    with DaemonProcess(tmp_path, f"file://{clip}", tiny_bundle, extra=["--loop"]) as d:
        d.wait_running()
        baseline = d.figures()
        socks = []
        for _ in range(clients):
            sock = socket.create_connection(("127.0.0.1", d.port), timeout=2)
            sock.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\n")
            socks.append(sock)
        peak = baseline
        start = time.monotonic()
        healthz_s: list[float] = []
        open_counts = []
        while time.monotonic() - start < 45:
            open_now = 0
            for sock in socks:
                try:
                    sock.sendall(b"X")  # one byte every second: each read is well inside any per-read timeout
                    open_now += 1
                except OSError:
                    pass
            open_counts.append(open_now)
            figures = d.figures()
            peak = ProcMax.of(peak, figures)
            t0 = time.monotonic()
            assert d.request("GET", "/healthz", timeout=10)[0] == 200
            healthz_s.append(time.monotonic() - t0)
            if open_now == 0:
                break
            time.sleep(1.0)
        for sock in socks:
            sock.close()
        time.sleep(2.0)
        after = d.figures()
        assert d.proc.poll() is None
        assert d.stop() == 0
    assert open_counts[-1] == 0, f"slow clients still connected after 45 s: {open_counts[-5:]}"
    assert peak.threads <= baseline.threads + 80, (baseline, peak)
    assert after.threads <= baseline.threads + 4, (baseline, after)
    figure(
        "slowloris",
        clients=clients,
        seconds_until_all_cut=round(time.monotonic() - start, 1),
        threads=f"{baseline.threads}->{peak.threads} peak->{after.threads}",
        fds=f"{baseline.fds}->{peak.fds} peak->{after.fds}",
        healthz_max_s=round(max(healthz_s), 3),
    )


class ProcMax:
    """Element-wise maximum of two figure samples."""

    @staticmethod
    def of(a: Any, b: Any) -> Any:
        return type(a)(max(a.rss_kib, b.rss_kib), max(a.threads, b.threads), max(a.fds, b.fds))


# ---------------------------------------------------------------------------------------------------
# What reaches the disk and the logs
# ---------------------------------------------------------------------------------------------------

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".mp4", ".avi", ".npy", ".npz", ".raw", ".yuv"}


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_no_frames_and_no_patient_data_on_disk_or_in_logs(tmp_path: Path, tiny_bundle: Path, clip: Path) -> None:
    work = tmp_path / "work"
    before = {p for p in _files(tmp_path)}
    with DaemonProcess(work, f"file://{clip}", tiny_bundle, extra=["--loop", "--log-level", "debug"]) as d:
        d.wait_status(lambda s: s["exam"]["running"] and s["exam"]["elapsed_s"] > 1.0, 120, "an exam running")
        for path in ("/status", "/metrics", "/healthz"):
            d.request("GET", path)
        assert d.request("POST", "/exam/end")[0] == 200
        d.wait_status(lambda s: s["stats"]["reports_written"] >= 1, 30, "report written")
        assert d.stop() == 0
        log = d.log_text()
    written = [p for p in _files(tmp_path) if p not in before and p != d.log_path]
    images = [p for p in written if p.suffix.lower() in IMAGE_SUFFIXES]
    # The only picture the daemon writes by default is the report's drawn coverage map.
    assert all(p.name == "coverage.png" for p in images), images
    assert reports(work / "reports"), "no report was written"
    needles = [PATIENT_NAME, "DOE", "JANE", "Name:"]
    for path in [*written, d.log_path]:
        data = path.read_bytes()
        for needle in needles:
            assert needle.encode() not in data, f"{needle!r} found in {path}"
    for needle in needles:
        assert needle not in log
    figure("disk and log hygiene", files_written=len(written), pictures=len(images), patient_strings_found=0)


@pytest.mark.slow
def test_frames_are_written_only_when_enabled(tmp_path: Path, tiny_bundle: Path, clip: Path) -> None:
    extra = ["--loop", "--set", "report.include_frames=true", "--set", "report.max_frames=3"]
    with DaemonProcess(tmp_path, f"file://{clip}", tiny_bundle, extra=extra) as d:
        d.wait_status(lambda s: s["exam"]["running"] and s["exam"]["tasks"]["coverage"]["observed"] >= 1, 120, "a site")
        assert d.request("POST", "/exam/end")[0] == 200
        d.wait_status(lambda s: s["stats"]["reports_written"] >= 1, 30, "report written")
        assert d.stop() == 0
    frames = [p for p in (tmp_path / "reports").rglob("*.jpg")]
    assert 1 <= len(frames) <= 3, frames


# ---------------------------------------------------------------------------------------------------
# Bundles never unpickle or execute
# ---------------------------------------------------------------------------------------------------


class _Trap:
    """Unpickling this creates a file: proof that something unpickled bundle data."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.path, "w"))


def test_bundle_loading_never_unpickles(tmp_path: Path, tiny_bundle: Path, clip: Path) -> None:
    from endoedge.core.bundle import open_bundle
    from endoedge.edge.backends import create_backend

    trap_file = tmp_path / "UNPICKLED"
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    # An object array saved with pickling allowed, under the name and role of the parity reference.
    evil = np.empty(1, dtype=object)
    evil[0] = _Trap(str(trap_file))
    buf = io.BytesIO()
    np.save(buf, evil, allow_pickle=True)
    (bundle / "reference.npy").write_bytes(buf.getvalue())
    (bundle / "extra.pkl").write_bytes(pickle.dumps(_Trap(str(trap_file))))
    manifest = json.loads((bundle / "manifest.json").read_text())
    for entry in manifest["files"]:
        entry["sha256"] = sha256_file(bundle / entry["file"])
    manifest["files"].append({"file": "extra.pkl", "sha256": sha256_file(bundle / "extra.pkl"), "role": "notes"})
    (bundle / "manifest.json").write_text(json.dumps(manifest))

    opened = open_bundle(bundle)
    backend = create_backend("tflite", opened)
    backend.infer(np.zeros((1, 64, 64, 3), np.uint8))
    backend.close()
    with DaemonProcess(tmp_path / "run", f"file://{clip}", bundle, extra=["--max-frames", "60"], status=False) as d:
        assert d.proc.wait(timeout=120) == 0, d.log_tail()
    assert not trap_file.exists(), "bundle data was unpickled"


def test_source_tree_has_no_unsafe_loaders() -> None:
    """No pickle, no allow_pickle=True, no yaml.load without SafeLoader, no eval/exec in the package."""
    patterns = {
        "pickle import": re.compile(r"^\s*(import pickle|from pickle|import dill|import joblib)", re.M),
        "allow_pickle=True": re.compile(r"allow_pickle\s*=\s*True"),
        "yaml.load": re.compile(r"yaml\.(load|load_all|unsafe_load|full_load)\((?![^)]*SafeLoader)"),
        "eval/exec": re.compile(r"(?<![\w.])(eval|exec)\("),
        "torch.load": re.compile(r"torch\.load\("),
    }
    # The one reviewed exception: the ImageNet weights reader (training only, never on a bundle) unpickles
    # legacy PyTorch files through Unpicklers whose find_class resolves an allow-list and refuses every
    # other global; tests/train/test_torch_weights.py shows a file naming os.system refused unrun.
    reviewed = {("src/endoedge/train/torch_weights.py", "pickle import")}
    offenders = []
    for path in (ROOT / "src" / "endoedge").rglob("*.py"):
        text = path.read_text()
        for name, pattern in patterns.items():
            if pattern.search(text) and (str(path.relative_to(ROOT)), name) not in reviewed:
                offenders.append(f"{path.relative_to(ROOT)}: {name}")
    assert offenders == []
    reader = (ROOT / "src/endoedge/train/torch_weights.py").read_text()
    assert reader.count("(pickle.Unpickler)") == reader.count("def find_class(") == 2
