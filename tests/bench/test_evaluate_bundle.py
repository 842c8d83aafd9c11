"""``endoedge evaluate BUNDLE --data CSV``: every artifact scored on labelled images, without TensorFlow."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from endoedge.bench.evaluate_bundle import evaluate_bundle
from endoedge.core.errors import DatasetError


def write_manifest(path: Path, rows: list[tuple[str, str]], labelset: str = "gastrovision3") -> Path:
    lines = [f"# endoedge-dataset v1 labelset={labelset}", "path,label"] + [f"{p},{label}" for p, label in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture()
def sample_manifest(sample_images: list[Path], tmp_path: Path) -> Path:
    return write_manifest(tmp_path / "sample.csv", [(str(p), p.parent.name) for p in sample_images])


def test_every_runnable_artifact_gets_a_report_and_they_are_compared(
    tiny_bundle: Path, sample_manifest: Path, tmp_path: Path
) -> None:
    out = tmp_path / "eval"
    summary = evaluate_bundle(tiny_bundle, sample_manifest, out, bootstrap=50)
    assert summary["split"] == "all" and summary["images"] == 12
    scored = {fmt for fmt, entry in summary["artifacts"].items() if entry["status"] == "scored"}
    assert {"tflite-fp32", "tflite-int8", "onnx"} <= scored
    for fmt in scored:
        folder = out / fmt
        for name in ("report.md", "report.html", "metrics.json", "predictions.csv", "confusion.png"):
            assert (folder / name).is_file(), f"{fmt}: {name}"
        # The reported top-1 is the share of correct rows in the artifact's own predictions.
        with (folder / "predictions.csv").open() as handle:
            correct = [int(row["correct"]) for row in csv.DictReader(handle)]
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["mean"]["overall_accuracy"]["value"] == pytest.approx(np.mean(correct))
        assert len(metrics["per_class"]) == 3 and "low" in metrics["per_class"]["colon_polyp"]["sensitivity"]
    pairs = {(r["a"], r["b"]): r for r in summary["agreement"]}
    float_pair = pairs.get(("tflite-fp32", "onnx")) or pairs[("onnx", "tflite-fp32")]
    assert float_pair["top1_agreement"] == 1.0 and float_pair["max_abs_diff"] < 1e-4
    assert (out / "agreement.md").is_file() and (out / "summary.json").is_file()


def test_a_label_outside_the_bundles_label_set_names_the_row(
    tiny_bundle: Path, sample_images: list[Path], tmp_path: Path
) -> None:
    rows = [(str(p), p.parent.name) for p in sample_images[:3]] + [(str(sample_images[3]), "hemorrhoid")]
    data = write_manifest(tmp_path / "bad-label.csv", rows)
    with pytest.raises(DatasetError) as caught:
        evaluate_bundle(tiny_bundle, data, tmp_path / "out")
    assert "hemorrhoid" in str(caught.value) and f"{data}:row 6" in str(caught.value)


def test_an_unreadable_image_names_the_row_or_is_skipped_and_listed(
    tiny_bundle: Path, sample_images: list[Path], tmp_path: Path
) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    rows = [(str(p), p.parent.name) for p in sample_images[:4]] + [(str(broken), "colon_polyp")]
    data = write_manifest(tmp_path / "broken.csv", rows)
    with pytest.raises(DatasetError) as caught:
        evaluate_bundle(tiny_bundle, data, tmp_path / "out")
    assert f"{data}:row 7" in str(caught.value) and "broken.jpg" in str(caught.value)
    summary = evaluate_bundle(tiny_bundle, data, tmp_path / "out", on_unreadable="skip", formats=["onnx"], bootstrap=0)
    assert summary["images"] == 4 and len(summary["skipped"]) == 1 and "row 7" in summary["skipped"][0]


def test_the_split_is_the_test_split_when_the_manifest_has_one(
    tiny_bundle: Path, sample_images: list[Path], tmp_path: Path
) -> None:
    lines = ["# endoedge-dataset v1 labelset=gastrovision3", "path,label,split"]
    lines += [f"{p},{p.parent.name},{'test' if i % 3 == 0 else 'train'}" for i, p in enumerate(sample_images)]
    data = tmp_path / "split.csv"
    data.write_text("\n".join(lines) + "\n")
    summary = evaluate_bundle(tiny_bundle, data, tmp_path / "out", formats=["tflite-fp32"], bootstrap=0)
    assert summary["split"] == "test" and summary["images"] == 4


BLOCKED_TF_EVALUATE = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('tensorflow', 'keras', 'tf2onnx', 'tf_keras', 'matplotlib'):
            raise ImportError('blocked: ' + name)
        return None
sys.meta_path.insert(0, Block())
from endoedge.cli import main
code = main(sys.argv[1:])
assert not any(m.split('.')[0] in ('tensorflow', 'keras', 'matplotlib') for m in sys.modules), 'imported'
raise SystemExit(code)
"""


def test_the_cli_runs_without_tensorflow_or_matplotlib(
    tiny_bundle: Path, sample_manifest: Path, tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    out = tmp_path / "eval"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            BLOCKED_TF_EVALUATE,
            "evaluate",
            str(bundle),
            "--data",
            str(sample_manifest),
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "tflite-int8" in done.stdout and "top-1" in done.stdout
    assert "savedmodel" in done.stdout and "exported" in done.stdout  # listed, but no TensorFlow here
    assert (out / "tflite-int8" / "confusion.png").is_file()
