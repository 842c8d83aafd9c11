"""Model bundles: a folder (or ``.tar``) with ``manifest.json`` and the files it lists.

Every loader opens bundles through :func:`open_bundle`, which validates the manifest and checks every
listed file's sha256 before anything is loaded, so a tampered or truncated artifact is refused with its
path, the expected and the actual checksum. Nothing in a bundle is ever unpickled or executed.
"""

from __future__ import annotations

import contextlib
import lzma
import os
import shutil
import stat
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from endoedge.core.errors import BundleError, ChecksumError, ManifestError
from endoedge.core.fileio import sha256_file, sha256_tree
from endoedge.core.manifest import MANIFEST_NAME, Artifact, ModelManifest


@dataclass(frozen=True)
class FileCheck:
    """The result of checking one file of a bundle."""

    file: str
    expected: str
    actual: str | None

    @property
    def ok(self) -> bool:
        """True when the file exists and its sha256 matches."""
        return self.actual == self.expected


@dataclass(frozen=True)
class Bundle:
    """An opened bundle.

    Attributes:
        path: The bundle folder (for a ``.tar``, its extraction in :func:`archive_cache_dir`).
        manifest: The validated manifest.
    """

    path: Path
    manifest: ModelManifest

    def artifact_path(self, fmt: str) -> Path:
        """Path of the artifact of format ``fmt`` (raises :class:`ManifestError` when absent)."""
        return self.path / self.manifest.artifact(fmt).file

    def artifact(self, fmt: str) -> Artifact:
        """The manifest entry of format ``fmt``."""
        return self.manifest.artifact(fmt)

    def file_path(self, role: str) -> Path | None:
        """Path of the first extra file with ``role``, or ``None``."""
        for extra in self.manifest.files:
            if extra.role == role:
                return self.path / extra.file
        return None

    def check_files(self) -> list[FileCheck]:
        """Hash every artifact and extra file; missing files get ``actual=None``."""
        entries = [(a.file, a.sha256) for a in self.manifest.artifacts] + [
            (f.file, f.sha256) for f in self.manifest.files
        ]
        results = []
        for name, expected in entries:
            target = self.path / name
            try:
                actual = sha256_tree(target) if target.exists() else None
            except OSError:
                actual = None
            results.append(FileCheck(name, expected, actual))
        return results

    def verify(self, formats: list[str] | None = None) -> None:
        """Raise on the first missing or mismatching file (only ``formats`` plus extras, when given).

        Raises:
            BundleError: A listed file is missing.
            ChecksumError: A file's sha256 differs (path, expected, actual).
        """
        wanted = None if formats is None else set(formats)
        entries = [(a.file, a.sha256) for a in self.manifest.artifacts if wanted is None or a.format in wanted]
        entries += [(f.file, f.sha256) for f in self.manifest.files]
        for name, expected in entries:
            target = self.path / name
            try:
                actual = sha256_tree(target) if target.exists() else None
            except OSError as exc:  # unreadable, or a name too long for the file system
                raise BundleError(f"cannot read file listed in the manifest: {exc.strerror or exc}", target) from None
            if actual is None:
                raise BundleError("file listed in the manifest is missing", target)
            if actual != expected:
                raise ChecksumError(target, expected, actual)


def open_bundle(path: str | Path, verify: bool = True, formats: list[str] | None = None) -> Bundle:
    """Open a bundle folder, a ``manifest.json`` inside one, or a ``.tar`` archive of one.

    Args:
        path: Folder, manifest file or ``.tar``/``.tar.gz``.
        verify: Check sha256 of the files (all, or ``formats`` plus extras) before returning.
        formats: Restrict verification to these artifact formats (the daemon verifies what it loads).

    Raises:
        BundleError: Not a bundle, unsafe archive, missing files.
        ManifestError: Invalid manifest.
        ChecksumError: A file was modified.
    """
    # Resolve symlinks once: a bundle opened through the store's ``current`` link must keep reading the
    # same version even if the link is switched while it is being verified or loaded.
    root = Path(path).resolve() if Path(path).exists() else Path(path)
    if root.is_file() and root.name == MANIFEST_NAME:
        root = root.parent
    if root.is_file() and (root.suffix == ".tar" or root.name.endswith((".tar.gz", ".tgz"))):
        return _open_archive(root, verify, formats)
    return _open_folder(root, verify, formats)


def _open_folder(root: Path, verify: bool, formats: list[str] | None) -> Bundle:
    if not root.exists():
        raise BundleError("no such bundle (expected a folder with manifest.json or a .tar)", root)
    if not (root / MANIFEST_NAME).is_file():
        raise BundleError(f"not a bundle: no {MANIFEST_NAME} inside", root)
    bundle = Bundle(path=root, manifest=ModelManifest.load(root / MANIFEST_NAME))
    if verify:
        bundle.verify(formats)
    return bundle


# How many extracted archives the cache keeps (least recently opened go first): the running bundle, the
# one being switched to and a rollback target fit.
ARCHIVE_CACHE_ENTRIES = 3


def archive_cache_dir() -> Path:
    """The private folder where ``.tar`` bundles are extracted once, keyed by the archive's sha256.

    ``$ENDOEDGE_BUNDLE_CACHE`` when set, else ``<tmp>/endoedge-bundles-<uid>``. It must belong to the
    current user and be closed to others (0700): a folder another user could write to would let them
    swap the files between verification and loading.
    """
    configured = os.environ.get("ENDOEDGE_BUNDLE_CACHE")
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(configured) if configured else Path(tempfile.gettempdir()) / f"endoedge-bundles-{uid}"


def _private_cache_dir() -> Path:
    cache = archive_cache_dir()
    try:
        cache.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(cache)
    except OSError as exc:
        raise BundleError(f"cannot create the bundle extraction cache: {exc.strerror or exc}", cache) from None
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise BundleError("bundle extraction cache is not a plain folder; remove it", cache)
    if hasattr(os, "getuid") and (info.st_uid != os.getuid() or info.st_mode & 0o077):
        raise BundleError(
            f"bundle extraction cache must belong to uid {os.getuid()} with mode 0700 "
            f"(found uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):o}); remove it",
            cache,
        )
    return cache


def _open_archive(archive: Path, verify: bool, formats: list[str] | None) -> Bundle:
    """Open an archive through the extraction cache: extracted once per content, re-extracted if tampered."""
    try:
        key = sha256_file(archive)
    except OSError as exc:
        raise BundleError(f"cannot read bundle archive: {exc.strerror or exc}", archive) from None
    cache = _private_cache_dir()
    entry = cache / key
    for attempt in range(2):
        fresh = not entry.is_dir()
        if fresh:
            _extract_into_cache(archive, entry)
        try:
            bundle = _open_folder(_bundle_root(entry), verify, formats)
        except (ChecksumError, BundleError, ManifestError):
            # A cached copy that no longer verifies was changed after extraction: extract it again once.
            # A freshly extracted archive that fails is refused and leaves nothing behind.
            shutil.rmtree(entry, ignore_errors=True)
            if fresh or attempt == 1:
                _remove_if_empty(cache)
                raise
            continue
        os.utime(entry)  # most recently used, for eviction
        _evict(cache, keep=entry)
        return bundle
    raise AssertionError("unreachable")  # pragma: no cover


def _extract_into_cache(archive: Path, entry: Path) -> None:
    staging = _extract(archive, entry.parent)
    try:
        os.rename(staging, entry)
    except OSError:
        # Another process extracted the same archive first: use theirs.
        shutil.rmtree(staging, ignore_errors=True)
        if not entry.is_dir():
            raise BundleError("cannot move the extracted bundle into the cache", entry) from None


def _evict(cache: Path, keep: Path) -> None:
    entries = [p for p in cache.iterdir() if p.is_dir() and p != keep and not p.name.startswith(".")]
    entries.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[ARCHIVE_CACHE_ENTRIES - 1 :]:
        shutil.rmtree(old, ignore_errors=True)


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not empty, or already gone
        folder.rmdir()


def _extract(archive: Path, parent: Path) -> Path:
    """Extract a bundle archive to a new folder in ``parent``, refusing links and paths that leave it."""
    target = Path(tempfile.mkdtemp(prefix=".extracting-", dir=parent))
    try:
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                parts = Path(member.name).parts
                if member.name.startswith("/") or ".." in parts or not (member.isfile() or member.isdir()):
                    raise BundleError(f"unsafe archive member {member.name!r}", archive)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(target, filter="data")
            else:  # Python < 3.11.4 / 3.10.12: members were checked above
                tar.extractall(target)
    except BaseException as exc:
        # Nothing of a refused archive stays behind in the temporary folder.
        shutil.rmtree(target, ignore_errors=True)
        _remove_if_empty(parent)
        # A corrupt compressed stream raises EOFError, zlib.error or lzma.LZMAError, not TarError.
        if isinstance(exc, tarfile.TarError | OSError | EOFError | zlib.error | lzma.LZMAError):
            raise BundleError(f"cannot read bundle archive: {exc}", archive) from None
        raise
    return target


def _bundle_root(extracted: Path) -> Path:
    """The bundle folder inside an extracted archive: its single top folder, or the archive root."""
    entries = [p for p in extracted.iterdir()]
    if len(entries) == 1 and entries[0].is_dir() and (entries[0] / MANIFEST_NAME).exists():
        return entries[0]
    return extracted
