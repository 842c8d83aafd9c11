"""TensorRT engines from an export: delegated to :mod:`endoedge.edge.box.trt_engine` on the target.

Engines are specific to the GPU, TensorRT version and precision they were built with, so they are
built on the Jetson itself (the engine builder and its cache live in ``endoedge.edge.box.trt_engine``;
the daemon normally builds and caches engines there with ``ensure_engine``; this path only serves
``endoedge export --formats trt-*`` run on the target, which puts the engine into the bundle).
Asking ``endoedge export`` for ``trt-fp16``/``trt-int8`` works only where TensorRT is installed; the
requirement check refuses it elsewhere, naming what to install.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from endoedge.core.formats import FORMATS
from endoedge.export.source import ExportError

if TYPE_CHECKING:
    from endoedge.export.exporters import ArtifactDraft, ExportContext


def engine_builder() -> Any:
    """The engine builder module, imported lazily.

    Raises:
        ExportError: It is not part of this installation yet.
    """
    try:
        return importlib.import_module("endoedge.edge.box.trt_engine")
    except ModuleNotFoundError as exc:
        if exc.name == "endoedge.edge.box.trt_engine":
            raise ExportError("the TensorRT engine builder (endoedge.edge.box.trt_engine) is not built yet") from None
        raise


def build_engine_artifact(ctx: ExportContext, out: Path) -> ArtifactDraft:
    """Build a TensorRT engine from the ONNX format the engine is made from."""
    from endoedge.export.exporters import ArtifactDraft

    engine_format = next(k for k in ctx.wanted if FORMATS[k].target_only and ctx.path_for(k) == out)
    onnx_path = ctx.ensure(FORMATS[engine_format].made_from)
    module = engine_builder()
    plan = module.build_serialized_engine(onnx_path, FORMATS[engine_format].precision)
    out.write_bytes(plan)
    return ArtifactDraft(notes=f"TensorRT engine built on this GPU from {FORMATS[engine_format].made_from}")
