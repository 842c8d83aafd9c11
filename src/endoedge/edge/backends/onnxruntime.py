"""ONNX Runtime backend with execution providers from config (TensorRT EP, CUDA EP, CPU)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from endoedge.edge.backends import BackendError, BaseBackend, as_list, default_threads

log = logging.getLogger(__name__)

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(double)": np.float64,
}
_OPT_LEVELS = ("disable", "basic", "extended", "all")


class OnnxRuntimeBackend(BaseBackend):
    """Runs ``onnx``, ``onnx-fp16`` and ``onnx-int8`` artifacts.

    Options:
        providers: Execution providers in order of preference (list or comma-separated string);
            providers not available in this onnxruntime build are skipped with a warning.
        threads: Intra-op threads (default: all cores).
        optimization: Graph optimisation level: disable, basic, extended or all (default).
        provider_options: Mapping of provider name to its options (e.g. TensorRT EP engine cache).
        spinning: Let idle intra-op threads spin waiting for work (ONNX Runtime's default, True).
            False hands the cores back between inferences: slightly slower inference, but the
            display path and the other models are not starved on a small CPU.
    """

    name = "onnxruntime"

    def _load(self) -> None:
        import onnxruntime as ort

        wanted = as_list(self.options.get("providers")) or ["CPUExecutionProvider"]
        available = ort.get_available_providers()
        providers = [p for p in wanted if p in available]
        for skipped in (p for p in wanted if p not in available):
            log.warning("onnxruntime provider %s is not available here (available: %s)", skipped, ", ".join(available))
        if not providers:
            raise BackendError(f"none of the providers {wanted} is available (available: {', '.join(available)})")
        level = str(self.options.get("optimization", "all"))
        if level not in _OPT_LEVELS:
            raise BackendError(f"optimization {level!r} is not one of: {', '.join(_OPT_LEVELS)}")
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = int(self.options.get("threads") or default_threads())
        session_options.inter_op_num_threads = 1
        spinning = self.options.get("spinning", True)
        if not isinstance(spinning, bool):
            raise BackendError(f"option spinning must be true or false, not {spinning!r}")
        session_options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        session_options.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[level]
        provider_options: dict[str, Any] = dict(self.options.get("provider_options") or {})
        self.session = ort.InferenceSession(
            str(self.path),
            sess_options=session_options,
            providers=[(p, provider_options.get(p, {})) for p in providers],
        )
        self.providers = self.session.get_providers()
        inp = self.session.get_inputs()[0]
        self._input_name = inp.name
        self._input_type = _ORT_TYPES.get(inp.type)
        if self._input_type is None:
            raise BackendError(f"unsupported ONNX input type {inp.type}", self.path)
        shape = list(inp.shape)
        self._channels_first = len(shape) == 4 and shape[1] == 3 and shape[3] != 3
        self._output_name = self.session.get_outputs()[0].name

    def input_tensor(self, pixels: np.ndarray) -> np.ndarray:
        """The exact tensor fed to the session for these pixels."""
        if self._input_type in (np.uint8, np.int8):
            quant = self.artifact.input_quantization or (1.0, 0)
            tensor = self.quantized(pixels, quant[0], quant[1], np.dtype(self._input_type))
            return tensor.transpose(0, 3, 1, 2) if self._channels_first else tensor
        return self.normalized(pixels, channels_first=self._channels_first).astype(self._input_type, copy=False)

    def _run(self, pixels: np.ndarray) -> np.ndarray:
        (out,) = self.session.run([self._output_name], {self._input_name: self.input_tensor(pixels)})
        return np.asarray(out, dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        """Adds the providers actually in use."""
        info = super().describe()
        info["providers"] = list(self.providers)
        return info

    def close(self) -> None:
        """Drop the session."""
        self.session = None
