"""Write benchmarks/arm64/RESULTS.md from what ``benchmarks/arm64/run.sh`` collected (standard library only).

    python3 benchmarks/arm64/report.py OUT_DIR > RESULTS.md

OUT_DIR holds ``run.env``, ``steps.tsv``, one ``<step>.log`` per step, ``pip-report.json``, the parity
results filed by ``endoedge bench parity --out`` and the demo's ``summary.json``. Only what ran is
reported; a step that failed shows its exit code and the end of its log.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

STEP_TITLES = {
    "system": "what the root file system has",
    "venv": "`python3 -m venv --system-site-packages .venv-edge`",
    "pip-upgrade": "`pip install --upgrade pip`",
    "pip-install": '`pip install -c constraints.txt ".[edge]"`',
    "pip-freeze": "`pip list --format=freeze`",
    "pip-check": "`pip check`",
    "probe": "`benchmarks/arm64/probe.py` (runtimes, SIMD, XNNPACK, GStreamer elements)",
    "bundle-verify": "`endoedge bundle verify`",
    "parity": "`endoedge bench parity --reference bundle`",
    "demo": "`endoedge demo --quick --no-window`",
    "demo-tflite": "`endoedge demo --quick --no-window --backend tflite --format tflite-fp32`",
    "evaluate": "`endoedge evaluate BUNDLE --data DATA` (no TensorFlow)",
    "jp6-constraints": "constraints.txt evaluated for Python 3.10 (JetPack 6)",
    "jp6-resolve": "`pip download` of the edge stack for cp310 / manylinux_2_35_aarch64",
    "jp6-install": "a second venv with JetPack 6's pins (numpy, ONNX Runtime for 3.10)",
    "jp6-freeze": "`pip list --format=freeze` of that venv",
    "jp6-parity": "`endoedge bench parity --reference bundle` with JetPack 6's pins",
    "install": "`systemd/install.sh --prefix /tmp/endoedge-root` (its own venv from PyPI)",
    "install-freeze": "`pip list --format=freeze` of the installer's venv",
    "unit-verify": "`systemd-analyze verify` on the unit it wrote",
    "unit-security": "`systemd-analyze security --offline=yes` on that unit",
}


def read(out: Path, name: str) -> str:
    path = out / name
    return path.read_text(errors="replace") if path.exists() else ""


def env(out: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in read(out, "run.env").splitlines() if "=" in line)
    return {k: v for k, v in pairs}


def steps(out: Path) -> list[dict[str, str]]:
    rows = [line.split("\t") for line in read(out, "steps.tsv").splitlines()[1:] if line.strip()]
    return [{"step": r[0], "rc": r[1], "seconds": r[2]} for r in rows]


def step_rc(rows: list[dict[str, str]], name: str) -> str | None:
    return next((r["rc"] for r in rows if r["step"] == name), None)


def block(text: str, lang: str = "text", tail: int = 0) -> str:
    lines = text.rstrip("\n").splitlines()
    if tail and len(lines) > tail:
        lines = [f"… ({len(lines) - tail} lines above)", *lines[-tail:]]
    return f"```{lang}\n" + "\n".join(lines) + "\n```"


def strip_noise(text: str) -> str:
    """Drop pip's progress and download lines from a log."""
    keep = []
    for line in text.splitlines():
        if re.match(r"\s*(Downloading|Collecting|Using cached|Obtaining|Requirement already|━|Installing build)", line):
            continue
        keep.append(line)
    return "\n".join(keep)


def freeze(text: str) -> dict[str, str]:
    found = {}
    for line in text.splitlines():
        if "==" in line:
            name, version = line.strip().split("==", 1)
            found[name.lower().replace("_", "-")] = version
    return found


def wheels(out: Path, report_name: str = "pip-report.json") -> dict[str, str]:
    """Package -> the file pip installed it from (wheel name with its platform tag)."""
    text = read(out, report_name)
    if not text:
        return {}
    found = {}
    for item in json.loads(text).get("install", []):
        name = item["metadata"]["name"].lower().replace("_", "-")
        url = item.get("download_info", {}).get("url", "")
        found[name] = "local source tree" if url.startswith("file:") and not url.endswith(".whl") else url.rsplit("/", 1)[-1]
    return found


def packages_table(out: Path, freeze_log: str, report_name: str | None) -> str:
    versions = freeze(read(out, freeze_log))
    if report_name is None:
        return ", ".join(f"{name} {versions[name]}" for name in sorted(versions)) + "."
    files = wheels(out, report_name)
    lines = ["| package | version | installed from |", "|---|---|---|"]
    for name in sorted(versions):
        origin = files.get(name)
        if origin is None:
            origin = "already there (Debian package, seen through --system-site-packages; or pip/setuptools of the venv)"
        lines.append(f"| {name} | {versions[name]} | {origin} |")
    return "\n".join(lines)


def parity_section(out: Path, bench_dir: str, manifest: dict[str, Any] | None) -> str:
    results = sorted((out / bench_dir).glob("*/*/parity.json"))
    if not results:
        return "No parity results were filed (see the step's log)."
    report = json.loads(results[0].read_text())
    recorded = {a["format"]: a.get("parity") or {} for a in (manifest or {}).get("artifacts", [])}
    lines = [
        f"{report['images']} images from `{report['data']}`; reference: {report['reference_source']}.",
        "",
        "| artifact | backend on ARM | status on ARM | top-1 agreement, ARM | max abs Δp, ARM | mean abs Δp, ARM "
        "| top-1 agreement at export (x86) | max abs Δp at export (x86) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        m = r.get("metrics") or {}
        rec = recorded.get(r["format"], {})
        status = r["status"] + (f" ({r['reason']})" if r.get("reason") else "")
        lines.append(
            f"| `{r['format']}` | {r.get('backend') or '-'} | {status} | "
            f"{_pct(m.get('top1_agreement'))} | {_num(m.get('max_abs_diff'))} | {_num(m.get('mean_abs_diff'))} | "
            f"{_pct(rec.get('agreement'))} | {_num(rec.get('max_abs_delta'))} |"
        )
    problems = report.get("problems") or []
    if problems:
        reasons: dict[str, int] = {}
        for problem in problems:
            reason = problem.rsplit(": ", 1)[-1]
            reasons[reason] = reasons.get(reason, 0) + 1
        lines += ["", "Images of the reference left out: " + "; ".join(f"{n} × {r}" for r, n in reasons.items()) + "."]
    return "\n".join(lines)


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * float(value):.1f} %"


def _num(value: Any) -> str:
    return "-" if value is None else f"{float(value):.3g}"


def probe_section(out: Path) -> str:
    try:
        probe = json.loads(read(out, "probe.json"))
    except ValueError:
        return "The probe did not finish:\n\n" + block(read(out, "probe.log") or "(no output)", tail=15)
    lines = []
    np_ = probe.get("numpy", {})
    if "error" in np_:
        lines.append(f"- numpy: **{np_['error']}**")
    else:
        lines.append(
            f"- numpy {np_['version']}: SIMD baseline {', '.join(np_['simd_baseline']) or 'none'}; found at run time: "
            f"{', '.join(np_['simd_found']) or 'none'}; float32 matmul correct: {np_['matmul_ok']}."
        )
    cv = probe.get("opencv", {})
    lines.append(
        f"- OpenCV: **{cv['error']}**"
        if "error" in cv
        else f"- OpenCV {cv['version']}: " + "; ".join(line.replace("  ", " ") for line in cv["build"]) + "."
    )
    ort = probe.get("onnxruntime", {})
    lines.append(
        f"- ONNX Runtime: **{ort['error']}**"
        if "error" in ort
        else f"- ONNX Runtime {ort['version']}: providers {', '.join(ort['providers'])} (device {ort['device']})."
    )
    lite = probe.get("litert", {})
    if "error" in lite:
        lines.append(f"- LiteRT: **{lite['error']}**")
    else:
        xnn = lite.get("xnnpack_delegate")
        said = "; ".join(lite.get("stderr", [])) or "nothing"
        lines.append(
            f"- LiteRT (ai-edge-litert {lite['version']}): XNNPACK delegate applied to `{lite.get('model')}`: "
            f"**{'yes' if xnn else 'no'}** (the interpreter said: {said})."
        )
    gst = probe.get("gstreamer", {})
    if "error" in gst:
        lines.append(f"- GStreamer: **{gst['error']}**")
    else:
        have = [k for k, v in gst["elements"].items() if v]
        missing = [k for k, v in gst["elements"].items() if not v]
        lines.append(
            f"- {gst['version']} (PyGObject {gst['pygobject']}): present {', '.join(have)}; "
            f"missing {', '.join(missing) or 'none'}."
        )
    interp = probe.get("interpreter", {})
    if "error" not in interp:
        lines.insert(
            0,
            f"- Interpreter: {interp['implementation']} on {interp['machine']}, {interp['libc']}, venv with system "
            f"site packages: {interp['system_site_packages']}.",
        )
    return "\n".join(lines)


def demo_section(out: Path, name: str = "demo") -> str:
    summary = out / name / "summary.json"
    text = read(out, f"{name}.log").strip()
    parts = [block(text, tail=40) if text else "The demo did not run."]
    if summary.exists():
        data = json.loads(summary.read_text())
        inference = data.get("inference_ms") or data.get("inference") or {}
        if inference:
            parts.append(f"Inference under emulation (sanity only): `{json.dumps(inference)}`.")
    return "\n\n".join(parts)


def main() -> int:
    out = Path(sys.argv[1])
    e = env(out)
    rows = steps(out)
    manifest_path = Path(e.get("bundle", "")) / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else None
    system = read(out, "system.log")
    pretty = re.search(r'^PRETTY_NAME="?([^"\n]*)', system, re.M)
    debver = re.search(r"^debian_version=(.*)$", system, re.M)
    dpkg = [line for line in system.splitlines() if re.match(r"^\S+ \S+ (arm64|all)$", line)]
    total = int(e.get("total_seconds", "0"))

    w = []
    w.append("# The Jetson install path on emulated aarch64: results")
    w.append("")
    w.append(
        "Written by `benchmarks/arm64/run.sh` (`make arm64`); what it does and what it found are in "
        "[`README.md`](README.md). **This is not a Jetson**: real aarch64 binaries (Debian's arm64 packages, "
        "PyPI's aarch64 wheels) ran on an x86 CPU under QEMU's user-mode emulation. Debian's Python is not "
        "JetPack 6's 3.10, there is no GPU, no TensorRT and no display, and **every time below is an emulated "
        "time**: a sanity figure for this script, not a measure of any ARM device."
    )
    w.append("")
    w.append("## What ran")
    w.append("")
    w.append("| | |")
    w.append("|---|---|")
    w.append(f"| date (UTC) | {e.get('date', '?')} |")
    w.append(f"| endoedge commit | `{e.get('commit', '?')}` |")
    bundle = e.get("bundle", "?")
    name = manifest.get("name", "?") if manifest else "?"
    w.append(f"| bundle | `{bundle}` (`{name}`, last changed in commit {e.get('bundle_sha', '?')}) |")
    w.append(f"| host | {e.get('host', '?')}; {e.get('host_cpu', '?')} |")
    mode = e.get("mode", "?")
    how = (
        "binfmt_misc hands aarch64 ELF files to qemu-aarch64-static; chroot into the root"
        if mode == "chroot"
        else "proot -q qemu-aarch64-static (no binfmt_misc)"
    )
    w.append(f"| emulator | {e.get('qemu', '?')}; {how} |")
    w.append(
        f"| guest distribution | {pretty.group(1) if pretty else '?'} (debian_version "
        f"{debver.group(1) if debver else '?'}), arm64, debootstrap `--variant=minbase` + the packages below |"
    )
    py = next((line.split()[1] for line in dpkg if line.startswith("python3.11 ") or line.startswith("python3 ")), "?")
    w.append(f"| guest Python | Debian's `/usr/bin/python3` ({py}); JetPack 6 has 3.10 |")
    w.append(f"| Debian packages (arm64) | {', '.join(f'{p.split()[0]} {p.split()[1]}' for p in dpkg)} |")
    w.append(f"| wall time | {total} s in all ({e.get('rootfs_seconds', '?')} s for the root file system, "
             f"{'cached' if int(e.get('rootfs_seconds', '0') or 0) < 60 else 'built'}; {e.get('guest_seconds', '?')} s "
             "for the steps), emulated |")
    w.append("")
    w.append("## Steps")
    w.append("")
    w.append("Each ran inside the arm64 root in a copy of the checkout, in this order (`nice -n 10`).")
    w.append("")
    w.append("| step | exit | wall time (s, emulated) |")
    w.append("|---|---|---|")
    for r in rows:
        w.append(f"| {STEP_TITLES.get(r['step'], r['step'])} | {r['rc']} | {r['seconds']} |")
    w.append("")
    w.append("## Packages pip resolved (`pip install -c constraints.txt \".[edge]\"`)")
    w.append("")
    w.append(packages_table(out, "pip-freeze.log", "pip-report.json"))
    w.append("")
    check = read(out, "pip-check.log").strip()
    if check:
        w.append(f"`pip check`: {check}")
        w.append("")
    w.append("## The runtimes on ARM")
    w.append("")
    w.append(probe_section(out))
    w.append("")
    w.append("## `endoedge bundle verify`")
    w.append("")
    w.append(block(read(out, "bundle-verify.log") or "did not run"))
    w.append("")
    w.append("## Parity of each artifact on ARM against the bundle's recorded reference")
    w.append("")
    w.append(
        "`endoedge bench parity BUNDLE --data DATA --reference bundle` ran every artifact on ARM and compared "
        "its outputs with the float model's outputs recorded in the bundle (`parity_reference.json`, made on "
        "x86 by Keras at export). The last two columns are the same comparison made at export on x86 "
        "(from the manifest)."
    )
    w.append("")
    w.append(parity_section(out, "bench", manifest))
    w.append("")
    xnn = "XNNPACK delegate" in read(out, "parity.log")
    w.append(f"LiteRT applied its XNNPACK delegate during the parity run: **{'yes' if xnn else 'no'}**.")
    w.append("")
    if read(out, "jp6-parity.log"):
        w.append("## JetPack 6's pins on ARM")
        w.append("")
        w.append(
            "JetPack 6's Python 3.10 gets other versions from `constraints.txt` than Debian's 3.11 does "
            "(numpy, ONNX Runtime). Two checks: pip resolved the whole edge stack for cp310 / "
            "`manylinux_2_35_aarch64` (Ubuntu 22.04's glibc) from binary wheels only, and a second venv ran "
            "those versions here (on 3.11: the libraries are JetPack's, the interpreter is not)."
        )
        w.append("")
        w.append(block(strip_noise(read(out, "jp6-resolve.log")), tail=30))
        w.append("")
        w.append(packages_table(out, "jp6-freeze.log", None))
        w.append("")
        w.append(parity_section(out, "bench-jp6", manifest))
        w.append("")
    w.append("## `endoedge demo --quick --no-window` on ARM")
    w.append("")
    w.append(demo_section(out))
    w.append("")
    if step_rc(rows, "demo-tflite") is not None:
        w.append("The same with LiteRT (`--backend tflite --format tflite-fp32`):")
        w.append("")
        w.append(demo_section(out, "demo-tflite"))
        w.append("")
    if step_rc(rows, "evaluate") is not None:
        w.append("## `endoedge evaluate` on ARM")
        w.append("")
        w.append(block(read(out, "evaluate.log"), tail=40))
        w.append("")
    w.append("## The systemd installer into a temporary root")
    w.append("")
    w.append(block(strip_noise(read(out, "install.log")), tail=60))
    w.append("")
    if read(out, "install-freeze.log"):
        w.append("The installer's venv (no constraints file: the newest releases within pyproject.toml's ranges):")
        w.append("")
        versions = freeze(read(out, "install-freeze.log"))
        edge = ("numpy", "opencv-python-headless", "onnxruntime", "ai-edge-litert", "pydantic", "pillow", "pyyaml")
        w.append(", ".join(f"{k} {versions[k]}" for k in edge if k in versions) + ".")
        w.append("")
    w.append("`systemd-analyze verify` (arm64 systemd) on the unit it wrote, ExecStart= pointed at the staged venv:")
    w.append("")
    w.append(block(read(out, "unit-verify.log") or "did not run"))
    w.append("")
    sec = re.search(r"Overall exposure level.*", read(out, "unit-security.log"))
    if sec:
        w.append(f"`systemd-analyze security --offline=yes`: {sec.group(0).strip()}")
        w.append("")
    print("\n".join(w).rstrip() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
