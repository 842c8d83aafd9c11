"""Calibration and held-out parity images from a dataset manifest.

Quantisers are calibrated on real images of the model's own domain, never on random tensors: the
activation ranges of an endoscopy model on noise have little to do with its ranges on mucosa. The
images come from a dataset manifest (``endoedge datasets import``) and go through the shared
:mod:`endoedge.core.preprocess`, exactly as the daemon prepares frames.

The manifest's images are split deterministically into two disjoint, class-stratified parts:

* the **held-out** part, on which every artifact is compared with the float model (the export gate)
  and whose float probabilities become the bundle's parity reference;
* the **calibration** part (default up to 512 images), fed to the quantisers.

When the manifest carries the training splits (and no single ``split`` is asked for), the held-out
part comes from the ``val`` and ``test`` images and the calibration part from ``train``. The model is
confident on the images it was trained on, and quantisation rarely flips a confident answer: a gate
measured on training images would pass artifacts that flip the borderline cases a new patient brings.

Both parts are drawn round-robin over classes (each class's images in a seeded, path-stable order),
so rare classes are represented as long as they have images left.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from endoedge.core.datasets import SPLITS, Dataset, Record, load_dataset
from endoedge.core.errors import DatasetError
from endoedge.core.fileio import sha256_file
from endoedge.core.labels import LabelSet
from endoedge.core.preprocess import PreprocessSpec, normalize, prepare_pixels, read_image

DEFAULT_CALIBRATION_SIZE = 512
MAX_DEFAULT_HOLDOUT = 512


@dataclass(frozen=True)
class CalibrationPlan:
    """Which images calibrate and which judge parity.

    Attributes:
        dataset: The dataset manifest the images come from.
        calibration: Images fed to quantisers.
        holdout: Images the export gate compares on (disjoint from ``calibration``).
    """

    dataset: Dataset
    calibration: tuple[Record, ...]
    holdout: tuple[Record, ...]
    calibration_splits: str = "all"
    holdout_splits: str = "all"

    def describe(self) -> dict[str, object]:
        """Provenance for the manifest's ``source``."""
        return {
            "dataset": str(self.dataset.source) if self.dataset.source else "",
            "dataset_sha256": self.dataset.sha256() if self.dataset.source else "",
            "calibration_images": len(self.calibration),
            "calibration_splits": self.calibration_splits,
            "holdout_images": len(self.holdout),
            "holdout_splits": self.holdout_splits,
        }


def _stable_order(records: Sequence[Record], seed: int) -> list[Record]:
    """Shuffle by a hash of (seed, path): the same manifest gives the same order on every machine."""
    return sorted(records, key=lambda r: hashlib.sha256(f"{seed}:{r.path}".encode()).hexdigest())


def _round_robin(per_class: dict[int, list[Record]], count: int) -> list[Record]:
    """Take ``count`` records, one class at a time, removing them from ``per_class``."""
    taken: list[Record] = []
    classes = sorted(per_class)
    while len(taken) < count and any(per_class[c] for c in classes):
        for cls in classes:
            if per_class[cls] and len(taken) < count:
                taken.append(per_class[cls].pop(0))
    return taken


def plan_calibration(
    dataset: Dataset,
    calibration_size: int = DEFAULT_CALIBRATION_SIZE,
    holdout_size: int | None = None,
    split: str | None = None,
    seed: int = 0,
) -> CalibrationPlan:
    """Split a dataset's images into calibration and held-out parts.

    Args:
        dataset: The dataset manifest (labels in the model's label set).
        calibration_size: Maximum calibration images.
        holdout_size: Held-out images; default a quarter of the images, at most 512.
        split: Use only this split of the manifest (``train``/``val``/``test``); default all images.
        seed: Order seed.

    Raises:
        DatasetError: Too few images, or bad sizes (names the dataset manifest).
    """
    where = dataset.source
    if split is not None:
        if split not in SPLITS:
            raise DatasetError(f"unknown split {split!r} (valid: {', '.join(SPLITS)})", where)
        dataset = dataset.split(split)
    records = list(dataset.records)
    if len(records) < 2:
        raise DatasetError(
            f"needs at least 2 images for calibration and parity, found {len(records)}"
            + (f" in split {split!r}" if split else ""),
            where,
        )
    if calibration_size < 1:
        raise DatasetError(f"calibration size must be >= 1, got {calibration_size}", where)
    unseen = [r for r in records if r.split in ("val", "test")]
    seen = [r for r in records if r.split == "train"]
    by_split = split is None and bool(unseen) and bool(seen)
    if holdout_size is None:
        holdout_size = max(1, min(MAX_DEFAULT_HOLDOUT, len(records) // 4, len(unseen) if by_split else len(records)))
    if not 1 <= holdout_size < len(records):
        raise DatasetError(f"held-out size must be in 1..{len(records) - 1}, got {holdout_size}", where)
    if by_split:
        # Gate on what the model never trained on; calibrate on its training images.
        holdout = _round_robin(_by_class(unseen, seed), holdout_size)
        calibration = _round_robin(_by_class(seen, seed), calibration_size)
        return CalibrationPlan(dataset, tuple(calibration), tuple(holdout), "train", "val+test")
    per_class = _by_class(records, seed)
    holdout = _round_robin(per_class, holdout_size)
    calibration = _round_robin(per_class, calibration_size)
    label = split or "all"
    return CalibrationPlan(dataset, tuple(calibration), tuple(holdout), label, label)


def _by_class(records: Sequence[Record], seed: int) -> dict[int, list[Record]]:
    """Records per class, each class in the seeded, path-stable order."""
    per_class: dict[int, list[Record]] = defaultdict(list)
    for record in _stable_order(records, seed):
        per_class[record.label].append(record)
    return per_class


def load_plan(
    manifest_path: str | Path,
    labelset: LabelSet,
    calibration_size: int = DEFAULT_CALIBRATION_SIZE,
    holdout_size: int | None = None,
    split: str | None = None,
    seed: int = 0,
) -> CalibrationPlan:
    """Read a dataset manifest against the model's label set and plan calibration (see :func:`plan_calibration`)."""
    dataset = load_dataset(manifest_path, labelset=labelset)
    return plan_calibration(dataset, calibration_size, holdout_size, split, seed)


def prepare_records(records: Sequence[Record], spec: PreprocessSpec) -> np.ndarray:
    """Read and prepare images as ``uint8`` ``N×H×W×3`` pixels in the model's channel order."""
    if not records:
        return np.zeros((0, spec.height, spec.width, 3), dtype=np.uint8)
    return np.stack([prepare_pixels(read_image(r.abspath), spec) for r in records])


def normalized_batches(pixels: np.ndarray, spec: PreprocessSpec, batch_size: int = 1) -> Iterator[np.ndarray]:
    """Yield the float model inputs of prepared pixels, ``batch_size`` images at a time."""
    for start in range(0, len(pixels), batch_size):
        yield normalize(pixels[start : start + batch_size], spec)


def image_entries(records: Sequence[Record], pixels: np.ndarray) -> list[dict[str, object]]:
    """Parity-reference image entries: manifest path, file sha256, prepared-pixel sha256, label."""
    from endoedge.export.parity import pixels_sha256

    return [
        {
            "path": r.path,
            "sha256": sha256_file(r.abspath),
            "pixels_sha256": pixels_sha256(p),
            "label": int(r.label),
        }
        for r, p in zip(records, pixels, strict=True)
    ]
