"""Side-by-side bundle installs, the atomic ``current`` switch, rollback and pruning."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import threading
from pathlib import Path

import pytest
from _fakebundle import make_bundle

from endoedge.core.bundle import open_bundle
from endoedge.core.errors import BundleError, ChecksumError
from endoedge.edge.box import bundle_store
from endoedge.edge.box.bundle_store import current_bundle, history, install_bundle, list_bundles, rollback


def _payload(path: Path) -> bytes:
    return (path / "model.onnx").read_bytes()


def test_install_then_upgrade_keeps_the_old_bundle_as_previous(tmp_path: Path) -> None:
    store = tmp_path / "store"
    v1 = install_bundle(make_bundle(tmp_path / "b1", payload=b"one"), store)
    assert current_bundle(store) == v1.resolve()
    assert os.readlink(store / "current") == f"versions/{v1.name}"  # relative: works inside a DESTDIR root
    v2 = install_bundle(make_bundle(tmp_path / "b2", payload=b"two"), store)
    assert v1 != v2 and v1.name.startswith("demo-") and len(v1.name) == len("demo-") + 12
    assert _payload(current_bundle(store)) == b"two"
    assert (store / "previous").resolve() == v1.resolve()
    open_bundle(store / "current")  # the daemon's view verifies
    assert [h["action"] for h in history(store)] == ["install", "install"]
    assert (v2.stat().st_mode & 0o777) == 0o755


def test_reinstalling_the_current_bundle_changes_nothing(tmp_path: Path) -> None:
    store = tmp_path / "store"
    src = make_bundle(tmp_path / "b1")
    install_bundle(src, store)
    before = {p: (p.stat().st_mtime_ns, os.readlink(p) if p.is_symlink() else "") for p in store.rglob("*")}
    install_bundle(src, store)
    after = {p: (p.stat().st_mtime_ns, os.readlink(p) if p.is_symlink() else "") for p in store.rglob("*")}
    assert before == after


def test_rollback_swaps_current_and_previous_and_twice_is_identity(tmp_path: Path) -> None:
    store = tmp_path / "store"
    install_bundle(make_bundle(tmp_path / "b1", payload=b"one"), store)
    install_bundle(make_bundle(tmp_path / "b2", payload=b"two"), store)
    back = rollback(store)
    assert _payload(back) == b"one" and _payload(current_bundle(store)) == b"one"
    assert _payload((store / "previous").resolve()) == b"two"
    rollback(store)
    assert _payload(current_bundle(store)) == b"two"
    assert [h["action"] for h in history(store)] == ["install", "install", "rollback", "rollback"]


def test_rollback_without_previous_says_so(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with pytest.raises(BundleError, match="no previous bundle"):
        rollback(store)
    install_bundle(make_bundle(tmp_path / "b1"), store)
    with pytest.raises(BundleError, match="no previous bundle"):
        rollback(store)
    assert _payload(current_bundle(store)) == b"model-v1"


def test_rollback_refuses_a_tampered_previous_bundle(tmp_path: Path) -> None:
    store = tmp_path / "store"
    install_bundle(make_bundle(tmp_path / "b1", payload=b"one"), store)
    install_bundle(make_bundle(tmp_path / "b2", payload=b"two"), store)
    ((store / "previous").resolve() / "model.onnx").write_bytes(b"oNe")
    with pytest.raises(ChecksumError, match="model.onnx"):
        rollback(store)
    assert _payload(current_bundle(store)) == b"two"


def test_current_bundle_before_any_install(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no current bundle"):
        current_bundle(tmp_path / "empty")


def test_a_tampered_source_is_refused_and_the_store_is_untouched(tmp_path: Path) -> None:
    store = tmp_path / "store"
    install_bundle(make_bundle(tmp_path / "b1", payload=b"one"), store)
    bad = make_bundle(tmp_path / "b2", payload=b"two")
    (bad / "model.onnx").write_bytes(b"twO")
    with pytest.raises(ChecksumError):
        install_bundle(bad, store)
    assert [b.version for b in list_bundles(store)] == [current_bundle(store).name]
    assert not (store / "previous").exists()


def test_an_interrupted_copy_leaves_no_half_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "store"
    install_bundle(make_bundle(tmp_path / "b1", payload=b"one"), store)
    real_copy = shutil.copy2
    calls = []

    def failing_copy(src: str, dst: str) -> object:
        calls.append(src)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_copy(src, dst)

    monkeypatch.setattr(bundle_store.shutil, "copy2", failing_copy)
    with pytest.raises(OSError, match="No space"):
        install_bundle(make_bundle(tmp_path / "b2", payload=b"two"), store)
    assert len(calls) == 2
    assert sorted(p.name for p in (store / "versions").iterdir()) == [current_bundle(store).name]
    assert _payload(current_bundle(store)) == b"one"


def test_install_from_a_tar_archive(tmp_path: Path) -> None:
    src = make_bundle(tmp_path / "b1", name="from-tar", payload=b"tar")
    archive = tmp_path / "b1.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(src, arcname="from-tar")
    installed = install_bundle(archive, tmp_path / "store")
    assert installed.name.startswith("from-tar-") and _payload(installed) == b"tar"


def test_install_without_activation_only_copies(tmp_path: Path) -> None:
    store = tmp_path / "store"
    install_bundle(make_bundle(tmp_path / "b1", payload=b"one"), store)
    staged = install_bundle(make_bundle(tmp_path / "b2", payload=b"two"), store, activate=False)
    assert staged.is_dir() and _payload(current_bundle(store)) == b"one"


def test_old_versions_are_pruned_but_never_current_or_previous(tmp_path: Path) -> None:
    store = tmp_path / "store"
    for i in range(6):
        install_bundle(make_bundle(tmp_path / f"b{i}", payload=f"v{i}".encode()), store, keep=1)
    versions = list_bundles(store)
    assert len(versions) == 3  # current + previous + 1 spare
    assert {_payload(b.path) for b in versions} == {b"v5", b"v4", b"v3"}
    assert next(b for b in versions if b.current).path.resolve() == current_bundle(store)
    assert json.loads((store / "history.json").read_text())[-1]["action"] == "install"


def test_open_bundle_through_current_pins_the_version(tmp_path: Path) -> None:
    store = tmp_path / "store"
    v1 = install_bundle(make_bundle(tmp_path / "b1", payload=b"one"), store)
    opened = open_bundle(store / "current")
    install_bundle(make_bundle(tmp_path / "b2", payload=b"two"), store)
    assert opened.path == v1.resolve()
    assert opened.artifact_path("onnx").read_bytes() == b"one"


def test_readers_never_see_a_missing_or_partial_current_bundle(tmp_path: Path) -> None:
    """A reader opening ``current`` (as the daemon does) during installs and rollbacks always succeeds."""
    store = tmp_path / "store"
    install_bundle(make_bundle(tmp_path / "b0", payload=b"v0"), store)
    sources = [make_bundle(tmp_path / f"b{i}", payload=f"v{i}".encode() * 5000) for i in range(1, 4)]
    errors: list[BaseException] = []
    reads = [0]
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                open_bundle(store / "current")
                reads[0] += 1
            except BaseException as exc:  # any failure is the finding
                errors.append(exc)
                return

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for _ in range(3):
            for src in sources:
                install_bundle(src, store)
                rollback(store)
                rollback(store)
    finally:
        stop.set()
        thread.join()
    assert errors == []
    assert reads[0] > 10


def test_installed_copies_are_readable_by_the_service_user(tmp_path: Path) -> None:
    """Exports written with atomic writes are 0600; the store's copy must be readable by 'endoedge'."""
    src = make_bundle(tmp_path / "b1")
    for path in src.iterdir():
        path.chmod(0o600)
    src.chmod(0o700)
    installed = install_bundle(src, tmp_path / "store")
    assert (installed.stat().st_mode & 0o777) == 0o755
    assert {p.name: p.stat().st_mode & 0o777 for p in installed.iterdir()} == {
        "manifest.json": 0o644,
        "model.onnx": 0o644,
        "reference.json": 0o644,
    }
