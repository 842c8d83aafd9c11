"""The machine fingerprint recorded with every benchmark result.

Results from different boxes must never be mixed silently: every JSON result embeds
:func:`machine_fingerprint`, results are filed under :func:`machine_id`, and
:func:`fingerprint_differences` names what differs when a result is added to a folder measured on
another machine (CPU, cores, GPU, JetPack/L4T, power mode, runtime versions).

Nothing here imports TensorFlow or a runtime: versions come from package metadata, and Jetson facts
from ``/etc/nv_tegra_release``, the device tree, ``nvpmodel -q`` and ``jetson_clocks --show``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from endoedge.__about__ import __version__

#: Packages whose versions change benchmark results (distribution names; the first found wins).
VERSIONED_PACKAGES: Mapping[str, tuple[str, ...]] = {
    "numpy": ("numpy",),
    "opencv": ("opencv-python-headless", "opencv-python", "opencv-contrib-python"),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "litert": ("ai-edge-litert", "tflite-runtime"),
    "tensorflow": ("tensorflow-cpu", "tensorflow", "tensorflow-aarch64"),
    "keras": ("keras",),
    "tf2onnx": ("tf2onnx",),
    "onnx": ("onnx",),
    "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-cu13"),
    "polygraphy": ("polygraphy",),
    "cuda-python": ("cuda-python",),
}

#: Fingerprint fields that identify the hardware and its configuration; a difference in any of them
#: means two results are not comparable.
IDENTITY_FIELDS = (
    "arch",
    "cpu_model",
    "cpu_flags",  # one cloud "AMD EPYC" may be Zen 3 (AVX2) one day and Zen 4 (AVX-512, VNNI) the next
    "cpu_cores",
    "ram_gib",
    "gpu",
    "jetson_model",
    "l4t",
    "power_mode",
)

CommandRunner = Callable[[list[str]], str | None]


def run_command(argv: list[str], timeout: float = 5.0) -> str | None:
    """Output of a command, or ``None`` when it is absent, fails or times out."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip()


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(errors="replace").replace("\x00", "").strip()
    except OSError:
        return None


def parse_cpuinfo(text: str) -> dict[str, Any]:
    """CPU model and the SIMD flags that matter for inference speed from ``/proc/cpuinfo`` text."""
    model = ""
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features"):
            flags.update(value.split())
    wanted: tuple[str, ...] = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    wanted += ("asimd", "asimddp", "asimdhp", "i8mm", "sve", "bf16")
    return {"cpu_model": model, "cpu_flags": sorted(f for f in wanted if f in flags)}


def parse_l4t_release(text: str) -> str:
    """``R36.3.0`` from ``/etc/nv_tegra_release`` (``# R36 (release), REVISION: 3.0, ...``)."""
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return f"R{m.group(1)}.{m.group(2)}" if m else ""


def parse_nvpmodel(text: str) -> str:
    """The power mode from ``nvpmodel -q`` (``NV Power Mode: MAXN`` then the mode number)."""
    m = re.search(r"NV Power Mode:\s*(\S+)", text)
    if not m:
        return ""
    number = next((line.strip() for line in text.splitlines()[1:] if line.strip().isdigit()), "")
    return f"{m.group(1)} ({number})" if number else m.group(1)


def package_versions() -> dict[str, str]:
    """Installed versions of the packages in :data:`VERSIONED_PACKAGES` (absent ones omitted)."""
    versions = {"python": platform.python_version(), "endoedge": __version__}
    for key, distributions in VERSIONED_PACKAGES.items():
        for dist in distributions:
            with contextlib.suppress(importlib.metadata.PackageNotFoundError):
                versions[key] = importlib.metadata.version(dist)
                break
    return versions


def machine_fingerprint(run: CommandRunner = run_command, include_load: bool = True) -> dict[str, Any]:
    """Describe this machine for a benchmark record.

    Args:
        run: Command runner (injectable for tests); returns stdout or ``None``.
        include_load: Record the load average (what else ran during the measurement).

    Returns:
        A JSON-ready dict: ``arch``, ``cpu_model``, ``cpu_flags``, ``cpu_cores``, ``cpu_affinity``, ``ram_gib``,
        ``gpu``, ``jetson_model``, ``l4t``, ``jetpack``, ``power_mode``, ``clocks``, ``os``, ``kernel``,
        ``versions``, ``load_avg`` and ``machine_id``.
    """
    info: dict[str, Any] = {"arch": platform.machine()}
    info.update(parse_cpuinfo(_read("/proc/cpuinfo") or ""))
    if not info["cpu_model"]:
        info["cpu_model"] = platform.processor() or "unknown"
    info["cpu_cores"] = os.cpu_count() or 1
    info["cpu_affinity"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else info["cpu_cores"]
    meminfo = _read("/proc/meminfo") or ""
    m = re.search(r"MemTotal:\s+(\d+) kB", meminfo)
    info["ram_gib"] = round(int(m.group(1)) / 1024 / 1024, 1) if m else 0.0
    jetson_model = _read("/proc/device-tree/model") or ""
    info["jetson_model"] = jetson_model if "jetson" in jetson_model.lower() else ""
    info["l4t"] = parse_l4t_release(_read("/etc/nv_tegra_release") or "")
    info["jetpack"] = (run(["dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack"]) or "") if info["l4t"] else ""
    gpus = run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"])
    if gpus:
        info["gpu"] = "; ".join(line.strip() for line in gpus.splitlines())
    elif info["jetson_model"]:
        info["gpu"] = f"integrated ({info['jetson_model']})"
    else:
        info["gpu"] = "none"
    info["power_mode"] = parse_nvpmodel(run(["nvpmodel", "-q"]) or "")
    clocks = run(["jetson_clocks", "--show"])
    info["clocks"] = clocks.splitlines()[:12] if clocks else []
    os_release = _read("/etc/os-release") or ""
    m = re.search(r'^PRETTY_NAME="?([^"\n]+)"?', os_release, re.MULTILINE)
    info["os"] = m.group(1) if m else platform.system()
    info["kernel"] = platform.release()
    info["versions"] = package_versions()
    if include_load and hasattr(os, "getloadavg"):
        info["load_avg"] = [round(v, 2) for v in os.getloadavg()]
    info["python_executable"] = sys.executable
    info["machine_id"] = machine_id(info)
    return info


def _slug(text: str) -> str:
    text = re.sub(r"\(r\)|\(tm\)|cpu|processor|\d+-core", " ", text.lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


def machine_id(info: Mapping[str, Any]) -> str:
    """A folder name identifying the hardware: ``<arch>-<cpu or jetson>-<cores>c-<gpu>-<hash>``.

    The short hash covers every :data:`IDENTITY_FIELDS` value, so two boxes that differ only in RAM
    or power mode still get different folders.
    """
    if info.get("jetson_model"):
        base = _slug(str(info["jetson_model"]).replace("NVIDIA", ""))
        mode = _slug(str(info.get("power_mode", "")).split(" ")[0]) or "default-mode"
        name = f"{base}-{info.get('l4t', '').lower() or 'l4t'}-{mode}"
    else:
        gpu = str(info.get("gpu", "none"))
        gpu_part = "nogpu" if gpu == "none" else _slug(gpu.split(",")[0].split(";")[0])[:24]
        name = f"{info.get('arch', 'unknown')}-{_slug(str(info.get('cpu_model', 'cpu')))[:24]}"
        name += f"-{info.get('cpu_cores', 0)}c-{gpu_part}"
    digest = hashlib.sha256("|".join(str(info.get(k, "")) for k in IDENTITY_FIELDS).encode()).hexdigest()[:6]
    return f"{name}-{digest}"


def fingerprint_differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """What differs between two fingerprints in hardware identity and runtime versions.

    Returns:
        ``"field: a != b"`` lines; empty when results of ``a`` and ``b`` may share a table.
    """
    diffs = [f"{k}: {a.get(k)!r} != {b.get(k)!r}" for k in IDENTITY_FIELDS if a.get(k) != b.get(k)]
    va, vb = a.get("versions", {}), b.get("versions", {})
    for key in sorted(set(va) | set(vb)):
        if key != "python_executable" and va.get(key) != vb.get(key):
            diffs.append(f"versions.{key}: {va.get(key)!r} != {vb.get(key)!r}")
    return diffs
