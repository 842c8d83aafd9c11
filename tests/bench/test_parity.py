"""Parity metrics, gate classification and statuses on hand-made outputs (values worked out by hand)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from endoedge.bench.parity import (
    ArtifactResult,
    compare_outputs,
    confusion_matrix,
    exit_code,
    per_class_metrics,
    run_artifact,
)

NAMES = ["a", "b", "c"]


def onehot(indices, num=3, high=0.9):
    out = np.full((len(indices), num), (1 - high) / (num - 1), dtype=np.float32)
    out[np.arange(len(indices)), indices] = high
    return out


def test_confusion_matrix_and_per_class_metrics():
    labels = np.array([0, 0, 1, 1, 2, 2])
    predicted = np.array([0, 1, 1, 1, 2, 0])
    assert confusion_matrix(labels, predicted, 3).tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    m = per_class_metrics(labels, predicted, 3)
    assert m["sensitivity"] == [0.5, 1.0, 0.5]
    assert m["specificity"] == [0.75, 0.75, 1.0]
    assert m["ppv"] == [0.5, 2 / 3, 1.0]
    assert m["npv"] == pytest.approx([0.75, 1.0, 0.8])


def test_identical_outputs_agree_fully():
    ref = onehot([0, 1, 2, 0])
    m = compare_outputs(ref, ref.copy(), np.array([0, 1, 2, 1]), NAMES)
    assert m.top1_agreement == 1.0 and m.max_abs_diff == 0.0 and m.mean_abs_diff == 0.0
    assert m.accuracy == 0.75 == m.reference_accuracy
    assert m.worst_sensitivity_delta == 0.0


def test_metrics_of_a_changed_prediction():
    labels = np.array([0, 0, 1, 1, 2, 2, 2, 2])
    ref = onehot([0, 0, 1, 1, 2, 2, 2, 2])
    cand = ref.copy()
    cand[4] = [0.2, 0.7, 0.1]  # one class-2 image now predicted as 1
    m = compare_outputs(ref, cand, labels, NAMES)
    assert m.top1_agreement == pytest.approx(7 / 8)
    assert m.max_abs_diff == pytest.approx(0.8, abs=1e-6)  # |0.9 - 0.1| on class c
    assert m.accuracy == pytest.approx(7 / 8) and m.reference_accuracy == 1.0
    assert m.worst_sensitivity_class == "c" and m.worst_sensitivity_delta == pytest.approx(0.25)
    assert m.per_class["c"]["sensitivity"] == 0.75 and m.per_class["c"]["reference_sensitivity"] == 1.0
    assert m.mean_sensitivity == pytest.approx((1 + 1 + 0.75) / 3)
    as_json = m.to_dict()
    assert as_json["images"] == 8 and as_json["per_class"]["c"]["support"] == 4.0


def test_classes_without_images_do_not_poison_the_means():
    labels = np.array([0, 0, 1])  # no class 2
    ref = onehot([0, 0, 1])
    m = compare_outputs(ref, ref, labels, NAMES)
    assert m.mean_sensitivity == 1.0
    assert math.isnan(m.per_class["c"]["sensitivity"])
    assert m.to_dict()["per_class"]["c"]["sensitivity"] is None


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same non-empty"):
        compare_outputs(onehot([0]), onehot([0, 1]))


def _many(n=200, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    probs = rng.dirichlet([1, 1, 1], n).astype(np.float32)
    probs[np.arange(n), labels] += 1.0  # mostly right
    return labels, (probs / probs.sum(1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize(
    ("precision", "noise", "status"),
    [("fp32", 0.0, "validated"), ("fp32", 1e-3, "failed"), ("fp16", 1e-3, "validated"), ("int8", 0.0, "validated")],
)
def test_gate_per_precision(precision, noise, status):
    labels, ref = _many()
    rng = np.random.default_rng(1)

    def infer(batch_indices):
        out = ref[batch_indices[:, 0, 0, 0]]
        return out + rng.uniform(-noise, noise, out.shape).astype(np.float32)

    pixels = np.arange(len(ref)).reshape(-1, 1, 1, 1)  # the "pixels" carry each image's index
    result, probs = run_artifact(ArtifactResult("x", precision), infer, pixels, ref, labels, NAMES)
    assert probs is not None and probs.shape == ref.shape
    assert result.status == status, result.reason
    if status == "failed":
        assert result.stage == "gate" and "max|dp|" in result.reason


def test_a_deliberately_wrong_int8_artifact_fails_with_the_reason():
    labels, ref = _many()
    wrong = ref.copy()
    flip = np.where(labels == 2)[0][:10]
    wrong[flip] = onehot([0] * len(flip))  # ten class-2 images now called class 0
    pixels = np.arange(len(ref)).reshape(-1, 1, 1, 1)
    result, _ = run_artifact(
        ArtifactResult("tflite-int8", "int8"), lambda p: wrong[p[:, 0, 0, 0]], pixels, ref, labels, NAMES
    )
    assert result.status == "failed" and result.stage == "gate"
    assert "agreement" in result.reason and "sensitivity" in result.reason
    assert exit_code([result]) == 1
    kept = ArtifactResult("tflite-int8", "int8", parity_loss_allowed=True)
    kept, _ = run_artifact(kept, lambda p: wrong[p[:, 0, 0, 0]], pixels, ref, labels, NAMES)
    # Kept on request: its own status (never "validated"), and it does not fail the run ...
    assert kept.status == "kept" and kept.stage == "gate" and "parity loss allowed" in kept.reason
    assert kept.passed and exit_code([kept]) == 0
    assert kept.to_dict()["status_label"] == "kept (parity loss allowed)"
    # ... but it does not satisfy --require, which asks for a validated artifact.
    assert exit_code([kept], require=["tflite-int8"]) == 1
    # Meeting the gate stays "validated", whether or not the bundle allowed a loss.
    met = ArtifactResult("tflite-int8", "int8", parity_loss_allowed=True)
    met, _ = run_artifact(met, lambda p: ref[p[:, 0, 0, 0]], pixels, ref, labels, NAMES)
    assert met.status == "validated" and met.reason == ""


def test_runtime_errors_and_missing_references_are_classified():
    labels, ref = _many(20)
    pixels = np.zeros((20, 1, 1, 1), dtype=np.uint8)

    def boom(_pixels):
        raise RuntimeError("kernel\nexploded")

    failed, probs = run_artifact(ArtifactResult("onnx", "fp32"), boom, pixels, ref, labels, NAMES)
    assert probs is None and failed.status == "failed" and failed.stage == "run"
    assert failed.reason == "RuntimeError: kernel exploded"
    loaded, _ = run_artifact(ArtifactResult("onnx", "fp32"), lambda p: ref[: len(p)], pixels[:8], None, None, NAMES)
    assert loaded.status == "loaded" and "no float reference" in loaded.reason
    wrong_shape, _ = run_artifact(
        ArtifactResult("onnx", "fp32"), lambda p: ref[: len(p), :2], pixels, ref, labels, NAMES
    )
    assert wrong_shape.status == "failed" and "shape" in wrong_shape.reason


def test_exit_code_requires_validated_formats():
    ok = ArtifactResult("onnx", "fp32", status="validated")
    exported = ArtifactResult("trt-int8", "int8", status="exported", stage="runtime", reason="no tensorrt")
    assert exit_code([ok, exported]) == 0
    assert exit_code([ok, exported], require=["trt-int8"]) == 1
    assert exit_code([ok], require=["onnx"]) == 0
