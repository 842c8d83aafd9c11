"""Engine builder and engine cache, against the TensorRT/pycuda test doubles (no GPU here)."""

from __future__ import annotations

import json
import logging
import sys
import threading
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import pytest
from _onnxbundle import onnx_bundle

from endoedge.core.bundle import open_bundle
from endoedge.core.errors import BundleError, EndoedgeError, MissingDependencyError
from endoedge.core.fileio import sha256_file
from endoedge.edge.box import trt_engine
from endoedge.edge.box.trt_engine import (
    BuildOptions,
    BuildProgress,
    EngineBuildError,
    EngineCache,
    EngineKey,
    cuda_api,
    engine_source,
    ensure_engine,
    import_tensorrt,
    strongly_typed,
    tensorrt_version,
)

KEY = EngineKey(
    model="m",
    format="trt-fp16",
    precision="fp16",
    onnx_format="onnx",
    onnx_sha256="a" * 64,
    gpu_name="Orin",
    compute_capability="8.7",
    sm_count=16,
    tensorrt_version="10.3.0",
    strongly_typed=False,
)


def test_missing_tensorrt_names_the_jetpack_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` raise ImportError
    with pytest.raises(MissingDependencyError, match="python3-libnvinfer.*--system-site-packages"):
        import_tensorrt()


def test_missing_cuda_layer_names_both_options(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("pycuda", "pycuda.driver", "cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingDependencyError, match=r"pycuda.*cuda-python"):
        cuda_api()


def test_cuda_layer_reports_a_broken_driver_in_one_line(fake_trt: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    import pycuda.driver

    def no_driver() -> None:
        raise RuntimeError("cuInit failed: no CUDA-capable device is detected")

    monkeypatch.setattr(pycuda.driver, "init", no_driver)
    with pytest.raises(EndoedgeError, match="CUDA is installed \\(pycuda\\) but unusable: RuntimeError: cuInit"):
        cuda_api()


@pytest.mark.parametrize(
    ("text", "version", "strong"),
    [("10.3.0.30", (10, 3, 0), False), ("10.11.0.33", (10, 11, 0), False), ("10.12.0.36", (10, 12, 0), True),
     ("11.4.1", (11, 4, 1), True), ("10.7", (10, 7, 0), False)],
)  # fmt: skip
def test_version_parsing_and_typing_mode(text: str, version: tuple[int, int, int], strong: bool) -> None:
    module = ModuleType("tensorrt")
    module.__version__ = text  # type: ignore[attr-defined]
    assert tensorrt_version(module) == version
    assert strongly_typed(version) is strong


def test_unreadable_version_is_an_error() -> None:
    module = ModuleType("tensorrt")
    module.__version__ = "unknown"  # type: ignore[attr-defined]
    with pytest.raises(EngineBuildError, match="version"):
        tensorrt_version(module)


def test_engine_source_by_typing_mode() -> None:
    assert engine_source("trt-fp16", {"onnx"}, strong=False) == "onnx"
    assert engine_source("trt-fp16", {"onnx", "onnx-fp16"}, strong=False) == "onnx-fp16"
    assert engine_source("trt-fp16", {"onnx", "onnx-fp16"}, strong=True) == "onnx-fp16"
    with pytest.raises(BundleError, match="strongly typed.*--formats onnx-fp16"):
        engine_source("trt-fp16", {"onnx"}, strong=True)
    assert engine_source("trt-int8", {"onnx", "onnx-int8"}, strong=True) == "onnx-int8"
    with pytest.raises(BundleError, match="onnx-int8"):
        engine_source("trt-int8", {"onnx", "onnx-fp16"}, strong=False)
    with pytest.raises(BundleError, match="not a TensorRT engine format"):
        engine_source("onnx", {"onnx"}, strong=False)


@pytest.mark.parametrize(
    "change",
    [{"gpu_name": "Xavier"}, {"compute_capability": "7.2"}, {"sm_count": 8}, {"tensorrt_version": "10.7.0"},
     {"precision": "int8"}, {"dla_core": 0}, {"onnx_sha256": "b" * 64}, {"strongly_typed": True}, {"max_batch": 4}],
)  # fmt: skip
def test_every_key_field_changes_the_digest(change: dict[str, object]) -> None:
    other = replace(KEY, **change)  # type: ignore[arg-type]
    assert other.digest != KEY.digest
    assert EngineCache("/c").engine_path(other) != EngineCache("/c").engine_path(KEY)


def test_file_names() -> None:
    assert KEY.file_stem == f"m-fp16-{KEY.digest}" and len(KEY.digest) == 16
    assert replace(KEY, dla_core=1, model="a b/c").file_stem.startswith("a-b-c-fp16-dla1-")


def test_cache_hit_and_every_way_a_cached_engine_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = EngineCache(tmp_path)
    stored = cache.store(KEY, b"PLAN", build_seconds=12.5, bundle="b")
    sidecar = json.loads(cache.sidecar_path(KEY).read_text())
    assert sidecar["key"] == KEY.to_dict() and sidecar["engine_sha256"] == sha256_file(stored.path)
    assert sidecar["build_seconds"] == 12.5 and sidecar["engine_bytes"] == 4
    assert {p.stat().st_mode & 0o777 for p in (stored.path, cache.sidecar_path(KEY))} == {0o644}
    hit = cache.lookup(KEY)
    assert hit is not None and hit.path == stored.path and not hit.built
    caplog.set_level(logging.INFO, logger="endoedge.edge.box.trt_engine")

    # A sidecar recording another key (e.g. copied from another box) is refused, and the log says why.
    cache.sidecar_path(KEY).write_text(json.dumps({**sidecar, "key": {**KEY.to_dict(), "sm_count": 8}}))
    assert cache.lookup(KEY) is None
    assert "sm_count 8 -> 16" in caplog.text
    # Bytes that do not match the sidecar's sha256.
    cache.store(KEY, b"PLAN", build_seconds=1)
    cache.engine_path(KEY).write_bytes(b"PLAn")
    assert cache.lookup(KEY) is None
    # A sidecar that is not JSON, or missing.
    cache.store(KEY, b"PLAN", build_seconds=1)
    cache.sidecar_path(KEY).write_text("{")
    assert cache.lookup(KEY) is None
    cache.sidecar_path(KEY).unlink()
    assert cache.lookup(KEY) is None
    cache.engine_path(KEY).unlink()
    assert cache.lookup(KEY) is None


def test_stale_engines_of_the_same_model_are_listed_and_removed(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    old = cache.store(replace(KEY, tensorrt_version="10.2.0"), b"OLD", 1)
    other_model = cache.store(replace(KEY, model="other"), b"X", 1)
    cache.store(KEY, b"NEW", 1)
    assert cache.stale(KEY) == [old.path]
    assert cache.remove_stale(KEY) == [old.path]
    assert not old.path.exists() and not old.path.with_suffix(".json").exists()
    assert other_model.path.exists() and cache.lookup(KEY) is not None


def _bundle(tmp_path: Path, **kwargs: object):
    return open_bundle(onnx_bundle(tmp_path / "bundle", **kwargs))  # type: ignore[arg-type]


def test_ensure_engine_builds_once_then_hits(fake_trt: ModuleType, tmp_path: Path) -> None:
    bundle = _bundle(tmp_path)
    first = ensure_engine(bundle, "trt-fp16", tmp_path / "cache")
    assert first.built and first.path.is_file() and len(fake_trt.BUILDS) == 1
    second = ensure_engine(bundle, "trt-fp16", tmp_path / "cache")
    assert not second.built and second.path == first.path and len(fake_trt.BUILDS) == 1
    again = ensure_engine(bundle, "trt-fp16", tmp_path / "cache", rebuild=True)
    assert again.built and len(fake_trt.BUILDS) == 2


def test_a_tensorrt_upgrade_rebuilds_and_removes_the_stale_engine(fake_trt: ModuleType, tmp_path: Path) -> None:
    bundle = _bundle(tmp_path)
    old = ensure_engine(bundle, "trt-fp16", tmp_path / "cache")
    fake_trt.__version__ = "10.7.0.23"  # JetPack upgrade
    new = ensure_engine(bundle, "trt-fp16", tmp_path / "cache")
    assert new.built and new.path != old.path and not old.path.exists()
    assert new.key.tensorrt_version == "10.7.0"


def test_another_gpu_rebuilds(fake_trt: ModuleType, fake_gpu: ModuleType, tmp_path: Path) -> None:
    bundle = _bundle(tmp_path)
    orin = ensure_engine(bundle, "trt-fp16", tmp_path / "cache")
    fake_gpu.DEVICE["sms"] = 8  # the cache folder was copied to an Orin Nano
    nano = ensure_engine(bundle, "trt-fp16", tmp_path / "cache")
    assert nano.built and nano.key.sm_count == 8 and nano.path != orin.path


def test_weakly_typed_build_sets_precision_flags(fake_trt: ModuleType, tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, formats=("onnx", "onnx-int8"))
    ensure_engine(bundle, "trt-fp16", tmp_path / "cache", options=BuildOptions(workspace_mib=256))
    ensure_engine(bundle, "trt-int8", tmp_path / "cache")
    fp16, int8 = fake_trt.BUILDS
    assert fp16["flags"] == ["FP16"] and not fp16["strongly_typed"] and fp16["workspace"] == 256 << 20
    assert int8["flags"] == ["FP16", "INT8"] and int8["ok"]


@pytest.mark.parametrize("version", ["10.12.0.36", "11.2.0"])
def test_strongly_typed_build_from_typed_onnx(fake_trt: ModuleType, tmp_path: Path, version: str) -> None:
    fake_trt.__version__ = version
    bundle = _bundle(tmp_path, formats=("onnx", "onnx-fp16"))
    engine = ensure_engine(bundle, "trt-fp16", tmp_path / "cache")
    (build,) = fake_trt.BUILDS
    assert build["strongly_typed"] and build["flags"] == [] and build["ok"]
    assert engine.key.onnx_format == "onnx-fp16" and engine.key.strongly_typed


def test_strongly_typed_build_refuses_fp32_onnx_for_fp16(fake_trt: ModuleType, tmp_path: Path) -> None:
    fake_trt.__version__ = "11.0.0"
    with pytest.raises(BundleError, match="onnx-fp16"):
        ensure_engine(_bundle(tmp_path), "trt-fp16", tmp_path / "cache")
    assert fake_trt.BUILDS == []


def test_dynamic_batch_gets_a_profile(fake_trt: ModuleType, tmp_path: Path) -> None:
    ensure_engine(_bundle(tmp_path), "trt-fp16", tmp_path / "cache", options=BuildOptions(max_batch=8, opt_batch=2))
    (build,) = fake_trt.BUILDS
    assert build["profiles"] == [{"pixels": ((1, 32, 32, 3), (2, 32, 32, 3), (8, 32, 32, 3))}]


def test_fixed_batch_onnx_needs_no_profile(fake_trt: ModuleType, tmp_path: Path) -> None:
    ensure_engine(_bundle(tmp_path, batch=1), "trt-fp16", tmp_path / "cache")
    assert fake_trt.BUILDS[0]["profiles"] == [] and fake_trt.BUILDS[0]["ok"]


def test_timing_cache_is_written_and_reused(fake_trt: ModuleType, tmp_path: Path) -> None:
    bundle = _bundle(tmp_path)
    first = ensure_engine(bundle, "trt-fp16", tmp_path / "cache")
    timing = EngineCache(tmp_path / "cache").timing_cache_path(first.key)
    assert timing.read_bytes() == b"FAKETIMING:1"
    ensure_engine(bundle, "trt-fp16", tmp_path / "cache", rebuild=True)
    assert [b["timing_cache_entries_loaded"] for b in fake_trt.BUILDS] == [0, 1]
    ensure_engine(bundle, "trt-fp16", tmp_path / "cache", rebuild=True, options=BuildOptions(timing_cache=False))
    assert fake_trt.BUILDS[-1]["timing_cache_entries_loaded"] is None


def test_a_foreign_timing_cache_is_replaced(fake_trt: ModuleType, tmp_path: Path) -> None:
    bundle = _bundle(tmp_path)
    key = ensure_engine(bundle, "trt-fp16", tmp_path / "cache").key
    EngineCache(tmp_path / "cache").timing_cache_path(key).write_bytes(b"garbage from elsewhere")
    ensure_engine(bundle, "trt-fp16", tmp_path / "cache", rebuild=True)
    assert fake_trt.BUILDS[-1]["ok"] and fake_trt.BUILDS[-1]["timing_cache_entries_loaded"] == 0


def test_dla_core(fake_trt: ModuleType, tmp_path: Path) -> None:
    bundle = _bundle(tmp_path)
    with pytest.raises(EngineBuildError, match="DLA core 0 requested but this device has 0"):
        ensure_engine(bundle, "trt-fp16", tmp_path / "cache", options=BuildOptions(dla_core=0))
    fake_trt.DLA_CORES = 2
    engine = ensure_engine(bundle, "trt-fp16", tmp_path / "cache", options=BuildOptions(dla_core=1))
    build = fake_trt.BUILDS[-1]
    assert build["device"] == "DLA" and build["dla_core"] == 1 and "GPU_FALLBACK" in build["flags"]
    assert "-dla1-" in engine.path.name


def test_progress_and_duration_are_logged(
    fake_trt: ModuleType, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="endoedge.edge.box.trt_engine")
    lines: list[str] = []
    ensure_engine(_bundle(tmp_path), "trt-fp16", tmp_path / "cache", progress=BuildProgress(lines.append, 0.0))
    assert lines == [
        "TensorRT: Building engine (3 steps)",
        "  TensorRT: Building engine 1/3",
        "  TensorRT: Building engine 2/3",
        "  TensorRT: Building engine 3/3",
    ]
    assert "takes minutes on a Jetson" in caplog.text
    assert "built TensorRT 10.3.0 fp16 engine from model_onnx.onnx in" in caplog.text


def test_progress_lines_are_rate_limited() -> None:
    lines: list[str] = []
    progress = BuildProgress(lines.append, min_interval=3600)
    progress.phase_start("Tactic search", "Building engine", 1000)
    for step in range(1000):
        progress.step_complete("Tactic search", step)
    assert lines == ["  TensorRT: Tactic search (1000 steps)", "  TensorRT: Tactic search 1000/1000"]


def test_heartbeat_while_a_phase_is_silent(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="endoedge.edge.box.trt_engine")
    done = threading.Event()
    with trt_engine._heartbeat("engine X", every=0.02):
        done.wait(0.15)
    assert caplog.text.count("engine X: still building") >= 2


def test_unparsable_onnx_is_one_line(fake_trt: ModuleType, tmp_path: Path) -> None:
    path = onnx_bundle(tmp_path / "bundle")
    (path / "model_onnx.onnx").write_bytes(b"\x08\x07garbage")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["artifacts"][0]["sha256"] = sha256_file(path / "model_onnx.onnx")  # a broken export, not tampering
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EngineBuildError, match="cannot parse the ONNX") as info:
        ensure_engine(open_bundle(path), "trt-fp16", tmp_path / "cache")
    assert "\n" not in str(info.value) and "model_onnx.onnx" in str(info.value)


def test_a_tampered_onnx_is_never_built(fake_trt: ModuleType, tmp_path: Path) -> None:
    bundle = _bundle(tmp_path)
    data = bytearray(bundle.artifact_path("onnx").read_bytes())
    data[-1] ^= 1
    bundle.artifact_path("onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256 mismatch"):
        ensure_engine(bundle, "trt-fp16", tmp_path / "cache")
    assert fake_trt.BUILDS == []


def test_failed_build_says_so(fake_trt: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fake_trt.Builder, "build_serialized_network", lambda self, network, config: None)
    with pytest.raises(EngineBuildError, match="failed to build the fp16 engine"):
        ensure_engine(_bundle(tmp_path), "trt-fp16", tmp_path / "cache")
    assert list((tmp_path / "cache").glob("*.engine")) == []


def test_no_build_at_start_fails_fast(fake_trt: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(EngineBuildError, match="building at start is disabled"):
        ensure_engine(_bundle(tmp_path), "trt-fp16", tmp_path / "cache", build=False)
    assert fake_trt.BUILDS == []


def test_concurrent_starts_build_once(fake_trt: ModuleType, tmp_path: Path) -> None:
    bundle = _bundle(tmp_path)
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(ensure_engine(bundle, "trt-fp16", tmp_path / "cache")))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 3 and len({r.path for r in results}) == 1
    assert len(fake_trt.BUILDS) == 1 and sum(r.built for r in results) == 1


@pytest.mark.parametrize(
    "kwargs", [{"workspace_mib": 8}, {"max_batch": 2, "opt_batch": 3}, {"dla_core": -1}, {"optimization_level": 9}]
)
def test_build_options_are_validated(kwargs: dict[str, int]) -> None:
    with pytest.raises(EndoedgeError):
        BuildOptions(**kwargs)


def test_cuda_python_layer_without_a_driver_fails_in_one_line() -> None:
    """The real cuda-python adapter (installed here with endoedge[tensorrt]) on a machine without a GPU."""
    pytest.importorskip("cuda.bindings.runtime", reason="cuda-python not installed")
    try:
        api = cuda_api(prefer="cuda-python")
    except EndoedgeError as exc:
        assert "cudaSetDevice failed: cudaError" in str(exc) and "\n" not in str(exc)
    else:  # a machine with an NVIDIA GPU: the adapter works for real
        info = api.device_info(0)
        assert info.sm_count > 0 and "." in info.compute_capability


def test_a_tensorrt_exception_during_the_build_is_one_line(
    fake_trt: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(self: object, network: object, config: object) -> bytes:
        raise RuntimeError("[TRT] [E] 2: [virtualMemoryBuffer.cpp::resizePhysical::140] Error Code 2:\n OutOfMemory")

    monkeypatch.setattr(fake_trt.Builder, "build_serialized_network", explode)
    with pytest.raises(EngineBuildError, match="TensorRT build failed: RuntimeError: .*OutOfMemory") as info:
        ensure_engine(_bundle(tmp_path), "trt-fp16", tmp_path / "cache")
    assert "\n" not in str(info.value)
