"""Model bundles: a folder (or ``.tar``) with ``manifest.json`` and the files it lists.

Every loader opens bundles through :func:`open_bundle`, which validates the manifest and checks every
listed file's sha256 before anything is loaded, so a tampered or truncated artifact is refused with its
path, the expected and the actual checksum. Nothing in a bundle is ever unpickled or executed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import lzma
import os
import shutil
import stat
import tarfile
import tempfile
import weakref
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


class _Lease:
    """A shared ``flock`` on a cache entry's lock file, held while a bundle opened from it is in use.

    Released by :meth:`release` or when the last :class:`Bundle` holding it is garbage-collected (the
    descriptor is closed, and the kernel drops the lock with it, also when the process dies).
    """

    def __init__(self, fd: int) -> None:
        self._finalizer = weakref.finalize(self, os.close, fd)

    def release(self) -> None:
        """Drop the lock now (idempotent)."""
        self._finalizer()


@dataclass(frozen=True)
class Bundle:
    """An opened bundle.

    A bundle opened from a ``.tar`` holds a shared lock on its cache extraction for as long as the
    object lives (or until :meth:`close`), so no process evicts the extraction while it is in use.

    Attributes:
        path: The bundle folder (for a ``.tar``, its extraction in :func:`archive_cache_dir`).
        manifest: The validated manifest.
    """

    path: Path
    manifest: ModelManifest
    lease: _Lease | None = dataclasses.field(default=None, repr=False, compare=False)

    def close(self) -> None:
        """Release the cache extraction of a ``.tar`` bundle for eviction (no-op for a folder).

        Its files must not be used afterwards: another process may evict the extraction.
        """
        if self.lease is not None:
            self.lease.release()

    def __enter__(self) -> Bundle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
    swap the files between verification and loading. Each extraction ``<sha256>/`` has a lock file
    ``.<sha256>.lock``: every open :class:`Bundle` holds it shared (``flock``), and eviction takes it
    exclusively without waiting, skipping an extraction that any process still has open.
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
    # Held shared from before the entry is looked at until the bundle is closed: an evicting process
    # needs it exclusively, so it never removes an extraction that is being checked, loaded or used.
    fd = _lock_entry(entry, fcntl.LOCK_SH)
    try:
        for attempt in range(2):
            fresh = not entry.is_dir()
            if fresh:
                _extract_into_cache(archive, entry)
            try:
                bundle = _open_folder(_bundle_root(entry), verify, formats)
            except (ChecksumError, BundleError, ManifestError):
                # A cached copy that no longer verifies was changed after extraction: extract it again once.
                # A freshly extracted archive that fails is refused and leaves nothing behind. Either needs
                # the entry to ourselves; converting the lock drops it, so nothing else is done after a miss.
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    raise BundleError(
                        "the cached extraction of this archive does not verify and another process has it "
                        f"open; close that process or remove {entry}",
                        archive,
                    ) from None
                shutil.rmtree(entry, ignore_errors=True)
                if fresh or attempt == 1:
                    raise
                fcntl.flock(fd, fcntl.LOCK_SH)
                continue
            os.utime(entry)  # most recently used, for eviction
            _evict(cache, keep=entry)
            return dataclasses.replace(bundle, lease=_Lease(fd))
    except BaseException:
        _discard_lock(entry, fd)
        _remove_if_empty(cache)  # a refused archive leaves nothing behind
        raise
    raise AssertionError("unreachable")  # pragma: no cover


def _discard_lock(entry: Path, fd: int) -> None:
    """Close ``fd``; also remove the lock file when there is no extraction and no one else holds it."""
    try:
        if not entry.exists():
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another opener may be extracting it now
            _lock_path(entry).unlink()
    except OSError:
        pass
    finally:
        os.close(fd)


def _lock_path(entry: Path) -> Path:
    # A hidden sibling, not inside the entry: it must outlive the entry's removal while it is locked.
    return entry.parent / f".{entry.name}.lock"


def _lock_entry(entry: Path, operation: int) -> int:
    """Open ``entry``'s lock file and ``flock`` it (``operation`` may include ``LOCK_NB``); returns the fd.

    Raises:
        BlockingIOError: ``LOCK_NB`` was given and another process holds a conflicting lock.
        BundleError: The lock file cannot be created.
    """
    path = _lock_path(entry)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise BundleError(f"cannot lock the bundle extraction cache: {exc.strerror or exc}", path) from None
        try:
            fcntl.flock(fd, operation)
            # An evictor may have unlinked the file between our open and our lock: a lock on a removed
            # file guards nothing, so start again on the file now at that path.
            held, now = os.fstat(fd), os.stat(path, follow_symlinks=False)
            if (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino):
                return fd
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


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
    """Remove the least recently opened extractions beyond :data:`ARCHIVE_CACHE_ENTRIES`.

    An extraction some process has open (its lock held shared) is skipped, so the cache can hold more
    entries for a while; it is evicted by a later open once it is closed.
    """
    entries = []
    for p in cache.iterdir():
        if p.name.startswith(".") or p == keep:
            continue
        with contextlib.suppress(OSError):  # removed meanwhile by another process
            if p.is_dir():
                entries.append((p.stat().st_mtime, p))
    entries.sort(reverse=True)
    for _, old in entries[ARCHIVE_CACHE_ENTRIES - 1 :]:
        try:
            fd = _lock_entry(old, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, BundleError):
            continue  # in use (or cannot be locked): never removed from under its user
        try:
            shutil.rmtree(old, ignore_errors=True)
            # Unlinked while still held, so a waiting opener notices and locks the new file instead.
            with contextlib.suppress(OSError):
                _lock_path(old).unlink()
        finally:
            os.close(fd)


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
