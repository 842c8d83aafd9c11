"""Install endoedge as a systemd service on a Jetson (or any Linux box), idempotently.

What goes where (target paths; ``--prefix DIR`` puts the same tree under ``DIR`` instead of ``/``)::

    /opt/endoedge/venv/                 virtualenv (--system-site-packages: JetPack's tensorrt, python3-gi)
    /opt/endoedge/README.md             the technician's guide (systemd/README.md)
    /opt/endoedge/uninstall.sh
    /etc/endoedge/config.yaml           daemon config; an edited one is kept, the new default goes to .new
    /etc/systemd/system/endoedge.service
    /var/lib/endoedge/bundles/          bundle store: versions side by side, ``current`` symlink
    /var/lib/endoedge/reports/          procedure reports (kept by uninstall unless --purge)
    /var/lib/endoedge/state/            exam checkpoints
    /var/lib/endoedge/install.json      what the installer last wrote (to tell edited files from old defaults)
    /var/cache/endoedge/                TensorRT engines and timing cache

Every step says what it does (``--dry-run`` only says it) and changes nothing when the box is already
in the wanted state, so running the installer twice is safe. Under ``--prefix`` the steps that touch
the running system (user creation, ownership, ``systemctl``) are printed instead of run.

This module imports only the standard library (and :mod:`endoedge.core.errors`) so ``install.sh`` can
run it with the system Python before any dependency is installed; work that needs the installed
package (bundle install, engine build) runs in the new virtualenv's Python.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from endoedge.core.errors import EndoedgeError

MIN_PYTHON = (3, 10)
SERVICE = "endoedge"
USER = "endoedge"
VENV = Path("/opt/endoedge/venv")
SHARE = Path("/opt/endoedge")
CONFIG_DIR = Path("/etc/endoedge")
CONFIG = CONFIG_DIR / "config.yaml"
UNIT = Path("/etc/systemd/system/endoedge.service")
NETWORK_DROPIN = Path("/etc/systemd/system/endoedge.service.d/network.conf")
#: Where status clients come from when the status page listens beyond loopback: the local networks.
LOCAL_NETWORKS = ("link-local", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
STATE_DIR = Path("/var/lib/endoedge")
BUNDLES = STATE_DIR / "bundles"
REPORTS = STATE_DIR / "reports"
EXAM_STATE = STATE_DIR / "state"
CACHE = Path("/var/cache/endoedge")
INSTALL_RECORD = STATE_DIR / "install.json"
DEFAULT_BUNDLE = Path("export/bundles/gastrovision3-efficientnet-lite0")
#: L4T major release → JetPack generation and the Python it ships.
JETPACK = {32: ("JetPack 4", "3.6"), 35: ("JetPack 5", "3.8"), 36: ("JetPack 6", "3.10"), 38: ("JetPack 7", "3.12")}


class InstallError(EndoedgeError):
    """The installer cannot continue (unsupported platform, missing source, a failed command)."""


# -- platform detection ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Platform:
    """What the installer found on the box.

    Attributes:
        l4t: L4T release like ``R36.4.3`` (``None`` when not a Jetson).
        jetpack: ``JetPack 6`` etc. (``None`` when unknown).
        tensorrt: TensorRT version from the dpkg database (``None`` when not installed).
        python: ``major.minor.micro`` of the Python the venv is made from.
        model: Jetson module name from the device tree (``None`` when unknown).
    """

    l4t: str | None
    jetpack: str | None
    tensorrt: str | None
    python: str
    model: str | None = None

    @property
    def is_jetson(self) -> bool:
        """True when ``/etc/nv_tegra_release`` was found."""
        return self.l4t is not None

    def lines(self) -> list[str]:
        """Human summary, one fact per line."""
        return [
            f"platform: {self.model or ('Jetson' if self.is_jetson else 'not a Jetson (no /etc/nv_tegra_release)')}",
            f"L4T: {self.l4t or '-'}   JetPack: {self.jetpack or '-'}",
            f"TensorRT: {self.tensorrt or 'not installed (TensorRT backend unavailable; ONNX Runtime/LiteRT used)'}",
            f"Python for the venv: {self.python}",
        ]


def parse_l4t(text: str) -> tuple[int, str] | None:
    """``(major, "R36.4.3")`` from ``/etc/nv_tegra_release`` (``# R36 (release), REVISION: 4.3, ...``)."""
    match = re.search(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([0-9.]+)", text)
    if not match:
        return None
    return int(match.group(1)), f"R{match.group(1)}.{match.group(2).strip('.')}"


def dpkg_version(status_text: str, packages: Sequence[str]) -> str | None:
    """Version of the first installed package of ``packages`` in a dpkg ``status`` file."""
    found: dict[str, str] = {}
    for stanza in status_text.split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, flags=re.MULTILINE))
        if fields.get("Package") in packages and "installed" in fields.get("Status", "").split():
            found[fields["Package"]] = fields.get("Version", "")
    for name in packages:
        if found.get(name):
            return found[name].split("-")[0].split("+")[0]
    return None


def python_version(python: str) -> str:
    """``major.minor.micro`` of an interpreter."""
    try:
        done = subprocess.run(
            [python, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise InstallError(f"cannot run {python}: {exc}") from None
    return done.stdout.strip()


def detect_platform(root: Path, python: str) -> Platform:
    """Read L4T, TensorRT and the Jetson model from files under ``root``, and ask ``python`` its version."""
    l4t = jetpack = model = None
    release = root / "etc/nv_tegra_release"
    if release.is_file():
        parsed = parse_l4t(release.read_text(errors="replace"))
        if parsed is not None:
            major, l4t = parsed
            jetpack = JETPACK.get(major, (f"JetPack for L4T R{major}", ""))[0]
        else:
            l4t = "unknown"
    model_file = root / "proc/device-tree/model"
    if model_file.is_file():
        model = model_file.read_bytes().rstrip(b"\0").decode(errors="replace").strip() or None
    tensorrt = None
    status = root / "var/lib/dpkg/status"
    if status.is_file():
        tensorrt = dpkg_version(
            status.read_text(errors="replace"), ("tensorrt", "libnvinfer10", "libnvinfer8", "python3-libnvinfer")
        )
    return Platform(l4t, jetpack, tensorrt, python_version(python), model)


def cuda_requirement(platform: Platform | None) -> str | None:
    """The cuda-python matching the box's CUDA major version (JetPack 6: CUDA 12; JetPack 7: CUDA 13)."""
    if platform is None or not platform.is_jetson or not platform.tensorrt:
        return None
    return {"JetPack 6": "cuda-python>=12.6,<13", "JetPack 7": "cuda-python>=13,<14"}.get(platform.jetpack or "")


def network_allowlist(config: dict[str, object]) -> tuple[list[str], list[str]]:
    """``IPAddressAllow=`` entries (besides localhost) a daemon config needs, and notes explaining them.

    An ``rtsp://`` source needs its camera: its IP address, or ``any`` when it is a host name (the
    unit cannot follow DNS; put the camera's address in a drop-in). A status page listening beyond
    loopback needs its clients: the local (private and link-local) networks.
    """
    import ipaddress
    from urllib.parse import urlsplit

    allowed: list[str] = []
    notes: list[str] = []
    source = config.get("source")
    uri = str(source.get("uri", "")) if isinstance(source, dict) else ""
    if uri.startswith("rtsp://"):
        host = urlsplit(uri).hostname or ""
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            allowed.append("any")
            notes.append(f"RTSP camera {host!r} is a host name: replace 'any' by its IP address")
        else:
            allowed.append(str(address))
            notes.append(f"RTSP camera {address}")
    status = config.get("status")
    if isinstance(status, dict) and status.get("enabled", True):
        host = str(status.get("host", "127.0.0.1"))
        if host not in ("127.0.0.1", "localhost", "::1", ""):
            allowed += [n for n in LOCAL_NETWORKS if n not in allowed]
            notes.append(f"status page on {host}: clients on the local networks")
    return (["any"] if "any" in allowed else allowed), notes


def check_supported(platform: Platform) -> list[str]:
    """Refuse what cannot work; return warnings for what works with limits.

    Raises:
        InstallError: Python older than 3.10 (JetPack 5's 3.8 included), with what to do instead.
    """
    parts = tuple(int(p) for p in platform.python.split(".")[:2])
    if parts < MIN_PYTHON:
        where = f" ({platform.jetpack} ships Python {platform.python[:3]})" if platform.jetpack else ""
        raise InstallError(
            f"Python {platform.python}{where} is not supported: endoedge needs Python >= 3.10. "
            "Upgrade to JetPack 6 (L4T R36, Python 3.10), or pass --python with a Python >= 3.10 "
            "(JetPack 5's TensorRT bindings are built for 3.8 and will not be usable from it)"
        )
    warnings = []
    if platform.jetpack == "JetPack 5":
        warnings.append(
            "JetPack 5: its TensorRT Python bindings are for Python 3.8, so this venv cannot use them; "
            "the ONNX Runtime/LiteRT backends will run instead. Upgrade to JetPack 6 for TensorRT"
        )
    return warnings


# -- steps ------------------------------------------------------------------------------------------


@dataclass
class InstallOptions:
    """Installer settings (see ``endoedge install --help``).

    Attributes:
        root: Install into this folder as if it were ``/`` (``--prefix``/``DESTDIR``).
        source: The endoedge source tree (holds ``systemd/`` and ``pyproject.toml``).
        wheel: Install this wheel instead of the source tree.
        bundle: Bundle to install (``None``: the source tree's demo bundle when present).
        no_bundle: Install no bundle (keep the store as it is).
        python: Interpreter the venv is made from.
        use_venv: Use this existing environment instead of making one (development boxes and tests).
        defer_engine_build: Leave the TensorRT engine build to the service's first start.
        dry_run: Print every step, change nothing.
        start: Start (or restart) the service at the end.
        pip_args: Extra ``pip install`` arguments (e.g. ``--no-index --find-links DIR`` offline).
        constraints: A pip constraints file (pinned versions) to install with.
        env: Extra environment for the commands run in the venv.
    """

    root: Path = Path("/")
    source: Path | None = None
    wheel: Path | None = None
    bundle: Path | None = None
    no_bundle: bool = False
    python: str = "/usr/bin/python3"
    use_venv: Path | None = None
    defer_engine_build: bool = False
    dry_run: bool = False
    start: bool = True
    pip_args: list[str] = field(default_factory=list)
    constraints: Path | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def staged(self) -> bool:
        """True when installing into a folder other than ``/`` (nothing on the running system is touched)."""
        return self.root.resolve() != Path("/")


class Installer:
    """Runs the install (or uninstall) steps, printing each.

    Args:
        options: What to install and where.
        out: Where progress lines go (default: stdout).
        run: Runs a command (argv) and returns its exit code; injectable for tests of the real-root
            paths (user creation, systemctl) that cannot run here.
    """

    def __init__(
        self,
        options: InstallOptions,
        out: Callable[[str], None] = print,
        run: Callable[[list[str], dict[str, str] | None], int] | None = None,
    ) -> None:
        self.o = options
        self.out = out
        self._run = run or _run_command
        self.changed: list[str] = []
        self.record: dict[str, str] = {}

    # -- helpers -----------------------------------------------------------------------------------
    def path(self, target: Path) -> Path:
        """Where a target path lives under the install root."""
        return self.o.root / target.relative_to("/")

    def say(self, text: str) -> None:
        """Print one progress line."""
        self.out(text)

    def command(
        self, argv: list[str], what: str, env: dict[str, str] | None = None, system: bool = False, check: bool = True
    ) -> None:
        """Run a command (printed; only printed under --dry-run, and for system commands under --prefix).

        Raises:
            InstallError: It failed and ``check`` is set.
        """
        line = " ".join(shlex.quote(a) for a in argv)
        if self.o.dry_run or (system and self.o.staged):
            reason = "dry run" if self.o.dry_run else "--prefix"
            self.say(f"    would run ({reason}): {line}")
            return
        self.say(f"    $ {line}")
        code = self._run(argv, env)
        if code != 0 and not check:
            self.say(f"    ({what} exited with {code}; continuing)")
        elif code != 0:
            raise InstallError(f"{what} failed (exit code {code}): {line}")

    def write_file(self, target: Path, data: bytes, mode: int = 0o644) -> bool:
        """Write a file under the root if its content or mode differ; True when it changed."""
        dest = self.path(target)
        if dest.is_file() and dest.read_bytes() == data and (dest.stat().st_mode & 0o777) == mode:
            return False
        if self.o.dry_run:
            self.say(f"    would write {target}")
            return True
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.chmod(tmp, mode)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.say(f"    wrote {target}")
        self.changed.append(str(target))
        return True

    def venv_python(self) -> Path:
        """The Python of the environment endoedge runs in (as a path under the root)."""
        if self.o.use_venv is not None:
            return self.o.use_venv / "bin" / "python"
        return self.path(VENV) / "bin" / "python"

    # -- the install -------------------------------------------------------------------------------
    def install(self) -> Platform:
        """Run every install step.

        Raises:
            InstallError: Unsupported platform, missing source tree, or a failed step.
        """
        source = self._source()
        self.say(f"endoedge installer: {'dry run, ' if self.o.dry_run else ''}root {self.o.root}, source {source}")
        platform = detect_platform(self.o.root, self.o.python)
        for line in platform.lines():
            self.say(f"  {line}")
        for warning in check_supported(platform):
            self.say(f"  warning: {warning}")
        self._previous = self._read_record()
        self.step_user(platform)
        self.step_directories()
        self.step_venv(source, platform)
        self.step_config(source)
        self.step_service_files(source)
        self.step_network()
        bundle = self.step_bundle(source)
        self.step_engine(platform, bundle)
        self.step_record()
        self.step_systemctl(bundle)
        self.say(
            "done: " + (f"{len(self.changed)} change(s)" if self.changed else "nothing changed (already installed)")
        )
        return platform

    def _source(self) -> Path:
        source = self.o.source or Path(__file__).resolve().parents[4]
        if not (source / "systemd" / "endoedge.service").is_file() or not (source / "pyproject.toml").is_file():
            raise InstallError(
                "run the installer from the endoedge source tree (systemd/install.sh) or pass --source DIR", source
            )
        return source

    def _read_record(self) -> dict[str, str]:
        try:
            data = json.loads(self.path(INSTALL_RECORD).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def step_user(self, platform: Platform) -> None:
        """System user ``endoedge`` (no login, no home) in the ``video`` (and ``render``) group."""
        self.say(f"==> system user {USER} (groups video, render)")
        groups = "video,render" if _group_exists(self.o.root, "render") else "video"
        if self.o.staged or self.o.dry_run:
            self.command(
                ["useradd", "--system", "--user-group", "--home-dir", str(STATE_DIR), "--no-create-home",
                 "--shell", "/usr/sbin/nologin", "--groups", groups, USER],
                "useradd", system=True,
            )  # fmt: skip
            return
        if _user_exists(USER):
            self.command(["usermod", "--append", "--groups", groups, USER], "usermod", system=True)
        else:
            self.command(
                ["useradd", "--system", "--user-group", "--home-dir", str(STATE_DIR), "--no-create-home",
                 "--shell", "/usr/sbin/nologin", "--groups", groups, USER],
                "useradd", system=True,
            )  # fmt: skip
            self.changed.append(f"user {USER}")

    def step_directories(self) -> None:
        """Folders with their owners and modes; the service writes only reports, state and cache."""
        self.say("==> folders")
        layout = [
            (CONFIG_DIR, 0o755, False),
            (SHARE, 0o755, False),
            (STATE_DIR, 0o755, False),
            (BUNDLES, 0o755, False),
            (REPORTS, 0o750, True),
            (EXAM_STATE, 0o750, True),
            (CACHE, 0o750, True),
        ]
        for target, mode, service_owned in layout:
            dest = self.path(target)
            if dest.is_dir() and (dest.stat().st_mode & 0o777) == mode:
                pass
            elif self.o.dry_run:
                self.say(f"    would create {target} (mode {mode:o})")
            else:
                dest.mkdir(parents=True, exist_ok=True)
                os.chmod(dest, mode)
                self.say(f"    {target} (mode {mode:o})")
                self.changed.append(str(target))
            if service_owned:
                self.command(["chown", f"{USER}:{USER}", str(target)], "chown", system=True)

    def step_venv(self, source: Path, platform: Platform | None = None) -> None:
        """The virtualenv with endoedge[edge] (and the CUDA layer on a Jetson); skipped when unchanged."""
        self.say(f"==> virtualenv {VENV} (--system-site-packages: JetPack's tensorrt and python3-gi)")
        if self.o.use_venv is not None:
            self.say(f"    using the existing environment {self.o.use_venv} (--use-venv): nothing installed")
            if not self.venv_python().exists():
                raise InstallError("no bin/python in the --use-venv environment", self.o.use_venv)
            return
        digest = self._package_digest(source)
        stamp = self.path(VENV) / ".endoedge-install.json"
        python = self.venv_python()
        try:
            installed = json.loads(stamp.read_text())["digest"] if python.exists() else None
        except (OSError, ValueError, KeyError):
            installed = None
        if installed == digest:
            self.say("    unchanged (same endoedge already installed)")
            return
        if not python.exists():
            if not self.o.dry_run and subprocess.run([self.o.python, "-c", "import ensurepip"]).returncode != 0:
                raise InstallError(f"{self.o.python} cannot create virtualenvs: sudo apt install python3-venv")
            self.command([self.o.python, "-m", "venv", "--system-site-packages", str(self.path(VENV))], "venv")
        package = str(self.o.wheel or source)
        what = f"{package}[edge]"
        pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--upgrade", what]
        cuda = cuda_requirement(platform)
        if cuda is not None:
            pip.append(cuda)  # device buffers for the TensorRT backend (pycuda rarely builds on a Jetson)
        if self.o.constraints is not None:
            # Not by default: the repository's constraints.txt pins what was tested on x86_64 with Python
            # 3.11 (numpy 2.4 has no Python 3.10 wheel, and JetPack 6 has Python 3.10).
            pip[4:4] = ["--constraint", str(self.o.constraints)]
        self.command(pip + list(self.o.pip_args), "pip install")
        # pip keeps an installed endoedge of the same version number; a changed tree must replace it.
        reinstall = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--force-reinstall"]
        self.command([*reinstall, "--no-deps", package, *self.o.pip_args], "pip install (endoedge itself)")
        if not self.o.dry_run:
            stamp.write_text(json.dumps({"digest": digest, "from": what}) + "\n")
            self.changed.append(str(VENV))

    def _package_digest(self, source: Path) -> str:
        """Identity of what pip would install: the wheel's sha256, or the source files' digest."""
        digest = hashlib.sha256()
        if self.o.wheel is not None:
            digest.update(self.o.wheel.read_bytes())
            return digest.hexdigest()
        files = [source / "pyproject.toml", *sorted((source / "src" / "endoedge").rglob("*"))]
        for file in files:
            if file.is_file() and "__pycache__" not in file.parts:
                digest.update(file.relative_to(source).as_posix().encode() + b"\0" + file.read_bytes())
        digest.update(" ".join(self.o.pip_args).encode())
        return digest.hexdigest()

    def step_config(self, source: Path) -> None:
        """``/etc/endoedge/config.yaml``: written when absent, updated when unedited, else ``.new`` beside it."""
        self.say(f"==> config {CONFIG}")
        template = (source / "systemd" / "config.yaml").read_bytes()
        new_sha = _sha(template)
        dest = self.path(CONFIG)
        self.record["config_sha256"] = new_sha
        if not dest.is_file():
            self.write_file(CONFIG, template)
            return
        current = _sha(dest.read_bytes())
        if current == new_sha:
            self.say("    unchanged")
        elif current == self._previous.get("config_sha256"):
            self.say("    updating the unedited config to the new default")
            self.write_file(CONFIG, template)
        else:
            self.record["config_sha256"] = self._previous.get("config_sha256", "")
            if self.write_file(CONFIG.with_name("config.yaml.new"), template):
                self.say(
                    f"    kept your edited {CONFIG}; the new default is {CONFIG}.new "
                    f"(compare: diff {CONFIG} {CONFIG}.new)"
                )
            else:
                self.say(f"    kept your edited config ({CONFIG}.new is already the new default)")

    def step_service_files(self, source: Path) -> None:
        """The unit file (paths adjusted to the venv), the guide and the uninstaller in /opt/endoedge."""
        self.say(f"==> service files ({UNIT})")
        unit = (source / "systemd" / "endoedge.service").read_text()
        if self.o.use_venv is not None and not self.o.staged:
            unit = unit.replace(str(VENV), str(self.o.use_venv))
        changed = self.write_file(UNIT, unit.encode())
        self.record["unit_sha256"] = _sha(unit.encode())
        changed |= self.write_file(SHARE / "README.md", (source / "systemd" / "README.md").read_bytes())
        changed |= self.write_file(SHARE / "uninstall.sh", (source / "systemd" / "uninstall.sh").read_bytes(), 0o755)
        if not changed:
            self.say("    unchanged")

    def step_network(self) -> None:
        """Open the unit's ``IPAddressAllow=localhost`` for what the config needs: an RTSP camera, a status
        page listening beyond loopback. Written as a drop-in, removed again when no longer needed."""
        self.say(f"==> network access ({NETWORK_DROPIN.parent.name}/{NETWORK_DROPIN.name})")
        dest = self.path(NETWORK_DROPIN)
        if self.o.dry_run and not (self.path(CONFIG).is_file() and self.venv_python().exists()):
            self.say("    would derive IPAddressAllow= from the config")
            return
        allowed, notes = network_allowlist(self._config_data())
        if not allowed:
            if dest.exists():
                self._remove(NETWORK_DROPIN)
            else:
                self.say("    localhost only (the unit's default)")
            return
        text = "# Written by 'endoedge install' from /etc/endoedge/config.yaml; rerun it after changing the\n"
        text += "# source or status address (or edit a drop-in of your own: systemctl edit endoedge).\n"
        text += "".join(f"# {note}\n" for note in notes)
        text += "[Service]\n" + "".join(f"IPAddressAllow={entry}\n" for entry in allowed)
        if not self.write_file(NETWORK_DROPIN, text.encode()):
            self.say(f"    unchanged: {' '.join(allowed)}")

    def _config_data(self) -> dict[str, object]:
        """The installed config as plain data (parsed by the venv's PyYAML: this module is stdlib-only)."""
        code = "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1])) or {}))"
        done = subprocess.run(
            [str(self.venv_python()), "-c", code, str(self.path(CONFIG))],
            capture_output=True,
            text=True,
            env=_clean_env(self.o.env),
        )
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise InstallError(f"cannot read the config: {last}", CONFIG)
        data = json.loads(done.stdout)
        return data if isinstance(data, dict) else {}

    def step_bundle(self, source: Path) -> Path | None:
        """Install the bundle into the store and make it current (nothing changes when it already is)."""
        bundle = self.o.bundle
        if bundle is None and not self.o.no_bundle:
            bundle = source / DEFAULT_BUNDLE if (source / DEFAULT_BUNDLE / "manifest.json").is_file() else None
        if self.o.no_bundle:
            self.say("==> bundle: none (--no-bundle); the store is left as it is")
            return None
        if bundle is None:
            self.say("==> bundle: none given and no demo bundle in the source tree (install one later with")
            self.say("    'sudo /opt/endoedge/venv/bin/endoedge bundle install BUNDLE')")
            return None
        self.say(f"==> bundle {bundle} -> {BUNDLES}/current")
        code = (
            "import sys; from endoedge.edge.box.bundle_store import install_bundle, current_bundle\n"
            "before = None\n"
            "try:\n    before = current_bundle(sys.argv[2])\nexcept Exception:\n    pass\n"
            "after = install_bundle(sys.argv[1], sys.argv[2]).resolve()\n"
            "print(('unchanged: ' if before == after else 'installed: ') + after.name)\n"
        )
        if self.o.dry_run:
            self.command([str(self.venv_python()), "-c", "install_bundle(...)", str(bundle), str(BUNDLES)], "bundle")
            return bundle
        self.say(f"    $ {self.venv_python()} -c 'install_bundle({bundle}, {BUNDLES})'")
        done = subprocess.run(
            [str(self.venv_python()), "-c", code, str(bundle), str(self.path(BUNDLES))],
            capture_output=True,
            text=True,
            env=_clean_env(self.o.env),
        )
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise InstallError(f"bundle install failed: {last}", bundle)
        self.say(f"    {done.stdout.strip()}")
        if done.stdout.startswith("installed"):
            self.changed.append(str(BUNDLES / "current"))
        return bundle

    def step_engine(self, platform: Platform, bundle: Path | None) -> None:
        """Build the TensorRT engine now (with progress), or leave it to the service's first start."""
        self.say("==> TensorRT engine")
        if self.o.defer_engine_build:
            self.say("    deferred (--defer-engine-build): the service builds it at its first start (ExecStartPre)")
            return
        if bundle is None and not self.path(BUNDLES / "current").exists():
            self.say("    skipped: no bundle installed")
            return
        argv = [str(self.venv_python()), "-m", "endoedge.cli", "install", "engine", "--config", str(self.path(CONFIG))]
        argv += ["--skip-without-tensorrt"]
        if self.o.staged:
            argv += ["--root", str(self.o.root)]
        elif not self.o.dry_run and os.geteuid() == 0:
            # Built as the service user so the cache files belong to it.
            argv = ["runuser", "-u", USER, "--", *argv]
        # CUDA's JIT cache would go to the service user's (read-only) home, as in the unit.
        env = {"CUDA_CACHE_PATH": str(self.path(CACHE / "cuda")), **self.o.env}
        self.command(argv, "engine build (see the lines above; README: 'When the engine build fails')", env)

    def step_record(self) -> None:
        """Remember what was installed, to tell an edited config from an old default next time."""
        data = json.dumps(dict(sorted({**self._previous, **self.record}.items())), indent=2) + "\n"
        if self.o.dry_run:
            return
        if self.write_file(INSTALL_RECORD, data.encode()):
            self.changed.remove(str(INSTALL_RECORD))  # bookkeeping, not a change the user asked for

    def step_systemctl(self, bundle: Path | None) -> None:
        """Reload systemd, enable the service at boot and (re)start it."""
        self.say("==> systemd")
        self.command(["systemctl", "daemon-reload"], "systemctl daemon-reload", system=True)
        self.command(["systemctl", "enable", SERVICE], "systemctl enable", system=True)
        have_bundle = bundle is not None or self.path(BUNDLES / "current").exists()
        if self.o.start and have_bundle:
            self.command(["systemctl", "restart", SERVICE], "systemctl restart", system=True)
            if not self.o.staged and not self.o.dry_run:
                self.say("    follow it with: journalctl -u endoedge -f")
        elif self.o.start:
            self.say("    not started: install a bundle first, then 'sudo systemctl start endoedge'")

    # -- uninstall ---------------------------------------------------------------------------------
    def uninstall(self, purge: bool = False) -> None:
        """Stop and remove the service and the venv; keep config, bundles, reports and cache unless ``purge``."""
        self.say(f"endoedge uninstaller: {'dry run, ' if self.o.dry_run else ''}root {self.o.root}")
        self.say("==> service")
        # Tolerated: the service may already be gone (a half-finished earlier uninstall).
        self.command(["systemctl", "disable", "--now", SERVICE], "systemctl disable", system=True, check=False)
        self._remove(UNIT)
        self._remove(NETWORK_DROPIN.parent)
        self.command(["systemctl", "daemon-reload"], "systemctl daemon-reload", system=True)
        self.say("==> program")
        self._remove(SHARE)
        if purge:
            self.say("==> data (--purge): config, bundles, reports, exam state, engine cache, user")
            for target in (CONFIG_DIR, STATE_DIR, CACHE):
                self._remove(target)
            self.command(["userdel", USER], "userdel", system=True, check=False)
        else:
            self.say(f"    kept: {CONFIG_DIR}, {BUNDLES}, {REPORTS}, {EXAM_STATE}, {CACHE} (remove with --purge)")
        self.say("done")

    def _remove(self, target: Path) -> None:
        dest = self.path(target)
        if not dest.exists() and not dest.is_symlink():
            return
        if self.o.dry_run:
            self.say(f"    would remove {target}")
            return
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        else:
            dest.unlink()
        self.say(f"    removed {target}")
        self.changed.append(str(target))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _group_exists(root: Path, name: str) -> bool:
    try:
        text = (root / "etc/group").read_text(errors="replace")
    except OSError:
        return False
    return any(line.split(":", 1)[0] == name for line in text.splitlines())


def _run_command(argv: list[str], env: dict[str, str] | None) -> int:
    sys.stdout.flush()
    return subprocess.run(argv, env=_clean_env(env)).returncode


def _clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for commands: without the PYTHONPATH install.sh set to run this module from the
    source tree (pip would take that tree for an installed endoedge), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, **(extra or {})}


def tree_digest(root: Path) -> str:
    """sha256 over every path, file content, mode and symlink target below ``root`` (idempotency checks)."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        digest.update(f"{path.relative_to(root).as_posix()}\0{info.st_mode:o}\0".encode())
        if path.is_symlink():
            digest.update(os.readlink(path).encode())
        elif path.is_file():
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()
