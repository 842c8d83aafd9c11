"""TensorRT engines, built on the Jetson from a bundle's ONNX, and the engine cache.

A TensorRT engine only runs on the GPU model and TensorRT version it was built with, so bundles carry
ONNX and the box builds the engine itself (minutes on an Orin), once: the installer does it before the
service is enabled, or the daemon does it at its first start. Engines live in the cache
(``/var/cache/endoedge``) as ``<model>-<precision>-<key digest>.engine`` plus a JSON sidecar holding the
full :class:`EngineKey` (GPU name, compute capability, SM count, TensorRT version, precision, DLA core,
typing mode, batch profile, ONNX sha256) and the engine's own sha256. An engine whose sidecar is missing,
unreadable, of another key or whose bytes do not match is never loaded: it is rebuilt.

TensorRT versions:
    * 10.0–10.11 (JetPack 6.0–6.2): weakly typed networks; ``trt-fp16`` sets ``BuilderFlag.FP16``,
      ``trt-int8`` sets ``INT8`` (+``FP16``) and takes its scales from the Q/DQ ONNX (explicit
      quantization, no calibrator).
    * 10.12 and later, 11: weak typing is deprecated (removed in 11), so networks are created
      ``STRONGLY_TYPED`` and the precision comes from the ONNX itself: ``trt-fp16`` needs the bundle's
      ``onnx-fp16`` artifact, ``trt-int8`` the Q/DQ ``onnx-int8``.

The ``tensorrt`` module (JetPack's ``python3-libnvinfer``) is imported only when an engine is built or
loaded. Device memory goes through :class:`CudaApi`: pycuda where it is installed, else cuda-python
(pycuda is often impossible to build on a Jetson).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import importlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from endoedge.__about__ import __version__
from endoedge.core.bundle import Bundle
from endoedge.core.errors import BundleError, EndoedgeError, MissingDependencyError
from endoedge.core.fileio import atomic_write_bytes, atomic_write_json, sha256_file
from endoedge.core.formats import FORMATS

log = logging.getLogger(__name__)

TENSORRT_HINT = (
    "JetPack's TensorRT Python bindings: 'sudo apt install python3-libnvinfer' (JetPack 6), and a venv made "
    "with --system-site-packages so it sees them"
)
CUDA_HINT = "pycuda, or cuda-python ('pip install endoedge[tensorrt]')"
DEFAULT_CACHE_DIR = Path("/var/cache/endoedge")
#: Where each engine format can be built from, in order of preference.
ENGINE_SOURCES: Mapping[str, tuple[str, ...]] = {"trt-fp16": ("onnx-fp16", "onnx"), "trt-int8": ("onnx-int8",)}
#: First TensorRT version whose weak-typing precision flags are deprecated (removed in 11).
STRONG_TYPING_FROM = (10, 12)
_HEARTBEAT_SECONDS = 30.0


class EngineBuildError(EndoedgeError):
    """TensorRT could not parse the ONNX or build an engine from it."""


# -- the tensorrt module ----------------------------------------------------------------------------


def import_tensorrt() -> Any:
    """Import JetPack's ``tensorrt`` module.

    Raises:
        MissingDependencyError: It is not installed (names the JetPack package to install).
    """
    try:
        return importlib.import_module("tensorrt")
    except ImportError as exc:
        raise MissingDependencyError(f"TensorRT is not importable ({exc}); install {TENSORRT_HINT}") from None


def tensorrt_version(trt: Any) -> tuple[int, int, int]:
    """``(major, minor, patch)`` of a tensorrt module (``trt.__version__`` is like ``10.3.0.30``)."""
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", str(getattr(trt, "__version__", "")))
    if not match:
        raise EngineBuildError(f"cannot read the TensorRT version from {getattr(trt, '__version__', None)!r}")
    return int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)


def strongly_typed(version: tuple[int, ...]) -> bool:
    """True when this TensorRT builds strongly typed networks (10.12+: weak typing deprecated; 11: removed)."""
    return tuple(version[:2]) >= STRONG_TYPING_FROM


def engine_source(fmt: str, available: set[str] | list[str] | tuple[str, ...], strong: bool) -> str:
    """Pick the ONNX artifact an engine format is built from.

    Args:
        fmt: ``trt-fp16`` or ``trt-int8``.
        available: Artifact formats the bundle has.
        strong: Strongly typed build: precision must come from the ONNX, so plain ``onnx`` cannot
            make an fp16 engine.

    Raises:
        BundleError: No suitable source (says which artifact to export).
    """
    if fmt not in ENGINE_SOURCES:
        raise BundleError(f"{fmt!r} is not a TensorRT engine format (valid: {', '.join(ENGINE_SOURCES)})")
    candidates = [s for s in ENGINE_SOURCES[fmt] if not (strong and FORMATS[s].precision != FORMATS[fmt].precision)]
    for source in candidates:
        if source in available:
            return source
    why = " (TensorRT >= 10.12 builds strongly typed networks: precision comes from the ONNX)" if strong else ""
    raise BundleError(
        f"{fmt} is built from {' or '.join(candidates)}, which the bundle does not have{why}; "
        f"export it with 'endoedge export ... --formats {candidates[0]}'"
    )


# -- device memory ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuInfo:
    """What identifies a GPU for engine compatibility."""

    name: str
    compute_capability: str
    sm_count: int


class CudaApi:
    """The few CUDA calls the TensorRT backend needs: device query, buffers, copies, one stream."""

    name = "none"

    def device_info(self, device: int = 0) -> GpuInfo:
        """Name, compute capability and SM count of a device."""
        raise NotImplementedError

    def malloc(self, nbytes: int) -> int:
        """Allocate device memory; returns its address."""
        raise NotImplementedError

    def free(self, address: int) -> None:
        """Free device memory from :meth:`malloc`."""
        raise NotImplementedError

    def pinned_empty(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
        """A page-locked host array (fast, asynchronous DMA)."""
        raise NotImplementedError

    def free_pinned(self, array: np.ndarray) -> None:
        """Release a page-locked array."""

    def create_stream(self) -> Any:
        """A CUDA stream."""
        raise NotImplementedError

    def stream_handle(self, stream: Any) -> int:
        """The stream's handle as TensorRT's ``execute_async_v3`` wants it."""
        raise NotImplementedError

    def htod_async(self, address: int, host: np.ndarray, stream: Any) -> None:
        """Copy a contiguous host array to device memory, asynchronously on ``stream``."""
        raise NotImplementedError

    def dtoh_async(self, host: np.ndarray, address: int, stream: Any) -> None:
        """Copy device memory into a contiguous host array, asynchronously on ``stream``."""
        raise NotImplementedError

    def synchronize(self, stream: Any) -> None:
        """Wait for the stream's work."""
        raise NotImplementedError

    def destroy_stream(self, stream: Any) -> None:
        """Release a stream."""

    @contextlib.contextmanager
    def activated(self) -> Iterator[None]:
        """Make the CUDA context current on the calling thread (the inference worker is not the loader)."""
        yield


class PycudaApi(CudaApi):
    """Device memory through pycuda, on the device's primary context (the one TensorRT uses)."""

    name = "pycuda"

    def __init__(self, device: int = 0) -> None:
        self.driver = importlib.import_module("pycuda.driver")
        self.driver.init()
        self.device = self.driver.Device(device)
        self.context = self.device.retain_primary_context()
        self._allocations: dict[int, Any] = {}

    @contextlib.contextmanager
    def activated(self) -> Iterator[None]:
        """Push the primary context for the duration of the block."""
        self.context.push()
        try:
            yield
        finally:
            self.context.pop()

    def device_info(self, device: int = 0) -> GpuInfo:
        """From ``pycuda.driver.Device``."""
        dev = self.driver.Device(device)
        major, minor = dev.compute_capability()
        sms = dev.get_attribute(self.driver.device_attribute.MULTIPROCESSOR_COUNT)
        return GpuInfo(str(dev.name()), f"{major}.{minor}", int(sms))

    def malloc(self, nbytes: int) -> int:
        """``mem_alloc``; the allocation object is kept until :meth:`free`."""
        allocation = self.driver.mem_alloc(max(1, nbytes))
        address = int(allocation)
        self._allocations[address] = allocation
        return address

    def free(self, address: int) -> None:
        """Free an allocation."""
        allocation = self._allocations.pop(address, None)
        if allocation is not None:
            allocation.free()

    def pinned_empty(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
        """``pagelocked_empty``."""
        return np.asarray(self.driver.pagelocked_empty(shape, dtype))

    def create_stream(self) -> Any:
        """``pycuda.driver.Stream``."""
        return self.driver.Stream()

    def stream_handle(self, stream: Any) -> int:
        """``Stream.handle``."""
        return int(stream.handle)

    def htod_async(self, address: int, host: np.ndarray, stream: Any) -> None:
        """``memcpy_htod_async``."""
        self.driver.memcpy_htod_async(address, host, stream)

    def dtoh_async(self, host: np.ndarray, address: int, stream: Any) -> None:
        """``memcpy_dtoh_async``."""
        self.driver.memcpy_dtoh_async(host, address, stream)

    def synchronize(self, stream: Any) -> None:
        """``Stream.synchronize``."""
        stream.synchronize()


class CudaPythonApi(CudaApi):
    """Device memory through cuda-python's runtime bindings (primary context, any thread)."""

    name = "cuda-python"

    def __init__(self, device: int = 0) -> None:
        try:
            self.rt = importlib.import_module("cuda.bindings.runtime")
        except ImportError:
            self.rt = importlib.import_module("cuda.cudart")  # cuda-python < 12.6 layout
        self._check(self.rt.cudaSetDevice(device), "cudaSetDevice")
        self._pinned: dict[int, int] = {}

    def _check(self, result: Any, call: str) -> Any:
        """cuda-python returns ``(error, *values)``; raise on an error, return the value(s)."""
        err, *values = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise EndoedgeError(f"CUDA {call} failed: {getattr(err, 'name', err)} (no NVIDIA GPU or driver here?)")
        return values[0] if len(values) == 1 else tuple(values)

    def device_info(self, device: int = 0) -> GpuInfo:
        """From ``cudaGetDeviceProperties``."""
        prop = self._check(self.rt.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
        name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
        return GpuInfo(name.split("\0")[0].strip(), f"{prop.major}.{prop.minor}", int(prop.multiProcessorCount))

    def malloc(self, nbytes: int) -> int:
        """``cudaMalloc``."""
        return int(self._check(self.rt.cudaMalloc(max(1, nbytes)), "cudaMalloc"))

    def free(self, address: int) -> None:
        """``cudaFree``."""
        self._check(self.rt.cudaFree(address), "cudaFree")

    def pinned_empty(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
        """``cudaMallocHost`` wrapped as a numpy array."""
        dtype = np.dtype(dtype)
        nbytes = max(1, int(np.prod(shape)) * dtype.itemsize)
        address = int(self._check(self.rt.cudaMallocHost(nbytes), "cudaMallocHost"))
        raw = (ctypes.c_uint8 * nbytes).from_address(address)
        array = np.ctypeslib.as_array(raw)[: int(np.prod(shape)) * dtype.itemsize].view(dtype).reshape(shape)
        self._pinned[array.ctypes.data] = address
        return array

    def free_pinned(self, array: np.ndarray) -> None:
        """``cudaFreeHost``."""
        address = self._pinned.pop(array.ctypes.data, None)
        if address is not None:
            self._check(self.rt.cudaFreeHost(address), "cudaFreeHost")

    def create_stream(self) -> Any:
        """``cudaStreamCreate``."""
        return self._check(self.rt.cudaStreamCreate(), "cudaStreamCreate")

    def stream_handle(self, stream: Any) -> int:
        """The ``cudaStream_t`` as an integer."""
        return int(stream)

    def htod_async(self, address: int, host: np.ndarray, stream: Any) -> None:
        """``cudaMemcpyAsync`` host to device."""
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.rt.cudaMemcpyAsync(address, host.ctypes.data, host.nbytes, kind, stream), "cudaMemcpyAsync")

    def dtoh_async(self, host: np.ndarray, address: int, stream: Any) -> None:
        """``cudaMemcpyAsync`` device to host."""
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.rt.cudaMemcpyAsync(host.ctypes.data, address, host.nbytes, kind, stream), "cudaMemcpyAsync")

    def synchronize(self, stream: Any) -> None:
        """``cudaStreamSynchronize``."""
        self._check(self.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def destroy_stream(self, stream: Any) -> None:
        """``cudaStreamDestroy``."""
        self._check(self.rt.cudaStreamDestroy(stream), "cudaStreamDestroy")


def cuda_api(device: int = 0, prefer: str | None = None) -> CudaApi:
    """The CUDA layer: pycuda when installed (as NVIDIA's samples use), else cuda-python.

    Args:
        device: CUDA device ordinal.
        prefer: ``pycuda`` or ``cuda-python`` to force one.

    Raises:
        MissingDependencyError: Neither is installed.
        EndoedgeError: The layer is installed but CUDA does not work (no driver, no device).
    """
    order = [PycudaApi, CudaPythonApi]
    if prefer is not None:
        order = [cls for cls in order if cls.name == prefer] or order
    reasons = []
    for cls in order:
        try:
            return cls(device)
        except ImportError as exc:
            reasons.append(f"{cls.name}: {exc}")
        except EndoedgeError:
            raise
        except Exception as exc:  # the driver's error types vary (pycuda.driver.Error, RuntimeError...)
            raise EndoedgeError(f"CUDA is installed ({cls.name}) but unusable: {type(exc).__name__}: {exc}") from None
    raise MissingDependencyError(f"no CUDA Python layer found ({'; '.join(reasons)}); install {CUDA_HINT}")


# -- cache keys and the cache -----------------------------------------------------------------------


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on; two engines with equal keys are interchangeable.

    The workspace limit is deliberately not part of it: it changes build time and tactic choice,
    never the results or compatibility.
    """

    model: str
    format: str
    precision: str
    onnx_format: str
    onnx_sha256: str
    gpu_name: str
    compute_capability: str
    sm_count: int
    tensorrt_version: str
    strongly_typed: bool
    dla_core: int | None = None
    max_batch: int = 1

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON form (for the sidecar)."""
        return asdict(self)

    @property
    def digest(self) -> str:
        """16 hex digits of the sha256 of the key's canonical JSON."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def file_stem(self) -> str:
        """``<model>-<precision>[-dla<N>]-<digest>``."""
        safe = re.sub(r"[^A-Za-z0-9._-]+", "-", self.model).strip("-.")[:64] or "model"
        dla = f"-dla{self.dla_core}" if self.dla_core is not None else ""
        return f"{safe}-{self.precision}{dla}-{self.digest}"


@dataclass(frozen=True)
class CachedEngine:
    """An engine file in the cache and what its sidecar says about it."""

    path: Path
    key: EngineKey
    sha256: str
    built: bool = False
    build_seconds: float | None = None
    sidecar: dict[str, Any] = field(default_factory=dict)


class EngineCache:
    """A folder of engines with JSON sidecars.

    Args:
        root: The cache folder (``/var/cache/endoedge``); created when missing.
    """

    def __init__(self, root: str | Path = DEFAULT_CACHE_DIR) -> None:
        self.root = Path(root)

    def engine_path(self, key: EngineKey) -> Path:
        """Where the engine of ``key`` lives."""
        return self.root / f"{key.file_stem}.engine"

    def sidecar_path(self, key: EngineKey) -> Path:
        """Its JSON sidecar."""
        return self.root / f"{key.file_stem}.json"

    def timing_cache_path(self, key: EngineKey) -> Path:
        """The TensorRT timing cache shared by every build on this GPU and TensorRT version."""
        gpu = hashlib.sha256(
            f"{key.gpu_name}|{key.compute_capability}|{key.sm_count}|{key.tensorrt_version}".encode()
        ).hexdigest()[:12]
        return self.root / f"timing-{gpu}.cache"

    def lookup(self, key: EngineKey) -> CachedEngine | None:
        """The cached engine for ``key``, or ``None`` (with the reason logged) when it must be (re)built."""
        engine, sidecar_file = self.engine_path(key), self.sidecar_path(key)
        if not engine.is_file():
            log.info("engine cache miss: no %s", engine.name)
            return None
        try:
            sidecar = json.loads(sidecar_file.read_text(encoding="utf-8"))
            recorded = sidecar["key"]
            recorded_sha = str(sidecar["engine_sha256"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("engine %s has no valid sidecar (%s): rebuilding", engine.name, type(exc).__name__)
            return None
        wanted = key.to_dict()
        if recorded != wanted:
            diffs = describe_key_difference(recorded if isinstance(recorded, dict) else {}, wanted)
            log.warning("engine %s was built for another setup (%s): rebuilding", engine.name, diffs)
            return None
        actual = sha256_file(engine)
        if actual != recorded_sha:
            log.warning("engine %s does not match its sidecar sha256 (corrupt or replaced): rebuilding", engine.name)
            return None
        return CachedEngine(engine, key, actual, sidecar=sidecar, build_seconds=sidecar.get("build_seconds"))

    def store(self, key: EngineKey, plan: bytes, build_seconds: float, **info: Any) -> CachedEngine:
        """Write an engine, then its sidecar (a crash in between leaves an engine without sidecar: a miss)."""
        engine = self.engine_path(key)
        atomic_write_bytes(engine, plan)
        sha = hashlib.sha256(plan).hexdigest()
        sidecar = {
            "key": key.to_dict(),
            "engine_sha256": sha,
            "engine_bytes": len(plan),
            "build_seconds": round(build_seconds, 3),
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "endoedge_version": __version__,
            **info,
        }
        atomic_write_json(self.sidecar_path(key), sidecar)
        # Atomic writes make 0600 files; an engine built with sudo must stay readable by the service user.
        for path in (engine, self.sidecar_path(key)):
            os.chmod(path, 0o644)
        return CachedEngine(engine, key, sha, built=True, build_seconds=build_seconds, sidecar=sidecar)

    def stale(self, key: EngineKey) -> list[Path]:
        """Engines of the same model and precision built for another key (other TensorRT, GPU or ONNX)."""
        found = []
        prefix = key.file_stem.rsplit("-", 1)[0] + "-"
        for engine in sorted(self.root.glob(f"{prefix}*.engine")):
            if engine != self.engine_path(key) and re.fullmatch(
                re.escape(prefix) + r"[0-9a-f]{16}\.engine", engine.name
            ):
                found.append(engine)
        return found

    def remove_stale(self, key: EngineKey) -> list[Path]:
        """Delete :meth:`stale` engines and their sidecars; returns what was removed."""
        removed = self.stale(key)
        for engine in removed:
            log.info("removing stale engine %s", engine.name)
            engine.unlink(missing_ok=True)
            engine.with_suffix(".json").unlink(missing_ok=True)
        return removed

    @contextlib.contextmanager
    def build_lock(self, key: EngineKey) -> Iterator[None]:
        """One build per key at a time (the installer and a service start may race)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f".{key.file_stem}.lock", "a+") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def describe_key_difference(recorded: Mapping[str, Any], wanted: Mapping[str, Any]) -> str:
    """``"tensorrt_version 10.3.0 -> 10.7.0, ..."`` for the log."""
    parts = [
        f"{name} {recorded.get(name)!r} -> {wanted.get(name)!r}"
        for name in sorted(set(recorded) | set(wanted))
        if recorded.get(name) != wanted.get(name)
    ]
    return ", ".join(parts) or "unknown difference"


# -- building ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildOptions:
    """Engine build settings.

    Attributes:
        workspace_mib: Builder workspace memory pool limit.
        dla_core: Run on this DLA core (Orin AGX/NX) with GPU fallback; ``None`` for the GPU.
        max_batch: Largest batch of the optimisation profile (dynamic-batch ONNX); 1 for the daemon.
        opt_batch: Batch size the profile is tuned for.
        timing_cache: Reuse (and update) the timing cache in the engine cache folder.
        optimization_level: Builder optimisation level 0–5 (``None``: TensorRT's default, 3).
    """

    workspace_mib: int = 1024
    dla_core: int | None = None
    max_batch: int = 1
    opt_batch: int = 1
    timing_cache: bool = True
    optimization_level: int | None = None

    def __post_init__(self) -> None:
        if self.workspace_mib < 16:
            raise EndoedgeError(f"workspace_mib {self.workspace_mib} is too small (>= 16)")
        if not 1 <= self.opt_batch <= self.max_batch:
            raise EndoedgeError(
                f"batch profile needs 1 <= opt_batch ({self.opt_batch}) <= max_batch ({self.max_batch})"
            )
        if self.dla_core is not None and self.dla_core < 0:
            raise EndoedgeError(f"dla_core {self.dla_core} must be >= 0")
        if self.optimization_level is not None and not 0 <= self.optimization_level <= 5:
            raise EndoedgeError(f"optimization_level {self.optimization_level} is outside 0..5")


class BuildProgress:
    """Turns TensorRT's progress callbacks into log lines (at most one per phase step per second).

    Args:
        report: Where lines go (default: this module's logger at INFO).
        min_interval: Seconds between step lines of the same phase.
    """

    def __init__(self, report: Callable[[str], None] | None = None, min_interval: float = 1.0) -> None:
        self.report = report or log.info
        self.min_interval = min_interval
        self.phases: dict[str, tuple[int, float]] = {}
        self.lines = 0
        self._lock = threading.Lock()

    def _emit(self, text: str) -> None:
        self.lines += 1
        self.report(text)

    def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
        """A phase began."""
        with self._lock:
            self.phases[phase_name] = (num_steps, time.monotonic())
            depth = 1 if parent_phase else 0
            self._emit(f"{'  ' * depth}TensorRT: {phase_name} ({num_steps} steps)")

    def step_complete(self, phase_name: str, step: int) -> bool:
        """A step ended; returning True lets the build continue."""
        with self._lock:
            total, last = self.phases.get(phase_name, (0, 0.0))
            now = time.monotonic()
            if total and (now - last >= self.min_interval or step + 1 == total):
                self.phases[phase_name] = (total, now)
                self._emit(f"  TensorRT: {phase_name} {step + 1}/{total}")
        return True

    def phase_finish(self, phase_name: str) -> None:
        """A phase ended."""
        with self._lock:
            self.phases.pop(phase_name, None)


def _progress_monitor(trt: Any, progress: BuildProgress) -> Any:
    """A ``trt.IProgressMonitor`` forwarding to ``progress`` (TensorRT 10+), or ``None`` when absent."""
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None

    class _Monitor(base):  # type: ignore[misc,valid-type]  # base class only exists at run time
        def __init__(self) -> None:
            super().__init__()

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            progress.phase_start(phase_name, parent_phase, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            return progress.step_complete(phase_name, step)

        def phase_finish(self, phase_name: str) -> None:
            progress.phase_finish(phase_name)

    return _Monitor()


@contextlib.contextmanager
def _heartbeat(what: str, every: float = _HEARTBEAT_SECONDS) -> Iterator[None]:
    """Log "still building" periodically: some phases report nothing for minutes."""
    stop = threading.Event()
    start = time.monotonic()

    def beat() -> None:
        while not stop.wait(every):
            log.info("%s: still building (%.0f s so far)", what, time.monotonic() - start)

    thread = threading.Thread(target=beat, name="trt-build-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def build_serialized_engine(
    onnx_path: str | Path,
    precision: str,
    options: BuildOptions | None = None,
    trt: Any = None,
    timing_cache_path: Path | None = None,
    progress: BuildProgress | None = None,
) -> bytes:
    """Parse an ONNX file and build a serialized engine with the TensorRT Python API.

    Args:
        onnx_path: The ONNX model (fp32, fp16 or Q/DQ int8).
        precision: ``fp16`` or ``int8`` (``fp32`` builds without precision flags).
        options: Build settings.
        trt: The tensorrt module (imported when ``None``).
        timing_cache_path: Timing cache file to read and update (skipped when ``None``).
        progress: Progress reporter.

    Returns:
        The serialized engine (plan) bytes.

    Raises:
        EngineBuildError: The ONNX cannot be parsed, the profile is impossible or the build failed.
    """
    try:
        return _build_serialized_engine(onnx_path, precision, options, trt, timing_cache_path, progress)
    except EndoedgeError:
        raise
    except Exception as exc:  # TensorRT's binding errors (RuntimeError, TypeError...) in one line
        raise EngineBuildError(
            f"TensorRT build failed: {type(exc).__name__}: {' '.join(str(exc).split())}", onnx_path
        ) from None


def _build_serialized_engine(
    onnx_path: str | Path,
    precision: str,
    options: BuildOptions | None,
    trt: Any,
    timing_cache_path: Path | None,
    progress: BuildProgress | None,
) -> bytes:
    trt = trt if trt is not None else import_tensorrt()
    options = options or BuildOptions()
    progress = progress or BuildProgress()
    version = tensorrt_version(trt)
    strong = strongly_typed(version)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strong else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)] or ["unknown parser error"]
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise EngineBuildError(f"TensorRT cannot parse the ONNX: {' '.join(errors[0].split())}{more}", onnx_path)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    if not strong:
        if precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)
        if precision == "int8":
            # Explicit quantization: scales come from the Q/DQ nodes, no calibrator.
            config.set_flag(trt.BuilderFlag.INT8)
    if options.optimization_level is not None:
        config.builder_optimization_level = options.optimization_level
    if options.dla_core is not None:
        cores = int(getattr(builder, "num_DLA_cores", 0))
        if options.dla_core >= cores:
            raise EngineBuildError(f"DLA core {options.dla_core} requested but this device has {cores} DLA cores")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = options.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    _add_batch_profile(trt, builder, network, config, options, onnx_path)

    timing = None
    if timing_cache_path is not None:
        data = timing_cache_path.read_bytes() if timing_cache_path.is_file() else b""
        timing = config.create_timing_cache(data)
        if not config.set_timing_cache(timing, ignore_mismatch=False):
            log.warning("timing cache %s does not fit this TensorRT/GPU: starting a new one", timing_cache_path)
            timing = config.create_timing_cache(b"")
            config.set_timing_cache(timing, ignore_mismatch=False)
    monitor = _progress_monitor(trt, progress)
    if monitor is not None:
        config.progress_monitor = monitor

    what = f"TensorRT {'.'.join(map(str, version))} {precision} engine from {Path(onnx_path).name}"
    mode = "strongly typed" if strong else "weakly typed (precision flags)"
    log.info("building %s (%s%s); this takes minutes on a Jetson", what, mode, _dla_text(options))
    start = time.monotonic()
    with _heartbeat(what):
        plan = builder.build_serialized_network(network, config)
    seconds = time.monotonic() - start
    if plan is None:
        raise EngineBuildError(f"TensorRT failed to build the {precision} engine after {seconds:.0f} s", onnx_path)
    log.info("built %s in %.1f s (%d bytes)", what, seconds, len(bytes(plan)))
    if timing is not None and timing_cache_path is not None:
        atomic_write_bytes(timing_cache_path, bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


def _dla_text(options: BuildOptions) -> str:
    return f", DLA core {options.dla_core} with GPU fallback" if options.dla_core is not None else ""


def _add_batch_profile(
    trt: Any, builder: Any, network: Any, config: Any, options: BuildOptions, onnx_path: str | Path
) -> None:
    """Give dynamic-batch inputs (tf2onnx writes ``[N,H,W,C]`` with N unknown) an optimisation profile."""
    profile = None
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        shape = tuple(int(d) for d in tensor.shape)
        if all(d >= 0 for d in shape):
            continue
        if any(d < 0 for d in shape[1:]):
            raise EngineBuildError(
                f"input {tensor.name!r} has dynamic dimensions other than the batch {shape}; "
                "export the ONNX with a fixed image size",
                onnx_path,
            )
        profile = profile or builder.create_optimization_profile()
        rest = shape[1:]
        profile.set_shape(tensor.name, (1, *rest), (options.opt_batch, *rest), (options.max_batch, *rest))
    if profile is not None:
        config.add_optimization_profile(profile)


def ensure_engine(
    bundle: Bundle,
    fmt: str = "trt-fp16",
    cache_dir: str | Path = DEFAULT_CACHE_DIR,
    options: BuildOptions | None = None,
    trt: Any = None,
    cuda: CudaApi | None = None,
    rebuild: bool = False,
    build: bool = True,
    progress: BuildProgress | None = None,
) -> CachedEngine:
    """Return the cached engine of a bundle for this GPU, building it when missing or stale.

    Args:
        bundle: The opened bundle.
        fmt: ``trt-fp16`` or ``trt-int8``.
        cache_dir: Engine cache folder.
        options: Build settings (DLA core and batch profile are part of the cache key).
        trt: The tensorrt module (imported when ``None``).
        cuda: CUDA layer for the device query (:func:`cuda_api` when ``None``).
        rebuild: Build even when a valid engine is cached.
        build: When False, a missing engine is an error instead of a build (fast-failing starts).
        progress: Progress reporter for the build.

    Raises:
        BundleError: The bundle has no ONNX to build from; its checksum is wrong.
        EngineBuildError: The build failed, or ``build`` is False and nothing is cached.
    """
    trt = trt if trt is not None else import_tensorrt()
    options = options or BuildOptions()
    version = tensorrt_version(trt)
    strong = strongly_typed(version)
    source = engine_source(fmt, [a.format for a in bundle.manifest.artifacts], strong)
    artifact = bundle.artifact(source)
    gpu = (cuda or cuda_api()).device_info(0)
    key = EngineKey(
        model=bundle.manifest.name,
        format=fmt,
        precision=FORMATS[fmt].precision,
        onnx_format=source,
        onnx_sha256=artifact.sha256,
        gpu_name=gpu.name,
        compute_capability=gpu.compute_capability,
        sm_count=gpu.sm_count,
        tensorrt_version=".".join(map(str, version)),
        strongly_typed=strong,
        dla_core=options.dla_core,
        max_batch=options.max_batch,
    )
    cache = EngineCache(cache_dir)
    with cache.build_lock(key):
        cached = None if rebuild else cache.lookup(key)
        if cached is not None:
            log.info("engine cache hit: %s", cached.path)
            return cached
        if not build:
            raise EngineBuildError(
                f"no valid {fmt} engine for this GPU in {cache.root} and building at start is disabled; "
                "build it with 'sudo -u endoedge endoedge install engine'"
            )
        bundle.verify([source])  # never build from an ONNX whose checksum is wrong
        start = time.monotonic()
        plan = build_serialized_engine(
            bundle.artifact_path(source),
            key.precision,
            options,
            trt=trt,
            timing_cache_path=cache.timing_cache_path(key) if options.timing_cache else None,
            progress=progress,
        )
        stored = cache.store(
            key,
            plan,
            build_seconds=time.monotonic() - start,
            bundle=str(bundle.path),
            workspace_mib=options.workspace_mib,
        )
        cache.remove_stale(key)
        return stored
