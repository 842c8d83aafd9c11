"""Inference backends: one registry, lazy imports, one interface.

Every backend is created from an opened bundle and takes its preprocessing only from the bundle's
manifest::

    bundle = open_bundle("export/bundles/gastrovision3-efficientnet-lite0")   # verifies sha256
    backend = create_backend("auto", bundle)                           # or tflite / onnxruntime / ...
    probs = backend.infer(prepare_pixels(frame, bundle.manifest.preprocess)[None])

``infer`` takes ``uint8`` ``N×H×W×3`` pixels in the model's channel order (the output of
:func:`endoedge.core.preprocess.prepare_pixels`) and returns ``float32`` ``N×C`` probabilities.
Normalisation, quantisation and layout are applied by the backend from the manifest and the artifact
entry, so every runtime sees exactly what the model was trained on.

Adding a backend: write a module with a class derived from :class:`BaseBackend` (implement
``_load`` and ``_run``) and add one :class:`BackendInfo` row to :data:`BACKENDS`.
"""

from __future__ import annotations

import importlib
import importlib.util
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from endoedge.core.bundle import Bundle
from endoedge.core.errors import BundleError, EndoedgeError, MissingDependencyError
from endoedge.core.manifest import Artifact, ModelManifest
from endoedge.core.preprocess import normalize


class BackendError(EndoedgeError):
    """A backend failed to load a model or produced unusable output (NaN, wrong shape)."""


@dataclass(frozen=True)
class BackendInfo:
    """One row of the backend registry.

    Attributes:
        name: Registry key.
        module: Module that defines the backend class (imported only when used).
        class_name: The class in that module.
        formats: Artifact formats it runs, in default order of preference.
        requires: Alternatives of ``(python module, what to install)``; any one present suffices.
        description: One line for docs and ``--help``.
        options: Option names the backend understands besides the common ones
            (:data:`COMMON_OPTIONS`); anything else is refused before the runtime is imported,
            so a typo in a config (``thread: 1``) is an error rather than a silently ignored setting.
    """

    name: str
    module: str
    class_name: str
    formats: tuple[str, ...]
    requires: tuple[tuple[str, str], ...]
    description: str
    options: tuple[str, ...] = ()


#: Options every backend accepts; a backend without thread control (TensorRT) ignores ``threads``.
COMMON_OPTIONS = ("threads",)


BACKENDS: Mapping[str, BackendInfo] = {
    info.name: info
    for info in (
        BackendInfo(
            "tensorrt",
            "endoedge.edge.backends.tensorrt",
            "TensorRTBackend",
            ("trt-int8", "trt-fp16"),
            (("tensorrt", "JetPack's TensorRT Python bindings (python3-libnvinfer)"),),
            "TensorRT engines on NVIDIA GPUs (Jetson); engines are built on the target",
            (
                "engine_cache",
                "build",
                "rebuild",
                "workspace_mib",
                "dla_core",
                "max_batch",
                "optimization_level",
                "cuda",
            ),
        ),
        BackendInfo(
            "onnxruntime",
            "endoedge.edge.backends.onnxruntime",
            "OnnxRuntimeBackend",
            ("onnx", "onnx-fp16", "onnx-int8"),
            (("onnxruntime", "pip install 'endoedge[edge]' (onnxruntime or onnxruntime-gpu)"),),
            "ONNX Runtime with TensorRT/CUDA/CPU execution providers from config",
            ("providers", "optimization", "provider_options", "spinning"),
        ),
        BackendInfo(
            "tflite",
            "endoedge.edge.backends.tflite",
            "TFLiteBackend",
            ("tflite-int8", "tflite-fp32", "tflite-fp16")
            if platform.machine() in ("aarch64", "arm64")
            else ("tflite-fp32", "tflite-int8", "tflite-fp16"),
            (
                ("ai_edge_litert", "pip install 'endoedge[edge]' (ai-edge-litert)"),
                ("tflite_runtime", "tflite-runtime"),
                ("tensorflow", "tensorflow"),
            ),
            "LiteRT (TFLite) interpreter with XNNPACK on CPU",
            ("xnnpack",),
        ),
        BackendInfo(
            "savedmodel",
            "endoedge.edge.backends.savedmodel",
            "SavedModelBackend",
            ("savedmodel",),
            (("tensorflow", "pip install 'endoedge[train]' (TensorFlow; desktop only)"),),
            "TensorFlow SavedModel: the float reference, desktop only",
        ),
    )
}

#: ``auto`` tries backends in this order and takes the first that is installed and has an artifact.
AUTO_ORDER = ("tensorrt", "onnxruntime", "tflite", "savedmodel")


def _module_present(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def backend_info(name: str) -> BackendInfo:
    """Return a registry row.

    Raises:
        EndoedgeError: Unknown name, listing the valid ones.
    """
    if name not in BACKENDS:
        raise EndoedgeError(f"unknown backend {name!r} (valid: auto, {', '.join(BACKENDS)})")
    return BACKENDS[name]


def check_backend_options(name: str, options: Mapping[str, Any]) -> None:
    """Refuse option names a backend does not understand.

    Args:
        name: ``auto`` or a key of :data:`BACKENDS`. For ``auto`` an option is valid when any
            backend understands it (the one picked gets only its own; see :func:`create_backend`).
        options: The options as given (config ``models[].options`` or keyword arguments).

    Raises:
        EndoedgeError: Unknown backend, or unknown options with the valid ones listed.
    """
    valid = set(COMMON_OPTIONS)
    for info in BACKENDS.values() if name == "auto" else (backend_info(name),):
        valid.update(info.options)
    unknown = sorted(set(options) - valid)
    if unknown:
        raise EndoedgeError(
            f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} for backend {name!r}"
            f" (valid: {', '.join(sorted(valid))})"
        )


def is_available(name: str) -> bool:
    """True when one of the backend's runtime modules is importable here."""
    return any(_module_present(module) for module, _ in backend_info(name).requires)


def available_backends() -> list[str]:
    """Names of the backends whose runtime is installed here."""
    return [name for name in BACKENDS if is_available(name)]


def choose_format(name: str, manifest: ModelManifest, fmt: str | None = None) -> str:
    """Pick the artifact format a backend will run for this manifest.

    Args:
        name: Backend name.
        manifest: The bundle's manifest.
        fmt: A format asked for explicitly, or ``None`` for the backend's preference order
            (artifacts kept despite missing their parity target are used only when asked for).

    Raises:
        BundleError: The bundle has no artifact this backend can run (lists what it has).
    """
    info = backend_info(name)
    have = {a.format: a for a in manifest.artifacts}
    if fmt is not None:
        if fmt not in info.formats:
            raise BundleError(f"backend {name!r} cannot run format {fmt!r} (it runs: {', '.join(info.formats)})")
        if fmt not in have and not _buildable_on_target(fmt, have):
            raise BundleError(f"bundle {manifest.name!r} has no {fmt!r} artifact (it has: {', '.join(have) or 'none'})")
        return fmt
    for candidate in info.formats:
        if candidate in have and not have[candidate].parity_loss_allowed:
            return candidate
        if candidate not in have and _buildable_on_target(candidate, have):
            return candidate
    raise BundleError(
        f"bundle {manifest.name!r} has no artifact for backend {name!r} "
        f"(it runs: {', '.join(info.formats)}; the bundle has: {', '.join(have) or 'none'})"
    )


def _buildable_on_target(fmt: str, have: Mapping[str, Artifact]) -> bool:
    """True for an engine format (``trt-*``) the backend builds on this device from an ONNX the bundle has."""
    from endoedge.core.formats import FORMATS
    from endoedge.edge.box.trt_engine import ENGINE_SOURCES

    if fmt not in FORMATS or not FORMATS[fmt].target_only:
        return False
    return any(src in have and not have[src].parity_loss_allowed for src in ENGINE_SOURCES.get(fmt, ()))


def create_backend(name: str, bundle: Bundle, fmt: str | None = None, **options: Any) -> BaseBackend:
    """Create a backend for a bundle.

    Args:
        name: ``auto`` or a key of :data:`BACKENDS`.
        bundle: An opened bundle (see :func:`endoedge.core.bundle.open_bundle`).
        fmt: Artifact format to load; defaults to the backend's preference among the bundle's.
        **options: Backend options (e.g. ``threads``, ``providers``, ``engine_cache``). With
            ``auto``, options meant for other backends are dropped for the one picked, so one
            config can list ``providers`` for ONNX Runtime and still fall back to LiteRT.

    Raises:
        EndoedgeError: Unknown backend (valid names listed) or unknown options (valid ones listed).
        MissingDependencyError: The runtime is not installed (says what to install).
        BundleError: No suitable artifact, or the artifact's checksum is wrong.
        BackendError: The runtime could not load the artifact.
    """
    check_backend_options(name, options)
    if name == "auto":
        reasons = []
        for candidate in AUTO_ORDER:
            if not is_available(candidate):
                reasons.append(f"{candidate}: not installed")
                continue
            try:
                chosen = choose_format(candidate, bundle.manifest, fmt if fmt in BACKENDS[candidate].formats else None)
            except BundleError as exc:
                reasons.append(f"{candidate}: {exc.message}")
                continue
            own = set(COMMON_OPTIONS) | set(BACKENDS[candidate].options)
            return create_backend(candidate, bundle, chosen, **{k: v for k, v in options.items() if k in own})
        raise BundleError("no installed backend can run this bundle (" + "; ".join(reasons) + ")", bundle.path)
    info = backend_info(name)
    if not is_available(name):
        hints = " or ".join(hint for _, hint in info.requires)
        raise MissingDependencyError(f"backend {name!r} needs {hints}")
    chosen = choose_format(name, bundle.manifest, fmt)
    bundle.verify([chosen])
    module = importlib.import_module(info.module)
    cls = getattr(module, info.class_name)
    backend: BaseBackend = cls(bundle, chosen, **options)
    return backend


class BaseBackend:
    """Shared behaviour of all backends: input checks, normalisation/quantisation, output checks.

    Subclasses implement :meth:`_load` (open the artifact) and :meth:`_run` (run one prepared batch).

    Attributes:
        name: Registry name of the backend.
        format: The artifact format loaded.
        manifest: The bundle's manifest.
        artifact: The artifact's manifest entry.
    """

    name = "base"

    def __init__(self, bundle: Bundle, fmt: str, **options: Any) -> None:
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.format = fmt
        self.artifact: Artifact = bundle.manifest.artifact(fmt)
        self.path = bundle.path / self.artifact.file
        self.options = dict(options)
        spec = self.manifest.preprocess
        self._expected_pixels = (spec.height, spec.width, 3)
        try:
            self._load()
        except (EndoedgeError, MemoryError):
            raise
        except Exception as exc:  # a runtime's own exception types vary; report them in one line
            raise BackendError(
                f"{self.name} cannot load {fmt} artifact: {type(exc).__name__}: {exc}", self.path
            ) from None

    # -- to implement ------------------------------------------------------------------------------
    def _load(self) -> None:
        raise NotImplementedError

    def _run(self, pixels: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    # -- shared helpers ----------------------------------------------------------------------------
    def normalized(self, pixels: np.ndarray, channels_first: bool = False) -> np.ndarray:
        """Float input from pixels using the manifest's normalisation (NHWC unless ``channels_first``)."""
        batch = normalize(pixels, self.manifest.preprocess)
        if self.manifest.preprocess.layout == "NCHW" and not channels_first:
            batch = batch.transpose(0, 2, 3, 1)
        elif self.manifest.preprocess.layout == "NHWC" and channels_first:
            batch = batch.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(batch)

    def quantized(self, pixels: np.ndarray, scale: float, zero_point: int, dtype: np.dtype[Any]) -> np.ndarray:
        """Integer input: normalise, then quantise with the input tensor's scale and zero point.

        A model whose normalisation is ``raw`` with scale 1 and zero point 0 takes the pixels as they are.
        """
        info = np.iinfo(dtype)
        if self.manifest.preprocess.normalization == "raw" and np.isclose(scale, 1.0) and zero_point == 0:
            return np.ascontiguousarray(pixels.astype(dtype, copy=False))
        values = np.round(self.normalized(pixels) / np.float32(scale) + np.float32(zero_point))
        return np.clip(values, info.min, info.max).astype(dtype)

    def infer(self, pixels: np.ndarray) -> np.ndarray:
        """Run the model on prepared pixels.

        Args:
            pixels: ``uint8`` ``N×H×W×3`` (or one ``H×W×3`` image) in the model's channel order.

        Returns:
            ``float32`` ``N×C`` probabilities.

        Raises:
            ValueError: Pixels of the wrong dtype or shape.
            BackendError: The output is not finite or not ``N×C``.
        """
        if pixels.ndim == 3:
            pixels = pixels[None]
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1:] != self._expected_pixels:
            raise ValueError(
                f"{self.name}: expected uint8 N×{self._expected_pixels[0]}×{self._expected_pixels[1]}×3 pixels, "
                f"got {pixels.dtype} {pixels.shape}"
            )
        out = np.asarray(self._run(pixels), dtype=np.float32)
        expected = (pixels.shape[0], self.manifest.num_classes)
        if out.shape != expected:
            if out.size == expected[0] * expected[1]:
                out = out.reshape(expected)
            else:
                raise BackendError(f"{self.name}: output shape {out.shape}, expected {expected}", self.path)
        if not np.all(np.isfinite(out)):
            raise BackendError(f"{self.name}: output contains NaN or infinity", self.path)
        return out

    def warmup(self, runs: int = 2, batch: int = 1) -> None:
        """Run a few inferences on black pixels so the first real frame is not slow."""
        pixels = np.zeros((batch, *self._expected_pixels), dtype=np.uint8)
        for _ in range(runs):
            self.infer(pixels)

    def describe(self) -> dict[str, Any]:
        """Backend, format, precision and options, for status pages and benchmark records."""
        return {
            "backend": self.name,
            "format": self.format,
            "precision": self.artifact.precision,
            "file": self.artifact.file,
            "sha256": self.artifact.sha256,
            "options": {k: v for k, v in self.options.items() if isinstance(v, str | int | float | bool | list)},
        }

    def close(self) -> None:
        """Release the runtime (subclasses free what they hold)."""


def default_threads() -> int:
    """Threads for CPU runtimes: all cores (the daemon's display loop is light)."""
    import os

    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def as_list(value: str | Sequence[str] | None) -> list[str]:
    """Accept ``"a,b"`` or ``["a", "b"]``."""
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return list(value)
