"""Export a tiny model trained on real images to every CPU format; load each in its real runtime."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from endoedge.core.bundle import open_bundle
from endoedge.core.errors import EndoedgeError, ManifestError, MissingDependencyError
from endoedge.core.formats import FORMATS
from endoedge.core.manifest import ModelManifest
from endoedge.core.preprocess import prepare_pixels, read_image
from endoedge.edge.backends import choose_format, create_backend
from endoedge.export.exporters import EXPORTERS, FP16_KEEP_FLOAT_OPS
from endoedge.export.onnx_int8 import Int8Recipe
from endoedge.export.parity import PARITY_REFERENCE_ROLE, PARITY_TARGETS, ParityReference, compare
from endoedge.export.pipeline import DEFAULT_FORMATS, ExportSettings, export_bundle, parse_formats
from endoedge.export.source import ExportError, load_source

pytest.importorskip("tensorflow", reason="exporting needs TensorFlow (endoedge[train])")


@pytest.fixture(scope="module")
def reference(full_export):
    bundle = open_bundle(full_export.bundle)
    return ParityReference.load(bundle.file_path(PARITY_REFERENCE_ROLE))


def _reference_pixels(reference: ParityReference, dataset_csv: Path) -> np.ndarray:
    """Prepare the parity images from the dataset, as a Jetson-side checker would."""
    root = dataset_csv.parent
    paths = [Path(img["path"]) if Path(img["path"]).is_absolute() else root / img["path"] for img in reference.images]
    return np.stack([prepare_pixels(read_image(p), reference.preprocess) for p in paths])


def test_every_format_key_has_an_exporter():
    cpu_keys = [k for k, f in FORMATS.items() if not f.target_only]
    assert set(cpu_keys) <= set(EXPORTERS)
    assert set(EXPORTERS) == set(FORMATS)
    assert set(DEFAULT_FORMATS) == set(cpu_keys)


def test_bundle_holds_every_cpu_format_with_checksums_tools_and_parity(full_export, tiny_run):
    bundle = open_bundle(full_export.bundle)  # verifies every sha256
    manifest = bundle.manifest
    assert [a.format for a in manifest.artifacts] == list(DEFAULT_FORMATS)
    for art in manifest.artifacts:
        assert art.parity is not None and art.parity["images"] == full_export.parity[art.format].images
        assert art.size_bytes > 0 and art.precision == FORMATS[art.format].precision
    for tool in ("tensorflow-cpu", "tf2onnx", "onnx", "onnxruntime", "opencv-python-headless"):
        assert tool in manifest.tools
    assert manifest.source["model_sha256"] == load_source(tiny_run).model_sha256
    assert manifest.source["export"]["holdout_images"] == full_export.parity["onnx"].images
    assert manifest.artifact("tflite-int8").input_quantization is not None
    assert full_export.tar is not None and open_bundle(full_export.tar).manifest.name == manifest.name
    with tarfile.open(full_export.tar) as tar:
        assert all(name.startswith(full_export.bundle.name) for name in tar.getnames())


@pytest.mark.parametrize("fmt", [k for k, f in FORMATS.items() if f.precision == "fp32" and not f.target_only])
def test_float32_artifacts_pass_the_strict_gate(full_export, fmt):
    result = full_export.parity[fmt]
    assert result.passed, result.summary()
    assert result.agreement == 1.0 and result.max_abs_delta <= 1e-4


@pytest.mark.parametrize("fmt", ["tflite-fp16", "onnx-fp16"])
def test_float16_artifacts_pass_their_gate(full_export, fmt):
    assert full_export.parity[fmt].passed, full_export.parity[fmt].summary()


@pytest.mark.parametrize("fmt", ["tflite-int8", "onnx-int8"])
def test_int8_artifacts_stay_close_to_float(full_export, fmt):
    result = full_export.parity[fmt]
    # The gate's own target is 99 % and ±1 point; the tiny model on ~100 images is checked more loosely
    # here because one flipped image is already 1 %.
    assert result.agreement >= 0.95, result.summary()
    assert result.max_abs_delta < 0.2
    art = open_bundle(full_export.bundle).manifest.artifact(fmt)
    assert art.parity_loss_allowed == (not result.passed)
    if fmt == "onnx-int8":  # also measured with ONNX Runtime's fused integer CPU kernels, for information
        kernels = art.parity["onnxruntime_cpu_integer_kernels"]
        assert 0.9 <= kernels["agreement"] <= 1.0 and kernels["max_abs_delta"] < 0.2


@pytest.mark.parametrize("fmt", DEFAULT_FORMATS)
def test_each_artifact_reproduces_the_parity_reference_in_its_runtime(full_export, reference, export_dataset, fmt):
    """What a Jetson does with the bundle alone: prepare the listed images, run, compare."""
    bundle = open_bundle(full_export.bundle)
    pixels = _reference_pixels(reference, export_dataset)
    from endoedge.export.parity import pixels_sha256

    assert [pixels_sha256(p) for p in pixels] == [img["pixels_sha256"] for img in reference.images]
    options = {"optimization": "disable"} if fmt == "onnx-int8" else {}
    backend = create_backend(FORMATS[fmt].runtime, bundle, fmt, **options)
    probs = backend.infer(pixels)
    backend.close()
    result = compare(reference.probabilities, probs, reference.true_labels, PARITY_TARGETS[FORMATS[fmt].precision])
    assert result.agreement == pytest.approx(full_export.parity[fmt].agreement)
    assert result.max_abs_delta == pytest.approx(full_export.parity[fmt].max_abs_delta, rel=1e-3, abs=1e-6)


def test_feeding_bgr_instead_of_rgb_fails_the_parity_check(full_export, reference, export_dataset):
    bundle = open_bundle(full_export.bundle)
    pixels = _reference_pixels(reference, export_dataset)
    backend = create_backend("tflite", bundle, "tflite-fp32")
    right = backend.infer(pixels)
    wrong = backend.infer(np.ascontiguousarray(pixels[..., ::-1]))
    target = PARITY_TARGETS["fp32"]
    assert compare(reference.probabilities, right, reference.true_labels, target).passed
    swapped = compare(reference.probabilities, wrong, reference.true_labels, target)
    assert not swapped.passed and any("max|dp|" in f for f in swapped.failures)


def test_reordered_outputs_fail_the_parity_check(full_export, reference, export_dataset):
    bundle = open_bundle(full_export.bundle)
    probs = create_backend("onnxruntime", bundle, "onnx").infer(_reference_pixels(reference, export_dataset))
    # A cyclic shift moves every top-1 class (a reversal would keep the middle one).
    shifted = np.roll(probs, 1, axis=1)
    result = compare(reference.probabilities, shifted, reference.true_labels, PARITY_TARGETS["int8"])
    assert not result.passed and result.agreement < 0.9


def test_onnx_fp16_keeps_softmax_float32_and_has_half_weights(full_export):
    import onnx

    model = onnx.load(str(full_export.bundle / "model_fp16.onnx"))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    types = {init.data_type for init in model.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in types
    inferred = onnx.shape_inference.infer_shapes(model)
    elem = {v.name: v.type.tensor_type.elem_type for v in (*inferred.graph.value_info, *inferred.graph.output)}
    softmax = [n for n in model.graph.node if n.op_type == "Softmax"]
    assert softmax and "Softmax" in FP16_KEEP_FLOAT_OPS
    for node in softmax:
        assert elem[node.output[0]] == onnx.TensorProto.FLOAT
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_onnx_int8_is_tensorrt_style_qdq(full_export):
    """Symmetric INT8 (zero point 0) everywhere, no INT32 bias Q/DQ, per-channel weight scales, Softmax float."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(full_export.bundle / "model_int8_qdq.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    q = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert dq and q
    for node in (*dq, *q):
        assert len(node.input) > 2 and node.input[2] in inits, f"{node.name} has no explicit zero point"
        zero = inits[node.input[2]]
        assert zero.dtype == np.int8 and not zero.any(), f"{node.name}: zero point {zero.dtype} {zero.ravel()[:4]}"
    per_channel = [n for n in dq if n.input[1] in inits and inits[n.input[1]].size > 1]
    assert per_channel, "Conv weights should have one scale per output channel"
    producers = {out: n for n in model.graph.node for out in n.output}
    for node in model.graph.node:
        if node.op_type == "Softmax":
            assert producers[node.input[0]].op_type != "DequantizeLinear"


def test_only_requested_formats_end_up_in_the_bundle(tiny_run, export_dataset, tmp_path):
    result = export_bundle(
        tiny_run, tmp_path / "b", ExportSettings(formats=("onnx-fp16", "tflite-fp32"), dataset=export_dataset)
    )
    names = sorted(p.name for p in result.bundle.iterdir())
    assert names == ["manifest.json", "model_fp16.onnx", "model_fp32.tflite", "parity_reference.json"]
    assert choose_format("onnxruntime", result.manifest) == "onnx-fp16"


def _wrong_tflite(ctx, out):
    """A real TFLite model of the same network that reads its input channels reversed (a BGR/RGB bug)."""
    import keras
    import tensorflow as tf

    from endoedge.export.exporters import ArtifactDraft

    model = ctx.keras_model()
    inputs = keras.Input(model.input_shape[1:])
    flipped = keras.Model(inputs, model(keras.ops.flip(inputs, axis=-1)))
    out.write_bytes(tf.lite.TFLiteConverter.from_keras_model(flipped).convert())
    return ArtifactDraft(notes="deliberately wrong")


def test_gate_refuses_an_artifact_with_wrong_preprocessing(tiny_run, export_dataset, tmp_path, monkeypatch):
    from endoedge.export import exporters

    monkeypatch.setitem(
        exporters.EXPORTERS, "tflite-fp32", exporters.Exporter("tflite-fp32", "model_fp32.tflite", _wrong_tflite)
    )
    settings = ExportSettings(formats=("tflite-fp32", "tflite-fp16"), dataset=export_dataset)
    result = export_bundle(tiny_run, tmp_path / "b", settings)
    assert result.dropped == ("tflite-fp32",)
    assert not (result.bundle / "model_fp32.tflite").exists()
    assert [a.format for a in open_bundle(result.bundle).manifest.artifacts] == ["tflite-fp16"]
    with pytest.raises(ExportError, match="no artifact met its parity target"):
        export_bundle(tiny_run, tmp_path / "c", ExportSettings(formats=("tflite-fp32",), dataset=export_dataset))
    assert not (tmp_path / "c").exists()
    kept = export_bundle(
        tiny_run,
        tmp_path / "d",
        ExportSettings(formats=("tflite-fp32",), dataset=export_dataset, allow_parity_loss=True),
    )
    art = kept.manifest.artifact("tflite-fp32")
    assert art.parity_loss_allowed and art.parity is not None and not art.parity["passed"]
    # The daemon's automatic choice never picks an artifact kept despite missing parity.
    with pytest.raises(EndoedgeError):
        choose_format("tflite", kept.manifest)


def test_interrupted_export_leaves_nothing(tiny_run, export_dataset, tmp_path, monkeypatch):
    from endoedge.export import exporters

    def boom(ctx, out):
        raise KeyboardInterrupt

    monkeypatch.setitem(exporters.EXPORTERS, "onnx", exporters.Exporter("onnx", "model.onnx", boom))
    with pytest.raises(KeyboardInterrupt):
        export_bundle(tiny_run, tmp_path / "b", ExportSettings(formats=("tflite-fp32", "onnx"), dataset=export_dataset))
    assert list(tmp_path.iterdir()) == []


def test_conflicting_and_unknown_options_are_refused_with_a_reason(export_dataset):
    cases = [
        (ExportSettings(formats=(), dataset=export_dataset), "no formats"),
        (ExportSettings(formats=("onnx", "onnx"), dataset=export_dataset), "twice"),
        (ExportSettings(formats=("onnx",), dataset=export_dataset, opset=13), "opset >= 17"),
        (ExportSettings(formats=("tflite-fp32",), dataset=export_dataset, opset=18), "only applies to ONNX"),
        (
            ExportSettings(
                formats=("onnx",), dataset=export_dataset, int8_recipe=Int8Recipe(calibration_method="minmax")
            ),
            "onnx-int8 was not requested",
        ),
        (ExportSettings(formats=("onnx-int8",), dataset=export_dataset, int8_search_budget=-1), ">= 0"),
    ]
    for settings, message in cases:
        with pytest.raises(ExportError, match=message):
            settings.validate()
    with pytest.raises(EndoedgeError, match="unknown export format 'tflite-int4'"):
        parse_formats("tflite-fp32,tflite-int4")
    with pytest.raises(ExportError, match="unknown calibration method"):
        Int8Recipe(calibration_method="kl")


def test_target_only_format_names_what_to_install(tiny_run, export_dataset, tmp_path):
    with pytest.raises(MissingDependencyError, match="trt-fp16 needs the Python module 'tensorrt'.*python3-libnvinfer"):
        export_bundle(tiny_run, tmp_path / "b", ExportSettings(formats=("onnx", "trt-fp16"), dataset=export_dataset))
    assert not (tmp_path / "b").exists()


def test_source_problems_are_located(tiny_run, tmp_path, export_dataset):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["source"]["model_sha256"] = "0" * 64
    (run / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="do not belong together"):
        load_source(run)
    manifest["source"].pop("model_sha256")
    manifest["preprocess"]["height"] = manifest["preprocess"]["width"] = 96
    (run / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match="does not match the manifest's preprocess 96x96"):
        export_bundle(run, tmp_path / "b", ExportSettings(formats=("onnx",), dataset=export_dataset))
    with pytest.raises(ExportError, match="no model.keras inside"):
        load_source(tmp_path)
    with pytest.raises(ManifestError, match="model manifest not found"):
        load_source(run / "model.keras", manifest=tmp_path / "nope.json")
    ModelManifest.load(tiny_run)  # the original is untouched


def test_existing_bundle_is_not_overwritten_without_asking(full_export, export_dataset, tiny_run):
    with pytest.raises(ExportError, match="already exists"):
        export_bundle(tiny_run, full_export.bundle, ExportSettings(formats=("onnx",), dataset=export_dataset))
    open_bundle(full_export.bundle)


@pytest.mark.slow
def test_tflite_int8_can_keep_its_worst_layers_float(tiny_run, export_dataset, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    settings = ExportSettings(
        formats=("tflite-int8",), dataset=export_dataset, tflite_int8_float_layers=2, allow_parity_loss=True
    )
    result = export_bundle(tiny_run, tmp_path / "b", settings)
    art = result.manifest.artifact("tflite-int8")
    assert "2 layer(s) kept float" in art.notes and art.input_quantization is not None
    interpreter = Interpreter(model_path=str(result.bundle / art.file))
    dtypes = {np.dtype(t["dtype"]) for t in interpreter.get_tensor_details()}
    assert np.dtype(np.float32) in dtypes and np.dtype(np.int8) in dtypes  # mixed, not full-integer
    assert result.parity["tflite-int8"].agreement >= 0.95
    with pytest.raises(ExportError, match="tflite-int8 was not requested"):
        ExportSettings(formats=("onnx",), dataset=export_dataset, tflite_int8_float_layers=2).validate()


def test_trt_formats_delegate_to_the_engine_builder_on_a_target(tiny_run, export_dataset, tmp_path, monkeypatch):
    """No GPU here: the requirement check and TensorRT's builder are replaced; the export path is real."""
    from endoedge.edge.box import trt_engine
    from endoedge.export import pipeline
    from endoedge.export.verify import verify_bundle

    calls = []

    def fake_build(onnx_path, precision, *args, **kwargs):
        calls.append((Path(onnx_path).name, precision))
        return b"serialized-engine"

    monkeypatch.setattr(pipeline, "check_requirements", lambda keys: None)
    monkeypatch.setattr(trt_engine, "build_serialized_engine", fake_build)
    result = export_bundle(
        tiny_run, tmp_path / "b", ExportSettings(formats=("onnx-fp16", "trt-fp16"), dataset=export_dataset)
    )
    assert calls == [("model_fp16.onnx", "fp16")]
    art = result.manifest.artifact("trt-fp16")
    assert art.file == "model_fp16.engine" and art.parity is None and "trt-fp16" not in result.parity
    _, rows = verify_bundle(result.bundle)
    engine_row = next(row for row in rows if row.kind == "trt-fp16")
    assert engine_row.ok and engine_row.load.startswith("skipped: built for its target GPU")


def test_ort_cpu_int8_recipe_is_gated_on_onnx_runtime_kernels(tiny_run, export_dataset, tmp_path):
    import onnx
    from onnx import numpy_helper

    recipe = Int8Recipe(symmetric_activations=False, reduce_range=True)
    assert not recipe.tensorrt_compatible and Int8Recipe().tensorrt_compatible
    settings = ExportSettings(
        formats=("onnx-int8",), dataset=export_dataset, int8_recipe=recipe, allow_parity_loss=True
    )
    result = export_bundle(tiny_run, tmp_path / "b", settings)
    art = result.manifest.artifact("onnx-int8")
    assert "for ONNX Runtime CPU, not TensorRT" in art.notes and "7-bit weights" in art.notes
    assert "qdq_literal" in art.parity and "onnxruntime_cpu_integer_kernels" not in art.parity
    model = onnx.load(str(result.bundle / art.file))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    zero_types = {inits[n.input[2]].dtype for n in model.graph.node if n.op_type == "QuantizeLinear"}
    assert np.dtype(np.uint8) in zero_types
    assert result.parity["onnx-int8"].agreement >= 0.9
