"""Regression tests for the defects the core fuzzers found (each one escaped as a non-endoedge exception,
hung, printed a multi-line message, or left files behind before it was fixed)."""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
import time
from pathlib import Path

import pytest
from _fuzzing import BILLION_LAUGHS, assert_one_line_error

from endoedge.core.bundle import open_bundle
from endoedge.core.datasets import load_dataset
from endoedge.core.errors import BundleError, ConfigError, DatasetError, EndoedgeError, ManifestError
from endoedge.core.labels import GASTROVISION3, LabelSet, get_labelset, load_labelset_file
from endoedge.core.manifest import ModelManifest
from endoedge.core.preprocess import PreprocessSpec


def _manifest_doc(**changes: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "schema_version": 1,
        "name": "m",
        "task": "sites",
        "labelset": GASTROVISION3.to_dict(),
        "preprocess": PreprocessSpec(height=64, width=64).to_dict(),
    }
    doc.update(changes)
    return doc


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("huge-int.yaml", "name: x\nversion: " + "1" * 5000 + "\nlabels: [a]\n"),  # ValueError (4300 digits)
        ("deep.yaml", "name: x\nversion: 1\nlabels: " + "[" * 5000 + "]" * 5000 + "\n"),  # RecursionError
        ("deep.json", '{"name":"x","version":1,"labels":' + "[" * 100000 + "]" * 100000 + "}"),
        ("huge-int.json", '{"name":"x","version":' + "9" * 5000 + ',"labels":["a"]}'),
    ],
)
def test_labelset_file_parser_limits_become_config_errors(tmp_path: Path, name: str, content: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ConfigError) as info:
        load_labelset_file(path)
    assert_one_line_error(info.value, str(path))


def test_labelset_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: caf\xe9\nversion: 1\nlabels: [a]\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_labelset_file(path)


def test_billion_laughs_is_refused_quickly(tmp_path: Path) -> None:
    path = tmp_path / "laughs.yaml"
    path.write_text(BILLION_LAUGHS + "name: *i\nversion: 1\nlabels: [a]\n")
    start = time.monotonic()
    with pytest.raises(ConfigError) as info:
        load_labelset_file(path)
    assert time.monotonic() - start < 5, "the error message must not repr the whole expanded value"
    assert_one_line_error(info.value, str(path))


def test_label_set_name_too_long_for_the_file_system_is_not_a_crash() -> None:
    with pytest.raises(ConfigError, match="unknown label set"):
        get_labelset("q" * 5000)


def test_error_messages_quote_user_text_on_one_line() -> None:
    with pytest.raises(ConfigError) as info:
        LabelSet.from_dict({"name": "x", "version": 1, "labels": ["a b\nc"]}, where="evil\nfile.yaml")
    text = str(info.value)
    assert "\n" not in text and "evil\\nfile.yaml" in text


@pytest.mark.parametrize(
    ("field", "value"),
    [("mean", [10**400, 0, 0]), ("std", [float("nan"), 1, 1]), ("mean", [float("inf"), 0, 0])],
)
def test_preprocess_numbers_must_be_finite(field: str, value: list[float]) -> None:
    doc = _manifest_doc(preprocess=dict(PreprocessSpec(height=64, width=64).to_dict(), **{field: value}))
    with pytest.raises(ManifestError) as info:
        ModelManifest.from_dict(doc, where="m.json")
    assert_one_line_error(info.value, f"m.json:preprocess.{field}")


@pytest.mark.parametrize("scale", [10**400, float("inf")])
def test_quantization_scale_must_be_finite(scale: float) -> None:
    art = {"format": "onnx", "file": "a.onnx", "sha256": "0" * 64, "input_quantization": [scale, 0]}
    with pytest.raises(ManifestError) as info:
        ModelManifest.from_dict(_manifest_doc(artifacts=[art]), where="m.json")
    assert_one_line_error(info.value, "input_quantization[0]")


@pytest.mark.parametrize("text", ['{"metrics": {"a": ' + "9" * 5000 + "}}", "[" * 100000 + "]" * 100000])
def test_manifest_parser_limits_become_manifest_errors(tmp_path: Path, text: str) -> None:
    path = tmp_path / "manifest.json"
    path.write_text(text)
    with pytest.raises(ManifestError) as info:
        ModelManifest.load(path)
    assert_one_line_error(info.value, str(path))


@pytest.mark.parametrize("file_name", ["a\x00b", "a" * 5000, "line\nbreak"])
def test_bundle_file_names_that_cannot_exist_are_refused(tmp_path: Path, file_name: str) -> None:
    (tmp_path / "manifest.json").write_text(
        json.dumps(_manifest_doc(artifacts=[{"format": "onnx", "file": file_name, "sha256": "0" * 64}]))
    )
    with pytest.raises((ManifestError, BundleError)) as info:
        open_bundle(tmp_path)
    assert_one_line_error(info.value)


def test_dataset_path_too_long_is_a_row_error(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("# endoedge-dataset v1 labelset=gastrovision3\npath,label\n" + "a" * 5000 + ",colon_polyp\n")
    with pytest.raises(DatasetError) as info:
        load_dataset(path)
    assert_one_line_error(info.value, f"{path}:row 3")


def test_dataset_cells_with_line_breaks_give_one_line_errors(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('# endoedge-dataset v1 labelset=gastrovision3\npath,label\n"x\ny",colon_polyp\n')
    with pytest.raises(DatasetError) as info:
        load_dataset(path)
    assert_one_line_error(info.value, f"{path}:row 3")


def _tar_gz_of_bundle(tmp_path: Path) -> bytes:
    folder = tmp_path / "good"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps(_manifest_doc()))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(folder, arcname="good")
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["truncated-gz", "not-a-bundle", "bad-manifest"])
def test_refused_archives_leave_no_temporary_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    monkeypatch.delenv("ENDOEDGE_BUNDLE_CACHE", raising=False)
    data = _tar_gz_of_bundle(tmp_path)
    if mode == "truncated-gz":  # was an EOFError escaping
        data = data[: len(data) // 2]
    elif mode in ("not-a-bundle", "bad-manifest"):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            payload = b"{}" if mode == "bad-manifest" else b"hello"
            info = tarfile.TarInfo("manifest.json" if mode == "bad-manifest" else "readme.txt")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        data = buf.getvalue()
    archive = tmp_path / "b.tar.gz"
    archive.write_bytes(data)
    with pytest.raises(EndoedgeError) as info:
        open_bundle(archive)
    assert_one_line_error(info.value)
    assert list(private.iterdir()) == []


def test_good_archive_still_opens(tmp_path: Path) -> None:
    archive = tmp_path / "b.tar.gz"
    archive.write_bytes(_tar_gz_of_bundle(tmp_path))
    bundle = open_bundle(archive)
    assert bundle.manifest.name == "m" and (bundle.path / "manifest.json").is_file()


def test_reopening_an_archive_does_not_extract_it_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    monkeypatch.delenv("ENDOEDGE_BUNDLE_CACHE", raising=False)
    archive = tmp_path / "b.tar.gz"
    archive.write_bytes(_tar_gz_of_bundle(tmp_path))
    for _ in range(5):  # five backend restarts
        open_bundle(archive)
    assert len(list(private.iterdir())) <= 1
