"""The installer's engine step and ``endoedge install engine``, with the TensorRT double in a subprocess.

The double is put on the subprocess's ``PYTHONPATH`` exactly as JetPack's module would be found through
the venv's ``--system-site-packages``; everything else (installer, config, bundle store, engine cache)
is the real code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from _onnxbundle import onnx_bundle

from endoedge.edge.box.install import Installer, InstallOptions, tree_digest

ROOT = Path(__file__).resolve().parents[2]
FAKES = Path(__file__).resolve().parent / "fakes"
ENV = {"PYTHONPATH": f"{FAKES}{os.pathsep}{os.environ.get('PYTHONPATH', '')}".rstrip(os.pathsep)}


def _install(root: Path, bundle: Path, **kwargs: object) -> list[str]:
    lines: list[str] = []
    options = InstallOptions(root=root, source=ROOT, use_venv=Path(sys.prefix), bundle=bundle, env=ENV, **kwargs)  # type: ignore[arg-type]
    Installer(options, out=lines.append).install()
    return lines


def _engines(root: Path) -> list[Path]:
    return sorted((root / "var/cache/endoedge").glob("*.engine"))


def test_installer_builds_the_engine_before_enabling_the_service(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "root"
    bundle = onnx_bundle(tmp_path / "bundle")
    lines = _install(root, bundle)
    output = capfd.readouterr().out
    (engine,) = _engines(root)
    sidecar = json.loads(engine.with_suffix(".json").read_text())
    assert sidecar["key"]["gpu_name"] == "Orin (fake)" and sidecar["key"]["tensorrt_version"] == "10.3.0"
    assert "building TensorRT 10.3.0 fp16 engine" in output and "TensorRT: Building engine 3/3" in output
    assert f"sites: trt-fp16 engine {engine} (built in" in output
    text = "\n".join(lines)
    assert text.index("==> TensorRT engine") < text.index("systemctl enable endoedge")
    # Second run: the engine is a cache hit and the tree is unchanged.
    digest = tree_digest(root)
    _install(root, bundle)
    assert "cached, valid for this GPU" in capfd.readouterr().out
    assert tree_digest(root) == digest


def test_deferred_engine_build_leaves_it_to_the_first_start(tmp_path: Path) -> None:
    root = tmp_path / "root"
    lines = _install(root, onnx_bundle(tmp_path / "bundle"), defer_engine_build=True)
    assert _engines(root) == []
    assert any("deferred (--defer-engine-build)" in line for line in lines)
    # What the unit's ExecStartPre does at the first start (here with the root mapped):
    done = subprocess.run(
        [sys.executable, "-m", "endoedge.cli", "install", "engine", "--root", str(root), "--skip-without-tensorrt"],
        capture_output=True, text=True, env={**os.environ, **ENV}, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert len(_engines(root)) == 1 and "sites: trt-fp16 engine" in done.stdout


def test_engine_command_on_a_bundle_and_errors(fake_trt: ModuleType, tmp_path: Path) -> None:
    from endoedge.cli import main

    bundle = onnx_bundle(tmp_path / "bundle", formats=("onnx", "onnx-int8"))
    cache = tmp_path / "cache"
    assert main(["install", "engine", "--bundle", str(bundle), "--cache", str(cache)]) == 0
    assert [p.name.split("-")[2] for p in sorted(cache.glob("*.engine"))] == ["int8"]
    assert main(["install", "engine", "--bundle", str(bundle), "--cache", str(cache), "--format", "trt-fp16"]) == 0
    assert len(list(cache.glob("*.engine"))) == 2
    # A DLA core this device does not have: one line, exit code 2.
    assert main(["install", "engine", "--bundle", str(bundle), "--cache", str(cache), "--dla-core", "0"]) == 2


def test_engine_command_without_tensorrt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from endoedge.cli import main

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    bundle = onnx_bundle(tmp_path / "bundle")
    assert main(["install", "engine", "--bundle", str(bundle), "--skip-without-tensorrt"]) == 0
    assert "TensorRT is not available here" in capsys.readouterr().out
    assert main(["install", "engine", "--bundle", str(bundle)]) == 2
    assert "python3-libnvinfer" in capsys.readouterr().err


def test_engine_command_skips_models_tensorrt_cannot_run(
    fake_trt: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A config model with backend auto whose bundle has no ONNX (TFLite only) is skipped, not an error."""
    from endoedge.cli import main

    bundle = onnx_bundle(tmp_path / "bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["artifacts"][0]["format"] = "tflite-fp32"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    config = tmp_path / "config.yaml"
    config.write_text(f"models:\n  - name: lite\n    bundle: {bundle}\n    backend: auto\n")
    assert main(["install", "engine", "--config", str(config), "--cache", str(tmp_path / "cache")]) == 0
    assert "lite: skipped, TensorRT cannot run this bundle" in capsys.readouterr().out


def test_a_failed_engine_build_stops_before_the_service_is_enabled(tmp_path: Path) -> None:
    from endoedge.edge.box.install import InstallError

    root = tmp_path / "root"
    config = root / "etc/endoedge/config.yaml"
    config.parent.mkdir(parents=True)
    # An edited config (kept by the installer) asking for an impossible build.
    config.write_text((ROOT / "systemd/config.yaml").read_text().replace("workspace_mib: 1024", "workspace_mib: 8"))
    lines: list[str] = []
    options = InstallOptions(
        root=root, source=ROOT, use_venv=Path(sys.prefix), bundle=onnx_bundle(tmp_path / "b"), env=ENV
    )
    with pytest.raises(InstallError, match="engine build .* failed \\(exit code 2\\)"):
        Installer(options, out=lines.append).install()
    assert not any("systemctl" in line for line in lines)
    assert _engines(root) == []


def test_status_shows_config_bundle_engine_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from endoedge.cli import main

    root = tmp_path / "root"
    _install(root, onnx_bundle(tmp_path / "bundle"))
    (root / "var/lib/endoedge/reports/20261122T090000Z-001").mkdir()
    capsys.readouterr()
    assert main(["install", "status", "--prefix", str(root)]) == 0
    text = capsys.readouterr().out
    assert "service:  installed" in text and "config:   /etc/endoedge/config.yaml valid" in text
    assert "bundle:   current  channel-mean-" in text
    assert "engine:   channel-mean fp16 TensorRT 10.3.0 Orin (fake) (16 SMs) built " in text
    assert "reports:  1 (latest 20261122T090000Z-001)" in text
    config = root / "etc/endoedge/config.yaml"
    config.write_text(config.read_text().replace("port: 8765", "port: 99999"))
    assert main(["install", "status", "--prefix", str(root), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["config"]["valid"] is False and "status.port" in info["config"]["error"]
