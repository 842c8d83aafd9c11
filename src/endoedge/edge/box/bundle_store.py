"""The bundle store on the box: bundles side by side, an atomic ``current`` switch, and rollback.

Layout (``/var/lib/endoedge/bundles`` on a Jetson)::

    bundles/
      versions/gastrovision3-efficientnet-lite0-3f2a9c81d0e4/   one folder per installed bundle
      versions/gastrovision3-efficientnet-lite0-a81b44e0c2f7/
      current  -> versions/gastrovision3-efficientnet-lite0-a81b44e0c2f7
      previous -> versions/gastrovision3-efficientnet-lite0-3f2a9c81d0e4
      history.json                                      what was activated, when and how
      .lock

A version's folder name is the bundle name plus the first 12 hex digits of the sha256 of its
``manifest.json``; the manifest lists the sha256 of every file, so the name identifies the content.
Installing copies and verifies the bundle in a temporary folder that is renamed into place, then swaps
the ``current`` symlink with ``rename(2)``: the daemon (which opens ``bundles/current``) sees either the
old bundle or the new one, never a half-copied one. The old bundle stays as ``previous`` for
:func:`rollback`. Older versions beyond ``keep`` are pruned, never ``current`` or ``previous``.

The daemon reads its bundle once at start, so the service is restarted after a switch
(``sudo systemctl restart endoedge``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from endoedge.core.bundle import open_bundle
from endoedge.core.errors import BundleError
from endoedge.core.fileio import atomic_directory, atomic_write_json, sha256_file
from endoedge.core.manifest import MANIFEST_NAME

VERSIONS_DIR = "versions"
CURRENT = "current"
PREVIOUS = "previous"
HISTORY = "history.json"
LOCK = ".lock"
#: Installed versions kept besides ``current`` and ``previous`` are pruned beyond this count.
DEFAULT_KEEP = 3
_HISTORY_LIMIT = 200


@dataclass(frozen=True)
class StoredBundle:
    """One installed bundle version.

    Attributes:
        version: Folder name under ``versions/`` (``<name>-<manifest sha256[:12]>``).
        path: The folder.
        name: The model name from its manifest.
        current: True when ``current`` points at it.
        previous: True when ``previous`` points at it.
    """

    version: str
    path: Path
    name: str
    current: bool
    previous: bool


def version_id(bundle_dir: str | Path, name: str) -> str:
    """The folder name of a bundle in the store: its safe name plus 12 hex digits of its manifest's sha256."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "bundle"
    return f"{safe[:64]}-{sha256_file(Path(bundle_dir) / MANIFEST_NAME)[:12]}"


@contextlib.contextmanager
def _locked(store: Path) -> Iterator[None]:
    """Serialise installs and rollbacks (two technicians, or an install racing a rollback)."""
    store.mkdir(parents=True, exist_ok=True)
    with open(store / LOCK, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _link_target(store: Path, link: str) -> Path | None:
    """The version folder a store symlink points at, or ``None`` when absent or dangling."""
    path = store / link
    if not path.is_symlink():
        return None
    target = (store / os.readlink(path)).resolve()
    return target if target.is_dir() else None


def _switch_link(store: Path, link: str, version: str) -> None:
    """Point ``store/link`` at ``versions/version`` atomically (new symlink, then ``rename`` over the old)."""
    tmp = store / f".{link}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(f"{VERSIONS_DIR}/{version}", tmp)
    os.replace(tmp, store / link)
    _fsync_dir(store)


def _fsync_dir(path: Path) -> None:
    """Make a rename durable across a power cut (the box is switched off at the wall)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_history(store: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads((store / HISTORY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [entry for entry in data if isinstance(entry, dict)] if isinstance(data, list) else []


def _record(store: Path, action: str, version: str, source: str = "") -> None:
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "action": action, "version": version}
    if source:
        entry["source"] = source
    atomic_write_json(store / HISTORY, [*_read_history(store), entry][-_HISTORY_LIMIT:])
    os.chmod(store / HISTORY, 0o644)  # atomic writes create 0600 files; technicians read it without sudo


def install_bundle(src: str | Path, store_dir: str | Path, activate: bool = True, keep: int = DEFAULT_KEEP) -> Path:
    """Install a bundle beside the others and make it ``current``.

    The source (folder, ``manifest.json`` or ``.tar``) is verified, copied into a temporary folder,
    verified again there and renamed into ``versions/``; then ``current`` is switched atomically and the
    version it pointed at becomes ``previous``. Installing a bundle that is already current changes
    nothing.

    Args:
        src: The bundle to install.
        store_dir: The store folder (``/var/lib/endoedge/bundles``).
        activate: Switch ``current`` to it (False only copies it in).
        keep: Versions kept besides ``current`` and ``previous``; older ones are removed.

    Returns:
        The installed version's folder.

    Raises:
        BundleError: The source is not a valid bundle or a file's checksum is wrong.
    """
    store = Path(store_dir)
    bundle = open_bundle(src)
    version = version_id(bundle.path, bundle.manifest.name)
    target = store / VERSIONS_DIR / version
    with _locked(store):
        if not target.is_dir():
            with atomic_directory(target) as tmp:
                for item in sorted(bundle.path.iterdir()):
                    if item.name.startswith("."):
                        continue
                    if item.is_dir():
                        shutil.copytree(item, tmp / item.name, symlinks=False)
                    else:
                        shutil.copy2(item, tmp / item.name)
                open_bundle(tmp)  # the copy itself must verify before it is renamed into place
                _make_readable(tmp)
        else:
            open_bundle(target)  # an installed copy that was tampered with is refused, not reused
        if activate and _link_target(store, CURRENT) != target.resolve():
            old = _link_target(store, CURRENT)
            if old is not None:
                _switch_link(store, PREVIOUS, old.name)
            _switch_link(store, CURRENT, version)
            _record(store, "install", version, str(src))
        _prune(store, keep)
    return target


def _make_readable(folder: Path) -> None:
    """Folders 0755, files 0644: the service user must read bundles that root installed.

    Bundles written with atomic writes (and ``mkdtemp``) carry 0600/0700 modes, which ``copy2`` keeps.
    """
    os.chmod(folder, 0o755)
    for path in folder.rglob("*"):
        if not path.is_symlink():
            os.chmod(path, 0o755 if path.is_dir() else 0o644)


def rollback(store_dir: str | Path) -> Path:
    """Switch ``current`` back to ``previous`` (and ``previous`` to what was current).

    Rolling back twice returns to where you started. The previous bundle is verified before the switch.

    Returns:
        The folder that is now current.

    Raises:
        BundleError: There is no previous bundle, or it no longer verifies.
    """
    store = Path(store_dir)
    with _locked(store):
        previous = _link_target(store, PREVIOUS)
        if previous is None:
            raise BundleError("no previous bundle to roll back to", store / PREVIOUS)
        open_bundle(previous)
        current = _link_target(store, CURRENT)
        # ``current`` first: if power fails between the two renames, current is already the
        # rolled-back bundle and ``previous`` still points at a valid one.
        _switch_link(store, CURRENT, previous.name)
        if current is not None:
            _switch_link(store, PREVIOUS, current.name)
        _record(store, "rollback", previous.name)
    return previous


def current_bundle(store_dir: str | Path) -> Path:
    """The folder ``current`` points at.

    Raises:
        BundleError: No bundle has been installed (or the link is dangling).
    """
    store = Path(store_dir)
    target = _link_target(store, CURRENT)
    if target is None:
        raise BundleError("no current bundle: install one with 'endoedge bundle install BUNDLE'", store / CURRENT)
    return target


def list_bundles(store_dir: str | Path) -> list[StoredBundle]:
    """Installed versions, newest first (by install time)."""
    store = Path(store_dir)
    current = _link_target(store, CURRENT)
    previous = _link_target(store, PREVIOUS)
    versions = store / VERSIONS_DIR
    if not versions.is_dir():
        return []
    found = []
    for folder in sorted(versions.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True):
        if folder.name.startswith(".") or not folder.is_dir():
            continue
        try:
            name = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8")).get("name", "?")
        except (OSError, ValueError, AttributeError):
            name = "?"
        resolved = folder.resolve()
        found.append(StoredBundle(folder.name, folder, str(name), resolved == current, resolved == previous))
    return found


def history(store_dir: str | Path) -> list[dict[str, Any]]:
    """The activation log (oldest first): ``time``, ``action`` (install/rollback), ``version``, ``source``."""
    return _read_history(Path(store_dir))


def _prune(store: Path, keep: int) -> None:
    protected = {p for p in (_link_target(store, CURRENT), _link_target(store, PREVIOUS)) if p is not None}
    spare = [b for b in list_bundles(store) if b.path.resolve() not in protected]
    for old in spare[max(keep, 0) :]:
        shutil.rmtree(old.path, ignore_errors=True)
