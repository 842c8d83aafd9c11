"""What the edge runtimes are on this machine: run inside the arm64 root by ``benchmarks/arm64/run.sh``.

Prints one JSON object: the interpreter, numpy's SIMD support, OpenCV's build (video I/O, NEON),
ONNX Runtime's providers, LiteRT and whether its XNNPACK delegate takes the bundle's float model,
and which GStreamer elements the daemon's sources and sinks need are present. Every import is
guarded: a missing runtime is a finding, reported as an error string.

    .venv-edge/bin/python benchmarks/arm64/probe.py [BUNDLE [OUT.json]]
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

GST_ELEMENTS = (
    "appsrc", "appsink", "videoconvert", "videoscale", "filesrc", "decodebin", "v4l2src", "jpegenc", "avimux",
    "kmssink", "nvdrmvideosink", "nvvidconv", "nvv4l2decoder", "ximagesink", "x264enc",
)  # fmt: skip


def guarded(fn: Any) -> Any:
    try:
        return fn()
    except Exception as exc:  # a missing or broken runtime is what this probe reports
        return {"error": f"{type(exc).__name__}: {exc}"}


def interpreter() -> dict[str, Any]:
    return {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "implementation": f"{platform.python_implementation()} {sys.version.split()[0]}",
        "executable": sys.executable,
        "libc": " ".join(platform.libc_ver()),
        "system_site_packages": Path(sys.prefix, "pyvenv.cfg").read_text().count("include-system-site-packages = true")
        == 1,
    }


def numpy_info() -> dict[str, Any]:
    import numpy as np

    try:
        from numpy._core._multiarray_umath import __cpu_baseline__, __cpu_features__
    except ImportError:  # numpy 1.x
        from numpy.core._multiarray_umath import __cpu_baseline__, __cpu_features__  # type: ignore[no-redef]
    return {
        "version": np.__version__,
        "simd_baseline": list(__cpu_baseline__),
        "simd_found": sorted(k for k, v in __cpu_features__.items() if v),
        "matmul_ok": bool(np.all((np.ones((64, 64), np.float32) @ np.ones((64, 64), np.float32)) == 64)),
    }


def opencv_info() -> dict[str, Any]:
    import cv2

    wanted = ("FFMPEG:", "GStreamer:", "V4L/V4L2:", "Baseline:", "Dispatched code", "Parallel framework:")
    lines = [line.strip() for line in cv2.getBuildInformation().splitlines()]
    return {"version": cv2.__version__, "build": [line for line in lines if line.startswith(wanted)]}


def onnxruntime_info() -> dict[str, Any]:
    import onnxruntime as ort

    return {"version": ort.__version__, "providers": ort.get_available_providers(), "device": ort.get_device()}


def litert_info(bundle: str | None) -> dict[str, Any]:
    from ai_edge_litert import interpreter as litert

    info: dict[str, Any] = {"version": importlib.metadata.version("ai-edge-litert")}
    if bundle is None:
        return info
    model = next((p for p in sorted(Path(bundle).glob("*.tflite")) if "int8" not in p.name), None)
    if model is None:
        return info
    # LiteRT says on stderr (from C++) whether it applied its XNNPACK delegate: catch fd 2.
    with tempfile.TemporaryFile() as err:
        saved = os.dup(2)
        os.dup2(err.fileno(), 2)
        try:
            interp = litert.Interpreter(model_path=str(model), num_threads=2)
            interp.allocate_tensors()
            interp.invoke()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        err.seek(0)
        said = err.read().decode(errors="replace")
    info["model"] = model.name
    info["xnnpack_delegate"] = "XNNPACK delegate" in said
    info["stderr"] = [line for line in said.splitlines() if line.strip()][:5]
    return info


def gstreamer_info() -> dict[str, Any]:
    import gi

    gi.require_version("Gst", "1.0")
    from gi.repository import Gst

    Gst.init(None)
    return {
        "version": Gst.version_string(),
        "pygobject": gi.__version__,
        "elements": {name: Gst.ElementFactory.find(name) is not None for name in GST_ELEMENTS},
    }


def main() -> int:
    bundle = sys.argv[1] if len(sys.argv) > 1 else None
    report = {
        "interpreter": guarded(interpreter),
        "numpy": guarded(numpy_info),
        "opencv": guarded(opencv_info),
        "onnxruntime": guarded(onnxruntime_info),
        "litert": guarded(lambda: litert_info(bundle)),
        "gstreamer": guarded(gstreamer_info),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if len(sys.argv) > 2:
        Path(sys.argv[2]).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
