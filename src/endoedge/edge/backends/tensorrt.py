"""TensorRT backend: engines from the engine cache (built on this device), tensor-address API.

The bundle normally ships ONNX only; the engine for this GPU comes from
:func:`endoedge.edge.box.trt_engine.ensure_engine` (cache hit, or a build at first start). A bundle made on
this very device by ``endoedge export trt`` may carry the engine as a ``trt-*`` artifact instead.

Per inference: pixels are normalised (or quantised) from the manifest into a page-locked host buffer,
copied to the device on one CUDA stream, run with ``execute_async_v3`` on tensor addresses fixed at
load time, and the output is copied back and converted to ``float32`` probabilities. Buffers are sized
for the engine's largest batch once; larger batches are split. One backend serves one thread at a time
(the daemon has one inference worker per model).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from endoedge.core.bundle import Bundle
from endoedge.core.manifest import Artifact
from endoedge.edge.backends import BackendError, BaseBackend
from endoedge.edge.box.trt_engine import (
    DEFAULT_CACHE_DIR,
    BuildOptions,
    CachedEngine,
    CudaApi,
    cuda_api,
    ensure_engine,
    import_tensorrt,
)

log = logging.getLogger(__name__)


@dataclass
class _Binding:
    """One I/O tensor: its name, dtype, per-sample shape and the buffers behind it."""

    name: str
    dtype: np.dtype[Any]
    sample_shape: tuple[int, ...]
    host: np.ndarray
    device: int

    def nbytes(self, batch: int) -> int:
        return int(batch * int(np.prod(self.sample_shape)) * self.dtype.itemsize)


class TensorRTBackend(BaseBackend):
    """Runs ``trt-fp16`` / ``trt-int8`` engines.

    Options:
        threads: Accepted for symmetry with the CPU backends and ignored (the GPU does the work).
        engine_cache: Engine cache folder (default ``/var/cache/endoedge``).
        build: Build a missing engine at load (default True; False fails fast instead).
        rebuild: Rebuild even when a valid engine is cached.
        workspace_mib, dla_core, max_batch, optimization_level: Build settings
            (see :class:`~endoedge.edge.box.trt_engine.BuildOptions`).
        cuda: A :class:`~endoedge.edge.box.trt_engine.CudaApi` (default: pycuda, else cuda-python).
    """

    name = "tensorrt"

    def __init__(self, bundle: Bundle, fmt: str, **options: Any) -> None:
        self.engine: CachedEngine | None = None
        self._trt: Any = None
        self._cuda: CudaApi | None = None
        self._bindings: list[_Binding] = []
        self._stream: Any = None
        self._context: Any = None
        self._cuda_engine: Any = None
        if fmt not in {a.format for a in bundle.manifest.artifacts}:
            # Usual case: the engine is built here from the bundle's ONNX and lives in the cache; the
            # backend then describes it as an in-memory artifact of the bundle.
            self._trt = import_tensorrt()
            self._cuda = options.get("cuda") or cuda_api(device=0)
            build_options = BuildOptions(
                workspace_mib=int(options.get("workspace_mib", 1024)),
                dla_core=None if options.get("dla_core") is None else int(options["dla_core"]),
                max_batch=int(options.get("max_batch", 1)),
                opt_batch=int(options.get("max_batch", 1)),
                optimization_level=options.get("optimization_level"),
            )
            self.engine = ensure_engine(
                bundle,
                fmt,
                cache_dir=options.get("engine_cache") or DEFAULT_CACHE_DIR,
                options=build_options,
                trt=self._trt,
                cuda=self._cuda,
                rebuild=bool(options.get("rebuild", False)),
                build=bool(options.get("build", True)),
            )
            artifact = Artifact(
                format=fmt,
                file=str(self.engine.path),  # absolute: BaseBackend joins it to the bundle path unchanged
                sha256=self.engine.sha256,
                precision=self.engine.key.precision,
                size_bytes=self.engine.path.stat().st_size,
                notes=f"built on this device from {self.engine.key.onnx_format}",
            )
            bundle = replace(bundle, manifest=bundle.manifest.with_artifact(artifact))
        super().__init__(bundle, fmt, **options)

    # -- loading -----------------------------------------------------------------------------------
    def _load(self) -> None:
        trt = self._trt = self._trt or import_tensorrt()
        cuda = self._cuda = self._cuda or self.options.get("cuda") or cuda_api(device=0)
        logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(logger)
        if self.options.get("dla_core") is not None:
            self._runtime.DLA_core = int(self.options["dla_core"])
        with cuda.activated():
            self._cuda_engine = self._runtime.deserialize_cuda_engine(Path(self.path).read_bytes())
            if self._cuda_engine is None:
                raise BackendError(
                    "TensorRT could not deserialize the engine (built by another TensorRT version or GPU?); "
                    "rebuild it with 'endoedge install engine --rebuild'",
                    self.path,
                )
            self._context = self._cuda_engine.create_execution_context()
            self._allocate(trt, cuda)

    def _allocate(self, trt: Any, cuda: CudaApi) -> None:
        engine = self._cuda_engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) != trt.TensorIOMode.INPUT]
        if len(inputs) != 1 or not outputs:
            raise BackendError(f"expected 1 input and >= 1 output tensor, engine has {inputs} -> {outputs}", self.path)
        self._input_name = inputs[0]
        shape = tuple(int(d) for d in engine.get_tensor_shape(self._input_name))
        if len(shape) != 4 or any(d < 0 for d in shape[1:]):
            raise BackendError(f"engine input {self._input_name!r} has shape {shape}, expected N×H×W×3 or N×3×H×W")
        self._channels_first = shape[1] == 3 and shape[3] != 3
        height, width = (shape[2], shape[3]) if self._channels_first else (shape[1], shape[2])
        if (height, width) != self._expected_pixels[:2]:
            raise BackendError(
                f"engine input is {height}×{width} but the manifest says {self._expected_pixels[0]}×"
                f"{self._expected_pixels[1]}",
                self.path,
            )
        if shape[0] < 0:
            self.max_batch = int(engine.get_tensor_profile_shape(self._input_name, 0)[2][0])
        else:
            self.max_batch = shape[0]
        if not self._context.set_input_shape(self._input_name, (self.max_batch, *shape[1:])):
            raise BackendError(f"engine refuses input shape {(self.max_batch, *shape[1:])}", self.path)
        self._output_name = outputs[0]
        self._stream = cuda.create_stream()
        for name in (self._input_name, self._output_name):
            dims = tuple(int(d) for d in self._context.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            sample = dims[1:]
            host = cuda.pinned_empty((self.max_batch, *sample), dtype)
            binding = _Binding(name, dtype, sample, host, 0)
            binding.device = cuda.malloc(binding.nbytes(self.max_batch))
            self._bindings.append(binding)
            if not self._context.set_tensor_address(name, binding.device):
                raise BackendError(f"engine refuses the address of tensor {name!r}", self.path)
        for extra in outputs[1:]:
            log.warning("engine output %r is ignored (the first output %r is the probabilities)", extra, outputs[0])
        log.info(
            "tensorrt: %s loaded (%s input %s%s, max batch %d, CUDA via %s)",
            Path(self.path).name,
            self._bindings[0].dtype,
            "NCHW" if self._channels_first else "NHWC",
            f", DLA core {self.options['dla_core']}" if self.options.get("dla_core") is not None else "",
            self.max_batch,
            cuda.name,
        )

    # -- running -----------------------------------------------------------------------------------
    def input_tensor(self, pixels: np.ndarray) -> np.ndarray:
        """The exact tensor copied to the engine input for these pixels."""
        dtype = self._bindings[0].dtype
        if dtype in (np.uint8, np.int8):
            scale, zero_point = self.artifact.input_quantization or (1.0, 0)
            tensor = self.quantized(pixels, scale, zero_point, dtype)
            return tensor.transpose(0, 3, 1, 2) if self._channels_first else tensor
        return self.normalized(pixels, channels_first=self._channels_first).astype(dtype, copy=False)

    def _run(self, pixels: np.ndarray) -> np.ndarray:
        chunks = [self._run_chunk(pixels[i : i + self.max_batch]) for i in range(0, pixels.shape[0], self.max_batch)]
        return np.concatenate(chunks, axis=0)

    def _run_chunk(self, pixels: np.ndarray) -> np.ndarray:
        assert self._cuda is not None
        cuda, (inp, out) = self._cuda, self._bindings
        n = pixels.shape[0]
        inp.host[:n] = self.input_tensor(pixels)
        with cuda.activated():
            if not self._context.set_input_shape(inp.name, (n, *inp.sample_shape)):
                raise BackendError(f"engine refuses batch {n}", self.path)
            cuda.htod_async(inp.device, inp.host[:n], self._stream)
            if not self._context.execute_async_v3(cuda.stream_handle(self._stream)):
                raise BackendError("TensorRT execute_async_v3 failed", self.path)
            cuda.dtoh_async(out.host[:n], out.device, self._stream)
            cuda.synchronize(self._stream)
        result = out.host[:n].reshape(n, -1)
        if out.dtype in (np.int8, np.uint8):
            scale, zero_point = self.artifact.output_quantization or (1.0, 0)
            return (result.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)
        return result.astype(np.float32)  # always a copy: the pinned buffer is reused by the next call

    def describe(self) -> dict[str, Any]:
        """Adds the engine's cache key (GPU, TensorRT version, ONNX source) when built here."""
        info = super().describe()
        if self.engine is not None:
            info["engine"] = {**self.engine.key.to_dict(), "path": str(self.engine.path)}
        info["cuda"] = self._cuda.name if self._cuda is not None else None
        return info

    def close(self) -> None:
        """Free device buffers, pinned memory and the stream, then the engine."""
        cuda = self._cuda
        if cuda is not None:
            with cuda.activated():
                for binding in self._bindings:
                    cuda.free(binding.device)
                    cuda.free_pinned(binding.host)
                if self._stream is not None:
                    cuda.destroy_stream(self._stream)
        self._bindings = []
        self._stream = None
        self._context = None
        self._cuda_engine = None
