"""The extraction cache behind ``.tar`` bundles: one extraction per archive content, private, bounded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from endoedge.core import bundle as bundle_module
from endoedge.core.bundle import ARCHIVE_CACHE_ENTRIES, archive_cache_dir, open_bundle
from endoedge.core.errors import BundleError
from endoedge.core.fileio import sha256_file
from endoedge.core.labels import GASTROVISION3
from endoedge.core.preprocess import PreprocessSpec


def _archive(tmp_path: Path, name: str, payload: bytes = b"weights") -> Path:
    """A valid bundle archive with one extra file whose content makes each archive distinct."""
    folder = tmp_path / f"src-{name}"
    folder.mkdir()
    (folder / "labels.txt").write_bytes(payload)
    doc = {
        "schema_version": 1,
        "name": name,
        "task": "sites",
        "labelset": GASTROVISION3.to_dict(),
        "preprocess": PreprocessSpec(height=64, width=64).to_dict(),
        "files": [{"file": "labels.txt", "role": "labels", "sha256": sha256_file(folder / "labels.txt")}],
    }
    (folder / "manifest.json").write_text(json.dumps(doc))
    archive = tmp_path / f"{name}.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(folder, arcname=name)
    return archive


def _entries(cache: Path) -> list[str]:
    """The extractions in the cache (not their hidden lock files)."""
    return sorted(p.name for p in cache.iterdir() if not p.name.startswith("."))


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("ENDOEDGE_BUNDLE_CACHE", str(folder))
    return folder


def test_an_archive_is_extracted_once_and_reused(tmp_path: Path, cache: Path) -> None:
    archive = _archive(tmp_path, "a")
    first = open_bundle(archive)
    again = open_bundle(archive)
    assert first.path == again.path and first.path.is_relative_to(cache)
    assert _entries(cache) == [sha256_file(archive)]
    assert os.stat(cache).st_mode & 0o777 == 0o700
    assert again.file_path("labels") is not None and again.file_path("labels").read_bytes() == b"weights"


def test_a_tampered_cached_copy_is_extracted_again(tmp_path: Path, cache: Path) -> None:
    archive = _archive(tmp_path, "a")
    labels = open_bundle(archive).file_path("labels")
    assert labels is not None
    labels.write_bytes(b"tampered")
    reopened = open_bundle(archive)
    assert reopened.file_path("labels") == labels and labels.read_bytes() == b"weights"


def test_a_changed_archive_gets_a_new_entry(tmp_path: Path, cache: Path) -> None:
    archive = _archive(tmp_path, "a")
    old = open_bundle(archive).path
    other = tmp_path / "other"
    other.mkdir()
    archive.write_bytes(_archive(other, "b", b"other").read_bytes())
    new = open_bundle(archive)
    assert new.path != old and new.manifest.name == "b"


def test_the_cache_keeps_only_the_most_recent_archives(tmp_path: Path, cache: Path) -> None:
    archives = [_archive(tmp_path, f"m{i}", f"weights {i}".encode()) for i in range(ARCHIVE_CACHE_ENTRIES + 2)]
    for archive in archives:
        open_bundle(archive)
    assert set(_entries(cache)) == {sha256_file(a) for a in archives[-ARCHIVE_CACHE_ENTRIES:]}
    # Each evicted extraction's lock file goes with it; the kept ones have theirs.
    assert sorted(p.name for p in cache.glob(".*.lock")) == sorted(f".{k}.lock" for k in _entries(cache))


def test_a_cache_open_to_other_users_is_refused(tmp_path: Path, cache: Path) -> None:
    cache.mkdir(mode=0o777)
    os.chmod(cache, 0o777)
    with pytest.raises(BundleError) as info:
        open_bundle(_archive(tmp_path, "a"))
    assert str(cache) in str(info.value) and "0700" in str(info.value)


def test_a_symlinked_cache_is_refused(tmp_path: Path, cache: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    cache.symlink_to(elsewhere)
    with pytest.raises(BundleError, match="not a plain folder"):
        open_bundle(_archive(tmp_path, "a"))


def test_default_cache_is_per_user_under_the_temporary_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ENDOEDGE_BUNDLE_CACHE", raising=False)
    monkeypatch.setattr(bundle_module.tempfile, "tempdir", "/some/tmp")
    assert archive_cache_dir() == Path(f"/some/tmp/endoedge-bundles-{os.getuid()}")


# A process that opens a bundle archive, says where it was extracted, and keeps it open until told to
# read its file again (the daemon holding its bundle while installers and benchmarks open others).
_HOLDER = """
import sys
from endoedge.core.bundle import open_bundle

bundle = open_bundle(sys.argv[1])
print(bundle.path, flush=True)
sys.stdin.readline()
labels = bundle.file_path("labels")
print(labels.read_bytes().decode() if labels is not None and labels.exists() else "GONE", flush=True)
bundle.close()
"""

# A process that opens other archives, filling the cache past its size so older extractions are evicted.
_OPENER = """
import sys
from endoedge.core.bundle import open_bundle

for path in sys.argv[1:]:
    open_bundle(path)
"""


def test_an_extraction_another_process_has_open_is_not_evicted(tmp_path: Path, cache: Path) -> None:
    held = _archive(tmp_path, "held", b"held weights")
    others = [_archive(tmp_path, f"o{i}", f"other {i}".encode()) for i in range(ARCHIVE_CACHE_ENTRIES + 1)]
    env = {**os.environ, "ENDOEDGE_BUNDLE_CACHE": str(cache)}
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(held)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout is not None and holder.stdin is not None
        extraction = Path(holder.stdout.readline().strip())
        assert extraction.is_relative_to(cache / sha256_file(held))
        # Another process opens more archives than the cache keeps: the held extraction is the oldest.
        subprocess.run([sys.executable, "-c", _OPENER, *map(str, others)], env=env, check=True, timeout=120)
        assert extraction.is_dir(), "evicted while another process had it open"
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "held weights"
        assert holder.wait(timeout=60) == 0
    finally:
        holder.kill()
    # Closed now: the next open evicts it like any other old extraction.
    subprocess.run([sys.executable, "-c", _OPENER, str(others[-1])], env=env, check=True, timeout=120)
    assert not extraction.exists()
    assert len(_entries(cache)) == ARCHIVE_CACHE_ENTRIES
