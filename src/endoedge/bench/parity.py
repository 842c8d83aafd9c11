"""Accuracy parity of every artifact against the float reference.

Pure functions first (metrics, gates, status), then :func:`run_parity`, which opens a bundle, finds the
reference probabilities (the SavedModel run here when TensorFlow is installed, otherwise the bundle's
recorded ``parity-reference``) and runs each artifact that has a runtime here.

Status of each artifact, as Ultralytics separates them:

* ``exported`` — listed in the bundle and its checksum is right, but it cannot run here (no runtime,
  or an engine built for another GPU); the reason says which;
* ``loaded`` — loaded and ran, but there was no reference to validate against;
* ``validated`` — ran and met its gate;
* ``kept`` — ran and missed its gate, but the bundle kept it on request (exported with
  ``--allow-parity-loss``, marked ``parity_loss_allowed`` in the manifest): reported, not validated,
  and it does not fail the run; ``reason`` lists the targets it missed;
* ``failed`` — missing file, checksum mismatch, load or run error, or a missed gate; ``stage`` says
  where it failed and ``reason`` why.

A failure makes ``endoedge bench parity`` exit non-zero, so CI and installers can gate on it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from endoedge.export.parity import PARITY_TARGETS, ParityTarget
from endoedge.export.parity import compare as gate_compare

STATUSES = ("exported", "loaded", "validated", "kept", "failed")

#: What each status means, in the words the tables print (the JSON keeps the key).
STATUS_LABELS = {
    "exported": "exported",
    "loaded": "loaded",
    "validated": "validated",
    "kept": "kept (parity loss allowed)",
    "failed": "failed",
}


def status_label(status: str) -> str:
    """The readable form of a status key (an unknown key is returned as is)."""
    return STATUS_LABELS.get(status, status)


def top1(probs: np.ndarray) -> np.ndarray:
    """Predicted class per row (a single sigmoid column is thresholded at 0.5)."""
    if probs.ndim != 2:
        raise ValueError(f"expected N×C probabilities, got shape {probs.shape}")
    if probs.shape[1] == 1:
        return (probs[:, 0] >= 0.5).astype(np.int64)
    return np.argmax(probs, axis=1)


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """``num_classes × num_classes`` counts, rows = true class, columns = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, dtype=np.int64), np.asarray(predicted, dtype=np.int64)), 1)
    return matrix


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else math.nan


def per_class_metrics(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> dict[str, list[float]]:
    """One-vs-rest sensitivity, specificity, PPV and NPV per class (NaN where undefined)."""
    matrix = confusion_matrix(labels, predicted, num_classes)
    total = matrix.sum()
    out: dict[str, list[float]] = {"sensitivity": [], "specificity": [], "ppv": [], "npv": [], "support": []}
    for c in range(num_classes):
        tp = matrix[c, c]
        fn = matrix[c].sum() - tp
        fp = matrix[:, c].sum() - tp
        tn = total - tp - fn - fp
        out["sensitivity"].append(_ratio(tp, tp + fn))
        out["specificity"].append(_ratio(tn, tn + fp))
        out["ppv"].append(_ratio(tp, tp + fp))
        out["npv"].append(_ratio(tn, tn + fn))
        out["support"].append(float(tp + fn))
    return out


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


@dataclass(frozen=True)
class ParityMetrics:
    """An artifact's outputs compared with the reference's on the same images.

    Attributes:
        images: Number of images.
        top1_agreement: Fraction with the same top-1 class as the reference.
        max_abs_diff: Largest ``|Δp|`` over all images and classes.
        mean_abs_diff: Mean ``|Δp|``.
        accuracy: Top-1 accuracy against the labels (NaN without labels).
        reference_accuracy: The reference's accuracy on the same images.
        mean_sensitivity: Macro mean over classes with positives (likewise specificity, PPV, NPV).
        mean_specificity: See ``mean_sensitivity``.
        mean_ppv: See ``mean_sensitivity``.
        mean_npv: See ``mean_sensitivity``.
        worst_sensitivity_delta: Largest ``|sensitivity - reference sensitivity|`` over classes.
        worst_sensitivity_class: The class where that happens ("" without labels).
        per_class: Per-class sensitivity of the artifact and the reference, keyed by class name.
    """

    images: int
    top1_agreement: float
    max_abs_diff: float
    mean_abs_diff: float
    accuracy: float = math.nan
    reference_accuracy: float = math.nan
    mean_sensitivity: float = math.nan
    mean_specificity: float = math.nan
    mean_ppv: float = math.nan
    mean_npv: float = math.nan
    worst_sensitivity_delta: float = math.nan
    worst_sensitivity_class: str = ""
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (NaN becomes ``None``)."""
        return {k: _json_number(v) for k, v in self.__dict__.items()}


def _json_number(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_number(v) for k, v in value.items()}
    return value


def compare_outputs(
    reference: np.ndarray,
    candidate: np.ndarray,
    labels: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
) -> ParityMetrics:
    """Compare an artifact's probabilities with the reference's on the same images.

    Args:
        reference: ``N×C`` float reference probabilities.
        candidate: ``N×C`` artifact probabilities.
        labels: True class index per image, or ``None`` (then only agreement and ``|Δp|``).
        class_names: Names of the ``C`` classes (defaults to indices).

    Raises:
        ValueError: Shapes differ, are empty, or labels do not match.
    """
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape or ref.ndim != 2 or ref.shape[0] == 0:
        raise ValueError(f"reference {ref.shape} and candidate {cand.shape} must be the same non-empty N×C")
    diff = np.abs(ref - cand)
    ref_top, cand_top = top1(ref), top1(cand)
    metrics: dict[str, Any] = {
        "images": int(ref.shape[0]),
        "top1_agreement": float(np.mean(ref_top == cand_top)),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
    }
    if labels is None:
        return ParityMetrics(**metrics)
    y = np.asarray(labels, dtype=np.int64)
    num_classes = max(ref.shape[1], 2)
    if y.shape != (ref.shape[0],) or y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"labels must be {ref.shape[0]} class indices in [0, {num_classes})")
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    cand_m = per_class_metrics(y, cand_top, num_classes)
    ref_m = per_class_metrics(y, ref_top, num_classes)
    deltas = [
        abs(a - b) if not (math.isnan(a) or math.isnan(b)) else math.nan
        for a, b in zip(cand_m["sensitivity"], ref_m["sensitivity"], strict=True)
    ]
    finite = [(d, i) for i, d in enumerate(deltas) if not math.isnan(d)]
    worst, worst_i = max(finite) if finite else (math.nan, -1)
    metrics.update(
        accuracy=float(np.mean(cand_top == y)),
        reference_accuracy=float(np.mean(ref_top == y)),
        mean_sensitivity=_nanmean(cand_m["sensitivity"]),
        mean_specificity=_nanmean(cand_m["specificity"]),
        mean_ppv=_nanmean(cand_m["ppv"]),
        mean_npv=_nanmean(cand_m["npv"]),
        worst_sensitivity_delta=worst,
        worst_sensitivity_class=names[worst_i] if worst_i >= 0 else "",
        per_class={
            names[c]: {
                "support": cand_m["support"][c],
                "sensitivity": cand_m["sensitivity"][c],
                "reference_sensitivity": ref_m["sensitivity"][c],
            }
            for c in range(num_classes)
        },
    )
    return ParityMetrics(**metrics)


@dataclass
class ArtifactResult:
    """The parity outcome of one artifact.

    Attributes:
        format: Artifact format key.
        precision: fp32 / fp16 / int8.
        backend: Backend that ran it ("" when it did not run).
        status: One of :data:`STATUSES`.
        stage: For ``failed``: ``file``, ``load``, ``run``, ``gate`` or ``video``; for ``kept``: ``gate`` or
            ``video``; for ``exported``: ``runtime``.
        reason: Why it is not ``validated`` ("" when it is).
        metrics: The comparison (``None`` when it did not run or had no reference).
        gate: The export gate's target applied (from :data:`endoedge.export.parity.PARITY_TARGETS`).
        gate_failures: The targets it missed.
        parity_loss_allowed: The bundle kept it despite a missed export gate; a miss is then reported
            but does not fail the run.
        seconds: Time spent running it on the parity images.
    """

    format: str
    precision: str
    backend: str = ""
    status: str = "exported"
    stage: str = ""
    reason: str = ""
    metrics: ParityMetrics | None = None
    gate: ParityTarget | None = None
    gate_failures: tuple[str, ...] = ()
    parity_loss_allowed: bool = False
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        """True unless it failed (``kept``, a gate miss kept on request, does not fail the run)."""
        return self.status != "failed"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "format": self.format,
            "precision": self.precision,
            "backend": self.backend,
            "status": self.status,
            "status_label": status_label(self.status),
            "stage": self.stage,
            "reason": self.reason,
            "metrics": self.metrics.to_dict() if self.metrics else None,
            "gate": _target_dict(self.gate),
            "gate_failures": list(self.gate_failures),
            "parity_loss_allowed": self.parity_loss_allowed,
            "seconds": self.seconds,
        }


def _target_dict(target: ParityTarget | None) -> dict[str, Any] | None:
    if target is None:
        return None
    return {
        "min_agreement": target.min_agreement,
        "max_abs_delta": target.max_abs_delta,
        "max_sensitivity_delta_points": target.max_sensitivity_delta_points,
    }


def classify(result: ArtifactResult) -> ArtifactResult:
    """Set ``status``/``stage``/``reason`` of a result that ran, from its gate failures.

    A result that already failed (file, load or run) or never ran (``exported``) is returned as is; one
    without metrics (no reference) is ``loaded``; one that missed its gate is ``kept`` when the bundle
    allows its parity loss, else ``failed``.
    """
    if result.status in ("failed", "exported"):
        return result
    if result.metrics is None or result.gate is None:
        result.status = "loaded"
        result.reason = result.reason or "no float reference to validate against"
        return result
    misses = list(result.gate_failures)
    if not misses:
        result.status, result.stage, result.reason = "validated", "", ""
    elif result.parity_loss_allowed:
        # Not "validated": it missed the gate. It was kept on request, so it is reported but does not fail.
        result.status, result.stage = "kept", "gate"
        result.reason = "kept with parity loss allowed: " + "; ".join(misses)
    else:
        result.status, result.stage, result.reason = "failed", "gate", "; ".join(misses)
    return result


def run_artifact(
    result: ArtifactResult,
    infer: Callable[[np.ndarray], np.ndarray],
    pixels: np.ndarray,
    reference: np.ndarray | None,
    labels: np.ndarray | None,
    class_names: Sequence[str],
    batch: int = 8,
) -> tuple[ArtifactResult, np.ndarray | None]:
    """Run ``infer`` over the parity pixels in batches, compare with the reference and classify.

    Errors raised by ``infer`` make the result ``failed`` at stage ``run`` with the error in one line.

    Returns:
        The classified result and the artifact's probabilities (``None`` when it failed to run).
    """
    import time

    start = time.perf_counter()
    outputs = []
    try:
        for i in range(0, len(pixels), batch):
            outputs.append(np.asarray(infer(pixels[i : i + batch]), dtype=np.float32))
        probs = np.concatenate(outputs)
    except Exception as exc:  # any runtime error is a reported failure, not a crash of the benchmark
        result.status, result.stage = "failed", "run"
        result.reason = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:300]
        result.seconds = time.perf_counter() - start
        return result, None
    result.seconds = time.perf_counter() - start
    result.status = "loaded"
    if reference is not None:
        if probs.shape != reference.shape:
            result.status, result.stage = "failed", "run"
            result.reason = f"output shape {probs.shape} differs from the reference's {reference.shape}"
            return result, probs
        result.metrics = compare_outputs(reference, probs, labels, class_names)
        if labels is not None:
            result.gate = PARITY_TARGETS[result.precision]
            result.gate_failures = gate_compare(reference, probs, labels, result.gate).failures
    return classify(result), probs


def exit_code(results: Sequence[ArtifactResult], require: Sequence[str] = ()) -> int:
    """0 when nothing failed and every required format was validated; 1 otherwise.

    A ``kept`` artifact does not fail the run, but it does not satisfy ``require`` either.
    """
    if any(r.status == "failed" for r in results):
        return 1
    validated = {r.format for r in results if r.status == "validated"}
    return 1 if any(fmt not in validated for fmt in require) else 0
