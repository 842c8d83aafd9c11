"""The installer, run into a temporary root (``--prefix``), checked file by file; idempotency; config care."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from _fakebundle import make_bundle

from endoedge.cli import main as cli_main
from endoedge.core.errors import EndoedgeError
from endoedge.edge.box.install import (
    Installer,
    InstallError,
    InstallOptions,
    check_supported,
    detect_platform,
    dpkg_version,
    parse_l4t,
    tree_digest,
)

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.prefix)
L4T_R36 = "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 2025\n"
DPKG_STATUS = """Package: libnvinfer10
Status: install ok installed
Version: 10.3.0.30-1+cuda12.5

Package: tensorrt
Status: install ok installed
Version: 10.3.0.30-1+cuda12.5

Package: python3-libnvinfer
Status: deinstall ok config-files
Version: 8.5.2-1+cuda11.4
"""


def _install(root: Path, bundle: Path | None = None, **kwargs: object) -> tuple[Installer, list[str]]:
    lines: list[str] = []
    options = InstallOptions(
        root=root,
        source=ROOT,
        use_venv=VENV,
        bundle=bundle,
        no_bundle=bundle is None,
        **kwargs,  # type: ignore[arg-type]
    )
    installer = Installer(options, out=lines.append)
    installer.install()
    return installer, lines


def _files(root: Path) -> dict[str, str]:
    """Every entry below root: ``path -> kind and mode`` (symlinks with their target)."""
    found = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        info = path.lstat()
        if path.is_symlink():
            found[rel] = f"link->{os.readlink(path)}"
        elif path.is_dir():
            found[rel] = f"dir {stat.S_IMODE(info.st_mode):o}"
        else:
            found[rel] = f"file {stat.S_IMODE(info.st_mode):o}"
    return found


def test_install_into_a_temporary_root_file_by_file(tmp_path: Path) -> None:
    root = tmp_path / "root"
    bundle = make_bundle(tmp_path / "bundle", name="demo")
    installer, lines = _install(root, bundle)
    files = _files(root)
    version = next(p for p in files if p.startswith("var/lib/endoedge/bundles/versions/demo-")).split("/")[5]
    expected = {
        "etc": None, "etc/endoedge": "dir 755", "etc/endoedge/config.yaml": "file 644",
        "etc/systemd": None, "etc/systemd/system": None, "etc/systemd/system/endoedge.service": "file 644",
        "opt": None, "opt/endoedge": "dir 755", "opt/endoedge/README.md": "file 644",
        "opt/endoedge/uninstall.sh": "file 755",
        "var": None, "var/lib": None, "var/cache": None,
        "var/lib/endoedge": "dir 755", "var/lib/endoedge/install.json": "file 644",
        "var/lib/endoedge/reports": "dir 750", "var/lib/endoedge/state": "dir 750", "var/cache/endoedge": "dir 750",
        "var/lib/endoedge/bundles": "dir 755", "var/lib/endoedge/bundles/.lock": "file 644",
        "var/lib/endoedge/bundles/history.json": "file 644",
        "var/lib/endoedge/bundles/current": f"link->versions/{version}",
        "var/lib/endoedge/bundles/versions": "dir 755",
        f"var/lib/endoedge/bundles/versions/{version}": "dir 755",
        f"var/lib/endoedge/bundles/versions/{version}/manifest.json": "file 644",
        f"var/lib/endoedge/bundles/versions/{version}/model.onnx": "file 644",
        f"var/lib/endoedge/bundles/versions/{version}/reference.json": "file 644",
    }  # fmt: skip
    assert set(files) == set(expected)
    for path, want in expected.items():
        if want is not None:
            assert files[path] == want, path
    assert (root / "etc/endoedge/config.yaml").read_bytes() == (ROOT / "systemd/config.yaml").read_bytes()
    assert (root / "etc/systemd/system/endoedge.service").read_bytes() == (
        ROOT / "systemd/endoedge.service"
    ).read_bytes()
    assert (root / "opt/endoedge/README.md").read_bytes() == (ROOT / "systemd/README.md").read_bytes()
    record = json.loads((root / "var/lib/endoedge/install.json").read_text())
    assert set(record) == {"config_sha256", "unit_sha256"}
    # Under --prefix the running system is not touched: user and systemctl are printed, not run.
    assert any("would run (--prefix): useradd --system" in line for line in lines)
    assert any("would run (--prefix): systemctl enable endoedge" in line for line in lines)
    assert any("would run (--prefix): chown endoedge:endoedge /var/cache/endoedge" in line for line in lines)
    assert installer.changed


def test_running_it_again_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    bundle = make_bundle(tmp_path / "bundle")
    _install(root, bundle)
    before = tree_digest(root)
    installer, lines = _install(root, bundle)
    assert tree_digest(root) == before
    assert installer.changed == []
    assert lines[-1] == "done: nothing changed (already installed)"


def test_tree_digest_sees_a_mode_change(tmp_path: Path) -> None:
    """The idempotency check above can fail: modes, contents and links all count."""
    root = tmp_path / "root"
    _install(root)
    before = tree_digest(root)
    os.chmod(root / "etc/endoedge/config.yaml", 0o600)
    assert tree_digest(root) != before


def test_an_edited_config_is_never_overwritten(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _install(root)
    config = root / "etc/endoedge/config.yaml"
    edited = config.read_text().replace("v4l2:///dev/video0", "v4l2:///dev/video2")
    config.write_text(edited)
    _, lines = _install(root)
    assert config.read_text() == edited
    new = root / "etc/endoedge/config.yaml.new"
    assert new.read_bytes() == (ROOT / "systemd/config.yaml").read_bytes()
    assert any("kept your edited /etc/endoedge/config.yaml" in line for line in lines)
    digest = tree_digest(root)
    installer, _ = _install(root)
    assert tree_digest(root) == digest and installer.changed == []


def test_an_unedited_old_default_is_upgraded(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _install(root)
    config = root / "etc/endoedge/config.yaml"
    old_default = "# last release's default\nsource:\n  uri: v4l2:///dev/video0\n"
    config.write_text(old_default)
    record = root / "var/lib/endoedge/install.json"
    data = json.loads(record.read_text())
    import hashlib

    data["config_sha256"] = hashlib.sha256(old_default.encode()).hexdigest()
    record.write_text(json.dumps(data))
    _, lines = _install(root)
    assert config.read_bytes() == (ROOT / "systemd/config.yaml").read_bytes()
    assert not (root / "etc/endoedge/config.yaml.new").exists()
    assert any("updating the unedited config" in line for line in lines)


def test_dry_run_prints_every_step_and_writes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    _, lines = _install(root, make_bundle(tmp_path / "bundle"), dry_run=True)
    assert list(root.iterdir()) == []
    text = "\n".join(lines)
    for step in ("==> system user", "==> folders", "==> virtualenv", "==> config", "==> service files",
                 "==> bundle", "==> TensorRT engine", "==> systemd"):  # fmt: skip
        assert step in text
    assert "would write /etc/endoedge/config.yaml" in text
    assert "would create /var/cache/endoedge (mode 750)" in text
    assert "would run (dry run): systemctl daemon-reload" in text


def test_upgrade_installs_the_new_bundle_side_by_side(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _install(root, make_bundle(tmp_path / "b1", payload=b"one"))
    _, lines = _install(root, make_bundle(tmp_path / "b2", payload=b"two"))
    store = root / "var/lib/endoedge/bundles"
    assert (store / "current" / "model.onnx").read_bytes() == b"two"
    assert (store / "previous" / "model.onnx").read_bytes() == b"one"
    assert any(line.strip().startswith("installed: demo-") for line in lines)
    config = root / "etc/endoedge/config.yaml"
    assert config.read_bytes() == (ROOT / "systemd/config.yaml").read_bytes()


def test_a_bad_bundle_stops_the_install_with_one_line(tmp_path: Path) -> None:
    bad = make_bundle(tmp_path / "bundle")
    (bad / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(InstallError, match=r"bundle install failed: .*sha256 mismatch") as info:
        _install(tmp_path / "root", bad)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "root/var/lib/endoedge/bundles/current").exists()


def test_platform_detection_reads_l4t_and_tensorrt(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/nv_tegra_release").write_text(L4T_R36)
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text(DPKG_STATUS)
    (root / "proc/device-tree").mkdir(parents=True)
    (root / "proc/device-tree/model").write_bytes(b"NVIDIA Jetson AGX Orin Developer Kit\0")
    platform = detect_platform(root, sys.executable)
    assert (platform.l4t, platform.jetpack, platform.tensorrt) == ("R36.4.3", "JetPack 6", "10.3.0.30")
    assert platform.model == "NVIDIA Jetson AGX Orin Developer Kit" and platform.is_jetson
    assert check_supported(platform) == []
    _, lines = _install(root)
    assert "  L4T: R36.4.3   JetPack: JetPack 6" in lines and "  TensorRT: 10.3.0.30" in lines


def test_parsers() -> None:
    assert parse_l4t("# R35 (release), REVISION: 5.0, GCID: 1") == (35, "R35.5.0")
    assert parse_l4t("garbage") is None
    assert dpkg_version(DPKG_STATUS, ("python3-libnvinfer",)) is None  # removed, config files only
    assert dpkg_version(DPKG_STATUS, ("libnvinfer8", "libnvinfer10")) == "10.3.0.30"


def _python_38(tmp_path: Path) -> Path:
    fake = tmp_path / "python3.8"
    # Answers like JetPack 5's python3.8: its version, and a failing ">= 3.10" check in install.sh.
    fake.write_text('#!/bin/sh\ncase "$*" in *"sys.exit"*) exit 1;; esac\necho 3.8.10\n')
    fake.chmod(0o755)
    return fake


def test_jetpack5_python_is_refused_clearly(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/nv_tegra_release").write_text("# R35 (release), REVISION: 5.0, GCID: 1, BOARD: t186ref\n")
    with pytest.raises(
        InstallError, match=r"Python 3\.8\.10 \(JetPack 5 ships Python 3\.8\) is not supported.*JetPack 6"
    ):
        _install(root, python=str(_python_38(tmp_path)))
    assert not (root / "opt").exists()


def test_jetpack5_with_a_newer_python_warns_about_tensorrt(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/nv_tegra_release").write_text("# R35 (release), REVISION: 5.0, GCID: 1, BOARD: t186ref\n")
    _, lines = _install(root)
    assert any("warning: JetPack 5: its TensorRT Python bindings are for Python 3.8" in line for line in lines)


def test_install_sh_is_a_thin_wrapper_running_on_the_bare_system_python(tmp_path: Path) -> None:
    """install.sh runs the installer with /usr/bin/python3, which has no numpy/OpenCV/pydantic."""
    python = "/usr/bin/python3"
    if not Path(python).exists():
        pytest.skip("no /usr/bin/python3")
    root = tmp_path / "root"
    done = subprocess.run(
        [str(ROOT / "systemd/install.sh"), "--prefix", str(root), "--use-venv", str(VENV), "--no-bundle"],
        capture_output=True, text=True, env={**os.environ, "PYTHON": python}, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Python for the venv: 3." in done.stdout
    assert (root / "etc/systemd/system/endoedge.service").is_file()
    refused = subprocess.run(
        [str(ROOT / "systemd/install.sh"), "--prefix", str(root)],
        capture_output=True, text=True, env={**os.environ, "PYTHON": str(_python_38(tmp_path))}, timeout=60,
    )  # fmt: skip
    assert refused.returncode == 2 and "needs Python >= 3.10" in refused.stderr and "JetPack 6" in refused.stderr


def test_uninstall_keeps_data_unless_purged(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _install(root, make_bundle(tmp_path / "bundle"))
    (root / "var/lib/endoedge/reports/exam-1.json").write_text("{}")
    assert cli_main(["install", "uninstall", "--prefix", str(root)]) == 0
    assert not (root / "etc/systemd/system/endoedge.service").exists() and not (root / "opt/endoedge").exists()
    assert (root / "var/lib/endoedge/reports/exam-1.json").is_file()
    assert (root / "etc/endoedge/config.yaml").is_file() and (root / "var/lib/endoedge/bundles/current").exists()
    assert cli_main(["install", "uninstall", "--prefix", str(root), "--purge"]) == 0
    assert not (root / "var/lib/endoedge").exists() and not (root / "etc/endoedge").exists()
    assert not (root / "var/cache/endoedge").exists()


def test_uninstall_sh_from_the_installed_copy(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _install(root)
    script = root / "opt/endoedge/uninstall.sh"
    (root / "opt/endoedge/venv/bin").mkdir(parents=True)
    venv_python = root / "opt/endoedge/venv/bin/python"
    venv_python.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')  # stands in for the installed venv
    venv_python.chmod(0o755)
    done = subprocess.run([str(script), "--prefix", str(root), "--dry-run"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "would remove /etc/systemd/system/endoedge.service" in done.stdout and script.exists()


def test_real_install_needs_root(monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() == 0:
        monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(EndoedgeError, match="needs root"):
        cli_main_raise(["install", "--use-venv", str(VENV)])


def cli_main_raise(argv: list[str]) -> int:
    from endoedge.edge.box.install_cli import main

    return main(argv[1:])


def test_missing_source_tree(tmp_path: Path) -> None:
    with pytest.raises(InstallError, match="run the installer from the endoedge source tree"):
        Installer(InstallOptions(root=tmp_path, source=tmp_path, use_venv=VENV), out=lambda _: None).install()


class Recorder:
    """Stands in for running commands on the real system (useradd, systemctl cannot run here)."""

    def __init__(self, fail: str = "") -> None:
        self.calls: list[list[str]] = []
        self.fail = fail

    def __call__(self, argv: list[str], env: dict[str, str] | None) -> int:
        self.calls.append(argv)
        return 1 if self.fail and self.fail in argv else 0


def test_real_root_user_and_systemctl_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    """On / the user and systemctl steps run their commands (recorded here, not executed)."""
    from endoedge.edge.box import install

    recorder = Recorder()
    lines: list[str] = []
    real = Installer(InstallOptions(root=Path("/"), use_venv=VENV), out=lines.append, run=recorder)
    monkeypatch.setattr(install, "_user_exists", lambda name: False)
    monkeypatch.setattr(install, "_group_exists", lambda root, name: name == "render")
    real.step_user(platform=None)  # type: ignore[arg-type]
    monkeypatch.setattr(install, "_user_exists", lambda name: True)
    real.step_user(platform=None)  # type: ignore[arg-type]
    real.step_systemctl(bundle=Path("/some/bundle"))
    assert recorder.calls == [
        ["useradd", "--system", "--user-group", "--home-dir", "/var/lib/endoedge", "--no-create-home",
         "--shell", "/usr/sbin/nologin", "--groups", "video,render", "endoedge"],
        ["usermod", "--append", "--groups", "video,render", "endoedge"],
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "endoedge"],
        ["systemctl", "restart", "endoedge"],
    ]  # fmt: skip
    assert "    follow it with: journalctl -u endoedge -f" in lines


def test_a_failing_system_command_stops_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    failing = Installer(InstallOptions(root=Path("/"), use_venv=VENV), out=lambda _: None, run=Recorder("enable"))
    with pytest.raises(InstallError, match="systemctl enable failed \\(exit code 1\\): systemctl enable endoedge"):
        failing.step_systemctl(bundle=Path("/b"))


def test_uninstall_tolerates_a_service_that_is_already_gone(tmp_path: Path) -> None:
    recorder = Recorder("disable")
    lines: list[str] = []
    staged = Installer(InstallOptions(root=tmp_path), out=lines.append, run=recorder)
    staged.o.root = Path("/")  # command() runs system commands only on the real root...
    staged.path = lambda target: tmp_path / target.relative_to("/")  # type: ignore[method-assign]  # ...files stay in tmp
    staged.uninstall()
    assert ["systemctl", "disable", "--now", "endoedge"] in recorder.calls
    assert any("systemctl disable exited with 1; continuing" in line for line in lines)
    assert lines[-1] == "done"


def test_cuda_layer_matches_the_jetpack() -> None:
    from endoedge.edge.box.install import Platform, cuda_requirement

    assert cuda_requirement(Platform("R36.4.3", "JetPack 6", "10.3.0.30", "3.10.12")) == "cuda-python>=12.6,<13"
    assert cuda_requirement(Platform("R38.2.0", "JetPack 7", "10.13.3", "3.12.3")) == "cuda-python>=13,<14"
    assert cuda_requirement(Platform("R36.4.3", "JetPack 6", None, "3.10.12")) is None  # no TensorRT
    assert cuda_requirement(Platform(None, None, None, "3.11.2")) is None  # not a Jetson


def test_network_drop_in_follows_the_config(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _, lines = _install(root)
    dropin = root / "etc/systemd/system/endoedge.service.d/network.conf"
    assert not dropin.exists() and "    localhost only (the unit's default)" in lines
    config = root / "etc/endoedge/config.yaml"
    default = config.read_text()
    config.write_text(
        default.replace("v4l2:///dev/video0", "rtsp://user:secret@192.168.10.20:554/stream")
        .replace("host: 127.0.0.1", "host: 0.0.0.0\n  token: 0123456789abcdef0123")
    )  # fmt: skip
    _install(root)
    text = dropin.read_text()
    assert "[Service]\nIPAddressAllow=192.168.10.20\nIPAddressAllow=link-local\n" in text
    assert "IPAddressAllow=192.168.0.0/16" in text and "secret" not in text
    config.write_text(default)  # back to a local-only config: the drop-in goes away
    _install(root)
    assert not dropin.exists()


def test_network_allowlist() -> None:
    from endoedge.edge.box.install import network_allowlist

    assert network_allowlist({}) == ([], [])
    assert network_allowlist({"source": {"uri": "rtsp://[fd00::5]/s"}})[0] == ["fd00::5"]
    allowed, notes = network_allowlist({"source": {"uri": "rtsp://camera.local/s"}, "status": {"host": "10.1.2.3"}})
    assert allowed == ["any"] and "replace 'any' by its IP address" in notes[0]
    assert network_allowlist({"status": {"host": "0.0.0.0", "enabled": False}}) == ([], [])
