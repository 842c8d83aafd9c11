"""``endoedge bench parity``: every artifact of a bundle against the float reference, per image and per video.

The reference, in order of preference (``reference="auto"``):

1. ``savedmodel`` — the bundle's SavedModel run here on the parity images (needs TensorFlow: a desktop);
2. ``bundle`` — the float model's probabilities recorded at export in the bundle's ``parity-reference``
   file (:class:`endoedge.export.parity.ParityReference`): the parity images are then the recorded ones,
   found in ``--data`` by path, and each image's file sha256 and prepared-pixel sha256 are checked first
   so a different image or a preprocessing difference is reported as such, not as a model difference.

Video-level parity runs each artifact on every frame of a clip, feeds the probabilities through the
daemon's smoother (:class:`endoedge.edge.stages.smoothing.Smoother`) and compares the displayed-site
sequence with the reference's: frame agreement, number of site changes, and the delay of each site's
first display.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from endoedge.bench.latency import format_precision, runnable_formats
from endoedge.bench.parity import ArtifactResult, classify, compare_outputs, run_artifact
from endoedge.core.bundle import Bundle
from endoedge.core.datasets import Dataset, load_dataset
from endoedge.core.errors import BundleError, DatasetError, EndoedgeError, one_line
from endoedge.core.fileio import sha256_file
from endoedge.core.formats import FORMATS
from endoedge.core.preprocess import FieldDetector, load_pixels, prepare_pixels
from endoedge.export.parity import PARITY_REFERENCE_ROLE, PARITY_TARGETS, ParityReference, pixels_sha256

REFERENCE_CHOICES = ("auto", "savedmodel", "bundle", "none")


@dataclass
class ParitySet:
    """The images parity is measured on.

    Attributes:
        pixels: Prepared ``uint8`` ``N×H×W×3`` pixels.
        labels: True class index per image.
        names: Image paths as written in the dataset.
        reference: Float reference probabilities ``N×C`` (``None``: no reference).
        reference_source: Where the reference came from (for reports).
        reference_format: The artifact that produced the reference here (``savedmodel``), else ``None``.
        problems: Images that could not be used, with why (missing, different file, different pixels).
    """

    pixels: np.ndarray
    labels: np.ndarray
    names: list[str]
    reference: np.ndarray | None = None
    reference_source: str = "none"
    reference_format: str | None = None
    problems: list[str] = field(default_factory=list)


def _check_labelset(bundle: Bundle, dataset: Dataset) -> None:
    if list(dataset.labelset.keys) != list(bundle.manifest.labelset.keys):
        raise DatasetError(
            f"dataset label set {dataset.labelset.tag} has labels {dataset.labelset.keys}, but the model "
            f"{bundle.manifest.name!r} outputs {bundle.manifest.labelset.keys}",
            dataset.source,
        )


def _subsample(dataset: Dataset, limit: int | None) -> Dataset:
    """Every k-th record so ``limit`` images keep the class mix of the whole set."""
    if not limit or len(dataset) <= limit:
        return dataset
    step = len(dataset) / limit
    records = tuple(dataset.records[int(i * step)] for i in range(limit))
    return Dataset(records, dataset.labelset, dataset.source)


def recorded_reference(bundle: Bundle) -> ParityReference | None:
    """The bundle's recorded float reference, or ``None`` when it has none."""
    path = bundle.file_path(PARITY_REFERENCE_ROLE)
    return ParityReference.load(path) if path is not None else None


def parity_set_from_reference(bundle: Bundle, reference: ParityReference, dataset: Dataset) -> ParitySet:
    """The recorded parity images, found in ``dataset`` by path, else by content, and checked by sha256.

    Finding them by content lets any dataset manifest that lists the same files serve (another import
    of the same folder, paths relative to another place, a copy on the target).

    Raises:
        DatasetError: None of the recorded images could be used (the message says why for the first).
    """
    by_path = {r.path: r for r in dataset.records}
    by_content: dict[str, Any] | None = None  # sha256 -> record, hashed only when a path is not found
    keep: list[int] = []
    problems: list[str] = []
    pixels: list[np.ndarray] = []
    spec = bundle.manifest.preprocess
    for i, image in enumerate(reference.images):
        record = by_path.get(str(image.get("path")))
        if record is None and image.get("sha256"):
            if by_content is None:
                by_content = {}
                for candidate in dataset.records:
                    with contextlib.suppress(OSError):
                        by_content.setdefault(sha256_file(candidate.abspath), candidate)
            record = by_content.get(str(image["sha256"]))
        if record is None:
            problems.append(f"{image.get('path')}: not in {dataset.source} (by path or content)")
            continue
        if image.get("sha256") and sha256_file(record.abspath) != image["sha256"]:
            problems.append(f"{record.path}: file differs from the one the reference was made on")
            continue
        prepared = load_pixels([record.abspath], spec)[0]
        if image.get("pixels_sha256") and pixels_sha256(prepared) != image["pixels_sha256"]:
            problems.append(f"{record.path}: prepared pixels differ from export's (preprocessing differs here)")
            continue
        keep.append(i)
        pixels.append(prepared)
    if not keep:
        first = problems[0] if problems else "the reference lists no images"
        raise DatasetError(f"no parity reference image usable ({len(problems)} problems; first: {first})")
    return ParitySet(
        pixels=np.stack(pixels),
        labels=reference.true_labels[keep],
        names=[str(reference.images[i]["path"]) for i in keep],
        reference=reference.probabilities[keep],
        reference_source=f"bundle parity-reference ({len(keep)} of {len(reference.images)} images)",
        problems=problems,
    )


def _tensorflow_available() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


def build_parity_set(
    bundle: Bundle,
    data: str | Path,
    split: str | None = None,
    limit: int | None = None,
    reference: str = "auto",
    threads: int = 0,
) -> ParitySet:
    """Load the parity images and the float reference for them.

    Args:
        bundle: Opened bundle.
        data: Dataset manifest CSV.
        split: Use only this split (``test``...); ``None`` for all rows.
        limit: At most this many images (every k-th, keeping the class mix).
        reference: One of :data:`REFERENCE_CHOICES`.
        threads: CPU threads for the SavedModel reference (0: TensorFlow's default).

    Raises:
        DatasetError: Unreadable dataset, other label set, no usable images.
        BundleError: The reference asked for does not exist here.
    """
    if reference not in REFERENCE_CHOICES:
        raise EndoedgeError(f"unknown reference {reference!r} (valid: {', '.join(REFERENCE_CHOICES)})")
    dataset = load_dataset(data)
    _check_labelset(bundle, dataset)
    if split:
        dataset = dataset.split(split)
    if len(dataset) == 0:
        raise DatasetError(f"no images{f' in split {split!r}' if split else ''}", data)
    has_savedmodel = any(a.format == "savedmodel" for a in bundle.manifest.artifacts)
    use = reference
    if reference == "auto":
        if has_savedmodel and _tensorflow_available():
            use = "savedmodel"
        elif bundle.file_path(PARITY_REFERENCE_ROLE) is not None:
            use = "bundle"
        else:
            use = "none"
    if use == "bundle":
        recorded = recorded_reference(bundle)
        if recorded is None:
            raise BundleError(f"bundle has no {PARITY_REFERENCE_ROLE} file", bundle.path)
        result = parity_set_from_reference(bundle, recorded, dataset)
        if limit and len(result.names) > limit:
            idx = [int(i * len(result.names) / limit) for i in range(limit)]
            result.pixels, result.labels = result.pixels[idx], result.labels[idx]
            result.names = [result.names[i] for i in idx]
            assert result.reference is not None
            result.reference = result.reference[idx]
        return result
    dataset = _subsample(dataset, limit)
    pixels = load_pixels(dataset.paths, bundle.manifest.preprocess)
    out = ParitySet(pixels, np.asarray(dataset.labels, dtype=np.int64), [r.path for r in dataset.records])
    if use == "savedmodel":
        if not has_savedmodel:
            raise BundleError("bundle has no savedmodel artifact to use as the reference", bundle.path)
        from endoedge.edge.backends import create_backend

        backend = create_backend("savedmodel", bundle, "savedmodel", threads=threads or None)
        out.reference = np.concatenate([backend.infer(pixels[i : i + 8]) for i in range(0, len(pixels), 8)])
        out.reference_source = f"savedmodel run here ({len(pixels)} images)"
        out.reference_format = "savedmodel"
        backend.close()
    return out


@dataclass
class ParityReport:
    """The outcome of ``endoedge bench parity``.

    Attributes:
        bundle: Bundle name.
        bundle_path: Where it was opened.
        data: Dataset manifest used.
        reference_source: Where the float reference came from.
        images: Number of parity images.
        results: One per artifact.
        video: Video-level parity per format (empty without a clip).
        problems: Images left out, with why.
    """

    bundle: str
    bundle_path: str
    data: str
    reference_source: str
    images: int
    results: list[ArtifactResult]
    video: dict[str, dict[str, Any]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "bundle": self.bundle,
            "bundle_path": self.bundle_path,
            "data": self.data,
            "reference_source": self.reference_source,
            "images": self.images,
            "results": [r.to_dict() for r in self.results],
            "video": self.video,
            "problems": self.problems,
        }


def run_bundle_parity(
    bundle: Bundle,
    parity_set: ParitySet,
    formats: Sequence[str] | None = None,
    threads: int = 0,
    batch: int = 8,
    backend_options: dict[str, dict[str, Any]] | None = None,
) -> tuple[list[ArtifactResult], dict[str, np.ndarray]]:
    """Run every artifact (or ``formats``) on the parity set and classify each.

    Returns:
        The results, and the probabilities of each artifact that ran (keyed by format).
    """
    from endoedge.edge.backends import create_backend

    class_names = list(bundle.manifest.labelset.keys)
    results: list[ArtifactResult] = []
    outputs: dict[str, np.ndarray] = {}
    checks = {c.file: c for c in bundle.check_files()}
    listed = {a.format: a for a in bundle.manifest.artifacts}
    for fmt, runtime, reason in runnable_formats(bundle, formats):
        art = listed.get(fmt)
        result = ArtifactResult(
            fmt, format_precision(bundle, fmt), parity_loss_allowed=bool(art and art.parity_loss_allowed)
        )
        check = checks.get(art.file) if art else None
        if art and check is not None and check.actual is None:
            result.status, result.stage, result.reason = "failed", "file", f"{art.file} is missing"
            results.append(result)
            continue
        if art and check is not None and not check.ok:
            result.status, result.stage = "failed", "file"
            result.reason = f"{art.file}: sha256 {check.actual} != manifest {check.expected}"
            results.append(result)
            continue
        if reason:
            result.stage, result.reason = "runtime", reason
            results.append(result)
            continue
        if fmt == parity_set.reference_format and parity_set.reference is not None:
            # The reference itself, just computed from this artifact: compared with itself, not run twice.
            ref = parity_set.reference
            result.backend, result.status = runtime, "loaded"
            result.metrics = compare_outputs(ref, ref, parity_set.labels, class_names)
            result.gate = PARITY_TARGETS[result.precision]
            classify(result)
            result.reason = "the float reference (run once)"
            outputs[fmt] = ref
            results.append(result)
            continue
        options = {"threads": threads or None, **(backend_options or {}).get(runtime, {})}
        try:
            backend = create_backend(runtime, bundle, fmt, **options)
        except EndoedgeError as exc:
            result.status, result.stage, result.reason = "failed", "load", one_line(exc)
            results.append(result)
            continue
        result.backend = runtime
        result, probs = run_artifact(
            result, backend.infer, parity_set.pixels, parity_set.reference, parity_set.labels, class_names, batch
        )
        with contextlib.suppress(Exception):
            backend.close()
        if probs is not None:
            outputs[fmt] = probs
        results.append(result)
    return results, outputs


# ------------------------------------------------------------------------------------------------
# video-level parity
# ------------------------------------------------------------------------------------------------


def read_clip(path: str | Path, max_frames: int | None = None) -> tuple[list[np.ndarray], float]:
    """Decode a clip's frames (BGR) with OpenCV and return them with the clip's fps.

    Raises:
        DatasetError: The clip cannot be opened or has no frames.
    """
    import cv2

    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise DatasetError("cannot open video clip", path)
    fps = float(capture.get(cv2.CAP_PROP_FPS)) or 30.0
    frames: list[np.ndarray] = []
    try:
        while max_frames is None or len(frames) < max_frames:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(frame)
    finally:
        capture.release()
    if not frames:
        raise DatasetError("video clip has no decodable frames", path)
    return frames, fps


def clip_pixels(frames: Sequence[np.ndarray], bundle: Bundle) -> np.ndarray:
    """Prepare every frame as the daemon does: a cached field detector, then crop/resize/channel order."""
    detector = FieldDetector()
    spec = bundle.manifest.preprocess
    return np.stack([prepare_pixels(f, spec, detector(f) if spec.field_crop else None) for f in frames])


def displayed_sequence(probs: np.ndarray, fps: float, smoothing: dict[str, Any] | None = None) -> list[int | None]:
    """The class the daemon would display on each frame, given per-frame probabilities."""
    from endoedge.edge.stages.smoothing import Smoother

    smoother = Smoother(probs.shape[1], **(smoothing or {}))
    return [smoother.update(p, i / fps).index for i, p in enumerate(probs)]


def _changes(sequence: Sequence[int | None]) -> int:
    return sum(1 for a, b in itertools.pairwise(sequence) if a != b)


def _first_shown(sequence: Sequence[int | None]) -> dict[int, int]:
    first: dict[int, int] = {}
    for i, value in enumerate(sequence):
        if value is not None and value not in first:
            first[value] = i
    return first


def compare_sequences(
    reference: Sequence[int | None], candidate: Sequence[int | None], fps: float, class_names: Sequence[str]
) -> dict[str, Any]:
    """Compare two displayed-site sequences of the same clip.

    Returns:
        ``frames``, ``displayed_agreement`` (fraction of frames showing the same site or both blank),
        ``changes`` / ``reference_changes`` (site switches, i.e. flicker), ``onset_delay_s`` per site
        (candidate's first display minus the reference's; ``None`` when one of them never shows it),
        ``missing_sites`` (shown by the reference, never by the candidate) and ``extra_sites``.
    """
    if len(reference) != len(candidate) or not reference:
        raise ValueError("sequences must have the same, non-zero length")
    agree = sum(1 for a, b in zip(reference, candidate, strict=True) if a == b) / len(reference)
    ref_first, cand_first = _first_shown(reference), _first_shown(candidate)
    onset = {
        class_names[c]: (cand_first[c] - ref_first[c]) / fps if c in cand_first else None for c in sorted(ref_first)
    }
    return {
        "frames": len(reference),
        "displayed_agreement": agree,
        "changes": _changes(candidate),
        "reference_changes": _changes(reference),
        "onset_delay_s": onset,
        "worst_onset_delay_s": max((abs(v) for v in onset.values() if v is not None), default=0.0),
        "missing_sites": [class_names[c] for c in sorted(ref_first) if c not in cand_first],
        "extra_sites": [class_names[c] for c in sorted(cand_first) if c not in ref_first],
    }


def run_video_parity(
    bundle: Bundle,
    clip: str | Path,
    results: list[ArtifactResult],
    threads: int = 0,
    max_frames: int | None = None,
    smoothing: dict[str, Any] | None = None,
    batch: int = 8,
) -> dict[str, dict[str, Any]]:
    """Video-level parity of each artifact that ran, against the float reference's displayed sequence.

    The reference sequence comes from the SavedModel when TensorFlow is here, else from the fp32 artifact
    that was validated against the recorded reference (named in the result). A displayed-site agreement
    below the artifact's top-1 agreement target marks its result ``failed`` at stage ``video`` (``kept``
    when the bundle allows its parity loss).
    """
    from endoedge.edge.backends import create_backend

    frames, fps = read_clip(clip, max_frames)
    pixels = clip_pixels(frames, bundle)
    del frames
    class_names = list(bundle.manifest.labelset.keys)
    ran = [r for r in results if r.status in ("validated", "kept", "loaded") and r.backend]
    by_format = {r.format: r for r in ran}
    ref_format = None
    if "savedmodel" in by_format:
        ref_format = "savedmodel"
    else:
        ref_format = next((r.format for r in ran if r.precision == "fp32" and r.status == "validated"), None)
    if ref_format is None:
        return {"_reference": {"error": "no float reference could run on the clip"}}

    def run(fmt: str) -> np.ndarray:
        runtime = FORMATS[fmt].runtime
        backend = create_backend(runtime, bundle, fmt, threads=threads or None)
        try:
            return np.concatenate([backend.infer(pixels[i : i + batch]) for i in range(0, len(pixels), batch)])
        finally:
            backend.close()

    start = time.perf_counter()
    ref_probs = run(ref_format)
    ref_seq = displayed_sequence(ref_probs, fps, smoothing)
    video: dict[str, dict[str, Any]] = {
        "_reference": {
            "format": ref_format,
            "clip": str(clip),
            "frames": len(pixels),
            "fps": fps,
            "seconds": time.perf_counter() - start,
            "smoothing": smoothing or "daemon defaults",
            "reference_changes": _changes(ref_seq),
        }
    }
    for result in ran:
        if result.format == ref_format:
            continue
        try:
            probs = run(result.format)
        except Exception as exc:  # reported against the artifact, the others still run
            video[result.format] = {"error": f"{type(exc).__name__}: {one_line(exc)}"}
            result.status, result.stage, result.reason = "failed", "video", video[result.format]["error"]
            continue
        per_frame = compare_outputs(ref_probs, probs)
        entry = compare_sequences(ref_seq, displayed_sequence(probs, fps, smoothing), fps, class_names)
        entry["frame_top1_agreement"] = per_frame.top1_agreement
        entry["frame_max_abs_diff"] = per_frame.max_abs_diff
        target = PARITY_TARGETS[result.precision].min_agreement
        entry["target_displayed_agreement"] = target
        entry["passed"] = entry["displayed_agreement"] >= target and not entry["missing_sites"]
        video[result.format] = entry
        if not entry["passed"] and result.status != "failed":
            missing = f", never shows {', '.join(entry['missing_sites'])}" if entry["missing_sites"] else ""
            miss = f"displayed-site agreement {entry['displayed_agreement']:.4f} < {target}{missing}"
            if not result.parity_loss_allowed:
                result.status, result.stage, result.reason = "failed", "video", miss
            elif result.status != "kept":
                # Met the image gate but not the video one: kept on request, so not "validated" either.
                result.status, result.stage = "kept", "video"
                result.reason = f"kept with parity loss allowed: {miss}"
    return video
