from __future__ import annotations

import json

import numpy as np
import pytest

from endoedge.core.bundle import open_bundle
from endoedge.core.errors import BundleError, ChecksumError, EndoedgeError, MissingDependencyError
from endoedge.core.preprocess import prepare_pixels, read_image
from endoedge.edge.backends import (
    BACKENDS,
    BackendError,
    available_backends,
    choose_format,
    create_backend,
)


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return open_bundle(tiny_bundle)


@pytest.fixture(scope="module")
def pixels(sample_images, bundle):
    return np.stack([prepare_pixels(read_image(p), bundle.manifest.preprocess) for p in sample_images])


@pytest.fixture(scope="module")
def reference(bundle):
    return np.load(bundle.path / "reference.npy", allow_pickle=False)


@pytest.mark.parametrize(
    ("name", "fmt", "max_delta", "min_agreement"),
    [
        ("savedmodel", "savedmodel", 1e-5, 1.0),
        ("tflite", "tflite-fp32", 1e-4, 1.0),
        ("onnxruntime", "onnx", 1e-4, 1.0),
        ("tflite", "tflite-int8", 0.08, 0.9),
    ],
)
def test_every_runtime_matches_the_keras_reference(bundle, pixels, reference, name, fmt, max_delta, min_agreement):
    backend = create_backend(name, bundle, fmt, threads=2)
    probs = backend.infer(pixels)
    assert probs.shape == reference.shape and probs.dtype == np.float32
    assert np.abs(probs - reference).max() <= max_delta
    assert (probs.argmax(1) == reference.argmax(1)).mean() >= min_agreement
    # Batch 1 and batch N give the same answer (the interpreter is resized between them).
    single = np.concatenate([backend.infer(p[None]) for p in pixels[:3]])
    assert np.allclose(single, probs[:3], atol=max(max_delta, 1e-5))
    backend.close()


def test_wrong_channel_order_breaks_parity(bundle, pixels, reference):
    """Feeding BGR instead of RGB must be visible: this is what the manifest contract protects."""
    backend = create_backend("onnxruntime", bundle, "onnx")
    swapped = backend.infer(np.ascontiguousarray(pixels[..., ::-1]))
    assert np.abs(swapped - reference).max() > 1e-3


def test_int8_input_is_quantised_from_the_manifest_normalisation(bundle, pixels):
    backend = create_backend("tflite", bundle, "tflite-int8")
    tensor = backend.input_tensor(pixels[:1])
    assert tensor.dtype == np.uint8
    # inception normalisation maps 0..255 to [-1, 1]; the uint8 input's scale is about 2/255.
    scale, zero_point = backend._input["quantization"]
    assert scale == pytest.approx(2 / 255, rel=0.05) and abs(zero_point - 128) <= 1
    assert np.abs(tensor.astype(int) - pixels[:1].astype(int)).max() <= 2


def test_auto_picks_an_installed_backend_with_an_artifact(bundle):
    backend = create_backend("auto", bundle)
    assert backend.name in available_backends()
    assert backend.name == "onnxruntime"  # no TensorRT here; ORT comes next in AUTO_ORDER
    assert backend.describe()["providers"] == ["CPUExecutionProvider"]


def test_registry_errors_list_valid_choices(bundle):
    with pytest.raises(EndoedgeError, match="unknown backend 'openvino' \\(valid: auto, tensorrt"):
        create_backend("openvino", bundle)
    with pytest.raises(BundleError, match="has no 'tflite-fp16' artifact"):
        choose_format("tflite", bundle.manifest, "tflite-fp16")
    with pytest.raises(BundleError, match="cannot run format 'onnx'"):
        choose_format("tflite", bundle.manifest, "onnx")
    with pytest.raises(MissingDependencyError, match="TensorRT"):
        create_backend("tensorrt", bundle)
    assert set(BACKENDS) == {"tensorrt", "onnxruntime", "tflite", "savedmodel"}


def test_unknown_options_are_refused_before_the_runtime_loads(bundle, monkeypatch):
    import endoedge.edge.backends as backends

    imported = []
    monkeypatch.setattr(backends.importlib, "import_module", lambda name: imported.append(name))
    with pytest.raises(EndoedgeError, match=r"unknown option 'thread' for backend 'onnxruntime' \(valid: .*providers"):
        create_backend("onnxruntime", bundle, "onnx", thread=1)
    with pytest.raises(EndoedgeError, match=r"unknown options 'a', 'b' for backend 'tflite'"):
        create_backend("tflite", bundle, b=1, a=2)
    with pytest.raises(EndoedgeError, match=r"unknown option 'nonsense' for backend 'auto' \(valid: .*xnnpack"):
        create_backend("auto", bundle, nonsense=True)
    assert imported == []


def test_auto_gives_the_picked_backend_only_its_own_options(bundle, pixels, reference):
    # ORT is picked here; a LiteRT-only option in the same config must not reach (and break) it.
    backend = create_backend("auto", bundle, xnnpack=False, threads=1, spinning=False)
    assert backend.name == "onnxruntime"
    assert backend.options == {"threads": 1, "spinning": False}
    assert np.abs(backend.infer(pixels) - reference).max() < 1e-4


def test_onnxruntime_spinning_option(bundle, pixels, reference):
    quiet = create_backend("onnxruntime", bundle, "onnx", threads=2, spinning=False)
    assert np.abs(quiet.infer(pixels) - reference).max() < 1e-4
    assert quiet.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    with pytest.raises(BackendError, match="spinning must be true or false, not 'no'"):
        create_backend("onnxruntime", bundle, "onnx", spinning="no")


def test_bad_input_and_bad_output_are_reported(bundle, pixels, monkeypatch):
    backend = create_backend("tflite", bundle, "tflite-fp32")
    with pytest.raises(ValueError, match="expected uint8 N×64×64×3 pixels, got float32"):
        backend.infer(pixels.astype(np.float32))
    with pytest.raises(ValueError, match="got uint8 \\(1, 32, 32, 3\\)"):
        backend.infer(np.zeros((1, 32, 32, 3), np.uint8))
    monkeypatch.setattr(backend, "_run", lambda p: np.full((len(p), 3), np.nan, np.float32))
    with pytest.raises(BackendError, match="NaN"):
        backend.infer(pixels[:1])
    monkeypatch.setattr(backend, "_run", lambda p: np.zeros((len(p), 5), np.float32))
    with pytest.raises(BackendError, match="output shape"):
        backend.infer(pixels[:1])


def test_tampered_artifact_is_refused_at_load(tiny_bundle, tmp_path):
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    model = copy / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    bundle = open_bundle(copy, verify=False)
    with pytest.raises(ChecksumError, match="model.onnx: sha256 mismatch"):
        create_backend("onnxruntime", bundle, "onnx")
    # The other artifacts still load: verification is per artifact used.
    assert create_backend("tflite", bundle, "tflite-fp32").format == "tflite-fp32"


def test_corrupt_artifact_with_matching_checksum_gives_a_load_error(tiny_bundle, tmp_path):
    import shutil

    from endoedge.core.fileio import sha256_file

    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    (copy / "model_fp32.tflite").write_bytes(b"TFL3 truncated")
    manifest = json.loads((copy / "manifest.json").read_text())
    for art in manifest["artifacts"]:
        if art["format"] == "tflite-fp32":
            art["sha256"] = sha256_file(copy / "model_fp32.tflite")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BackendError, match="tflite cannot load tflite-fp32 artifact"):
        create_backend("tflite", open_bundle(copy), "tflite-fp32")
