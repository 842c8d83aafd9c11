"""The torch-free legacy PyTorch reader: round trip of a file written here, and refusal of unsafe pickles."""

from __future__ import annotations

import collections
import io
import os
import pickle
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from endoedge.core.errors import ConfigError
from endoedge.train.torch_weights import LEGACY_MAGIC, LEGACY_PROTOCOL, UnsafePickleError, load_legacy_state_dict


@pytest.fixture()
def fake_torch() -> Iterator[types.ModuleType]:
    """Modules named like torch's, so the pickler can write the GLOBALs a real legacy file holds."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args: object) -> None:  # never called: only its name is pickled
        raise AssertionError("not to be called")

    class FloatStorage:
        pass

    class LongStorage:
        pass

    for obj, module in ((_rebuild_tensor_v2, utils), (FloatStorage, torch), (LongStorage, torch)):
        obj.__module__ = module.__name__
        obj.__qualname__ = obj.__name__
        setattr(module, obj.__name__, obj)
    saved = {name: sys.modules.get(name) for name in ("torch", "torch._utils")}
    sys.modules["torch"], sys.modules["torch._utils"] = torch, utils
    try:
        yield torch
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


class _Tensor:
    """Pickles as ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``."""

    def __init__(self, storage: _Storage, offset: int, shape: tuple[int, ...], stride: tuple[int, ...]) -> None:
        self.args = (storage, offset, shape, stride, False, collections.OrderedDict())

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return sys.modules["torch._utils"]._rebuild_tensor_v2, self.args


class _Storage:
    def __init__(self, key: str, array: np.ndarray) -> None:
        self.key, self.array = key, array


class _LegacyPickler(pickle.Pickler):
    def persistent_id(self, obj: object) -> object:
        if isinstance(obj, _Storage):
            kind = "LongStorage" if obj.array.dtype == np.int64 else "FloatStorage"
            return ("storage", getattr(sys.modules["torch"], kind), obj.key, "cpu", obj.array.size, None)
        return None


def write_legacy(path: Path, state: dict[str, object], storages: list[_Storage], truncate: int = 0) -> Path:
    """Write a file in torch's legacy layout: five pickles, then each storage's count and bytes."""
    buf = io.BytesIO()
    for header in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"protocol_version": 1001, "little_endian": True}):
        pickle.dump(header, buf, protocol=2)
    _LegacyPickler(buf, protocol=2).dump(state)
    pickle.dump([s.key for s in storages], buf, protocol=2)
    for storage in storages:
        buf.write(int(storage.array.size).to_bytes(8, "little"))
        buf.write(storage.array.astype(storage.array.dtype.newbyteorder("<")).tobytes())
    data = buf.getvalue()
    path.write_bytes(data[: len(data) - truncate] if truncate else data)
    return path


def test_round_trip_of_a_legacy_file_with_views_and_strides(tmp_path: Path, fake_torch: types.ModuleType) -> None:
    rng = np.random.default_rng(0)
    shared = _Storage("0", rng.standard_normal(40).astype(np.float32))
    counts = _Storage("1", np.array([7], dtype=np.int64))
    state = collections.OrderedDict(
        [
            ("conv.weight", _Tensor(shared, 0, (2, 3, 2, 2), (12, 4, 2, 1))),
            # A second tensor in the same storage at an offset, and a transposed (non-contiguous) view.
            ("bn.bias", _Tensor(shared, 24, (4,), (1,))),
            ("fc.weight_t", _Tensor(shared, 28, (3, 4), (1, 3))),
            ("bn.num_batches_tracked", _Tensor(counts, 0, (), ())),
        ]
    )
    file = write_legacy(tmp_path / "w.pth", state, [shared, counts])
    loaded = load_legacy_state_dict(file)
    assert list(loaded) == list(state)
    np.testing.assert_array_equal(loaded["conv.weight"], shared.array[:24].reshape(2, 3, 2, 2))
    np.testing.assert_array_equal(loaded["bn.bias"], shared.array[24:28])
    np.testing.assert_array_equal(loaded["fc.weight_t"], shared.array[28:40].reshape(4, 3).T)
    assert loaded["bn.num_batches_tracked"].dtype == np.int64 and int(loaded["bn.num_batches_tracked"]) == 7


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_naming_os_system_is_refused_and_nothing_runs(tmp_path: Path, fake_torch: types.ModuleType) -> None:
    marker = tmp_path / "pwned"
    storage = _Storage("0", np.zeros(4, np.float32))
    state = collections.OrderedDict([("w", _Tensor(storage, 0, (4,), (1,))), ("x", _Evil(marker))])
    file = write_legacy(tmp_path / "evil.pth", state, [storage])
    with pytest.raises(UnsafePickleError) as caught:
        load_legacy_state_dict(file)
    message = str(caught.value)
    assert "\n" not in message
    assert "system" in message and "nothing was run" in message and str(file) in message
    assert not marker.exists()
    # The same payload in a header pickle is refused too.
    evil_header = tmp_path / "evil-header.pth"
    evil_header.write_bytes(pickle.dumps(_Evil(marker), protocol=2))
    with pytest.raises(UnsafePickleError):
        load_legacy_state_dict(evil_header)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("truncate", "truncated or corrupt"),
        ("garbage", "not a legacy PyTorch weights file"),
        ("zip", "zip-format"),
        ("empty", "not a legacy PyTorch weights file"),
    ],
)
def test_damaged_files_fail_with_one_line(
    tmp_path: Path, fake_torch: types.ModuleType, damage: str, expected: str
) -> None:
    storage = _Storage("0", np.arange(16, dtype=np.float32))
    state = collections.OrderedDict([("w", _Tensor(storage, 0, (16,), (1,)))])
    file = write_legacy(tmp_path / "w.pth", state, [storage], truncate=8 if damage == "truncate" else 0)
    if damage == "garbage":
        file.write_bytes(b"\x00\x01garbage" * 10)
    elif damage == "zip":
        file.write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    elif damage == "empty":
        file.write_bytes(b"")
    with pytest.raises(ConfigError, match=expected) as caught:
        load_legacy_state_dict(file)
    assert "\n" not in str(caught.value) and str(file) in str(caught.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read weights file"):
        load_legacy_state_dict(tmp_path / "nope.pth")
