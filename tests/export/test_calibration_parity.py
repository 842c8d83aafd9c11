"""Calibration planning and parity arithmetic (no TensorFlow needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _tiny_run import write_dataset_csv

from endoedge.core.datasets import load_dataset
from endoedge.core.errors import BundleError, DatasetError
from endoedge.core.labels import GASTROVISION3
from endoedge.core.preprocess import PreprocessSpec
from endoedge.export.calibration import plan_calibration, prepare_records
from endoedge.export.parity import PARITY_TARGETS, ParityReference, ParityTarget, compare, pixels_sha256


@pytest.fixture(scope="module")
def dataset(export_image_root, tmp_path_factory):
    return load_dataset(write_dataset_csv(export_image_root, tmp_path_factory.mktemp("d") / "d.csv"), GASTROVISION3)


def test_plan_is_disjoint_stratified_and_deterministic(dataset):
    # Sizes that fit the 12 committed sample images (4 per class) as well as the 410 shared ones.
    plan = plan_calibration(dataset, calibration_size=6, holdout_size=6)
    again = plan_calibration(dataset, calibration_size=6, holdout_size=6)
    assert [r.path for r in plan.holdout] == [r.path for r in again.holdout]
    assert not {r.path for r in plan.holdout} & {r.path for r in plan.calibration}
    assert sorted(r.label for r in plan.holdout) == [0, 0, 1, 1, 2, 2]
    assert sorted(r.label for r in plan.calibration) == [0, 0, 1, 1, 2, 2]
    other_seed = plan_calibration(dataset, calibration_size=6, holdout_size=6, seed=1)
    assert [r.path for r in other_seed.holdout] != [r.path for r in plan.holdout]
    default = plan_calibration(dataset)
    assert len(default.holdout) == len(dataset) // 4
    assert len(default.calibration) == min(512, len(dataset) - len(default.holdout))


def test_with_training_splits_the_gate_uses_unseen_images_and_calibration_the_training_ones(dataset):
    from dataclasses import replace

    splits = ("train", "train", "val", "test")
    records = tuple(replace(r, split=splits[i % 4]) for i, r in enumerate(dataset.records))
    split_dataset = replace(dataset, records=records)
    plan = plan_calibration(split_dataset, calibration_size=4, holdout_size=3)
    assert {r.split for r in plan.holdout} <= {"val", "test"} and len(plan.holdout) == 3
    assert {r.split for r in plan.calibration} == {"train"} and len(plan.calibration) == 4
    assert plan.describe()["holdout_splits"] == "val+test" and plan.describe()["calibration_splits"] == "train"
    default = plan_calibration(split_dataset)
    assert len(default.holdout) == min(512, len(records) // 4, sum(r.split != "train" for r in records))
    # Asking for one split keeps the old behaviour inside it.
    only_test = plan_calibration(split_dataset, split="test", calibration_size=1, holdout_size=1)
    assert only_test.describe()["holdout_splits"] == "test"


def test_plan_errors_name_the_dataset(dataset):
    with pytest.raises(DatasetError, match="held-out size must be in"):
        plan_calibration(dataset, holdout_size=len(dataset))
    with pytest.raises(DatasetError, match="calibration size must be >= 1"):
        plan_calibration(dataset, calibration_size=0)
    with pytest.raises(DatasetError, match="needs at least 2 images.*'test'"):
        plan_calibration(dataset, split="test")  # the CSV has no split column values


def test_calibration_pixels_are_real_prepared_images(dataset):
    spec = PreprocessSpec.for_family("inception", 32)
    plan = plan_calibration(dataset, calibration_size=3, holdout_size=3)
    pixels = prepare_records(plan.calibration, spec)
    assert pixels.shape == (3, 32, 32, 3) and pixels.dtype == np.uint8
    assert pixels.std() > 10  # real endoscopy content, not a constant or zeros


def test_compare_measures_agreement_delta_and_sensitivity():
    ref = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 1, 0, 1])
    same = compare(ref, ref + 1e-6, labels, PARITY_TARGETS["fp32"])
    assert same.passed and same.agreement == 1.0
    flipped = ref.copy()
    flipped[2] = [0.4, 0.6]
    result = compare(ref, flipped, labels, PARITY_TARGETS["int8"])
    assert result.agreement == 0.75 and result.disagreements == 1
    assert result.sensitivity_delta_points == (-50.0, 0.0)
    assert not result.passed and any("class 0 sensitivity -50.00 pt" in f for f in result.failures)
    loose = compare(ref, flipped, labels, ParityTarget(min_agreement=0.7))
    assert loose.passed
    assert result.to_dict()["passed"] is False
    with pytest.raises(ValueError):
        compare(ref, ref[:2], labels, PARITY_TARGETS["fp32"])


def test_fp32_delta_limit_is_enforced_even_when_top1_agrees():
    ref = np.array([[0.9, 0.1]])
    result = compare(ref, ref + np.array([[-2e-4, 2e-4]]), np.array([0]), PARITY_TARGETS["fp32"])
    assert result.agreement == 1.0 and not result.passed


def test_parity_reference_round_trip_and_errors(tmp_path):
    spec = PreprocessSpec.for_family("inception", 16)
    probs = np.random.default_rng(0).dirichlet([1, 1, 1], size=4).astype(np.float32)
    ref = ParityReference(
        model="m",
        labels=tuple(GASTROVISION3.keys),
        preprocess=spec,
        images=tuple(
            {"path": f"{i}.jpg", "sha256": "0" * 64, "pixels_sha256": "1" * 64, "label": i % 3} for i in range(4)
        ),
        probabilities=probs,
        dataset={"file": "d.csv", "sha256": "2" * 64},
    )
    path = tmp_path / "ref.json"
    path.write_text(ref.to_json())
    back = ParityReference.load(path)
    assert np.array_equal(back.probabilities, probs)  # float32 values survive JSON exactly
    assert back.preprocess == spec and list(back.true_labels) == [0, 1, 2, 0]
    data = json.loads(path.read_text())
    data["probabilities"] = data["probabilities"][:3]
    path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match="expected \\(4, 3\\)"):
        ParityReference.load(path)
    path.write_text('{"format": "something-else"}')
    with pytest.raises(BundleError, match="not a parity reference"):
        ParityReference.load(path)


def test_pixels_sha256_sees_channel_order():
    pixels = np.arange(2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 3)
    assert pixels_sha256(pixels) != pixels_sha256(pixels[..., ::-1])
    assert pixels_sha256(pixels) == pixels_sha256(pixels.copy())
