"""endoedge bench on a real bundle: a tiny CNN trained on the committed images, exported with real
TensorFlow to SavedModel, TFLite and ONNX (the ``tiny_bundle`` fixture), run with real LiteRT, ONNX
Runtime, TensorFlow and polygraphy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from endoedge.bench import report as rep
from endoedge.bench.cli import main
from endoedge.bench.fingerprint import machine_fingerprint
from endoedge.bench.flops import onnx_macs, tflite_macs
from endoedge.bench.latency import LatencySettings, polygraphy_command, run_latency
from endoedge.bench.parity_bundle import build_parity_set, run_bundle_parity, run_video_parity
from endoedge.bench.stats import RunPlan
from endoedge.core.bundle import open_bundle
from endoedge.core.datasets import records_from_files
from endoedge.core.errors import EndoedgeError
from endoedge.core.fileio import sha256_file
from endoedge.core.labels import GASTROVISION3
from endoedge.core.manifest import ExtraFile, ModelManifest
from endoedge.core.preprocess import load_pixels
from endoedge.export.parity import PARITY_REFERENCE_FILE, ParityReference, pixels_sha256

# The tiny CNN: three 3x3 convolutions (stride 2) 3->8->16->24 on 64x64, then a 24->3 dense layer.
TINY_MACS = 32 * 32 * 8 * 27 + 16 * 16 * 16 * 72 + 8 * 8 * 24 * 144 + 24 * 3


@pytest.fixture(scope="module")
def dataset_csv(sample_images, tmp_path_factory) -> Path:
    files = [(p, GASTROVISION3.index_of(p.parent.name)) for p in sample_images]
    return records_from_files(files, GASTROVISION3).write(tmp_path_factory.mktemp("ds") / "sample.csv")


@pytest.fixture(scope="module")
def bundle_copy(tiny_bundle, tmp_path_factory):
    """Return a function making a private copy of the tiny bundle to modify."""

    def make(name: str) -> Path:
        target = tmp_path_factory.mktemp(name) / "bundle"
        shutil.copytree(tiny_bundle, target)
        return target

    return make


def _rewrite_manifest(path: Path, manifest: ModelManifest) -> None:
    (path / "manifest.json").write_text(manifest.to_json())


def test_parity_validates_the_real_artifacts_and_files_results(tiny_bundle, dataset_csv, tmp_path, capsys):
    out = tmp_path / "results"
    code = main(
        [
            "parity",
            str(tiny_bundle),
            "--data",
            str(dataset_csv),
            "--formats",
            "savedmodel,tflite-fp32,onnx",
            "--out",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "validated" in printed and "savedmodel run here (12 images)" in printed
    machine_dir = next(out.iterdir())
    report = json.loads((machine_dir / "tiny-gastrovision3" / "parity.json").read_text())
    by_format = {r["format"]: r for r in report["results"]}
    assert set(by_format) == {"savedmodel", "tflite-fp32", "onnx"}
    for fmt in ("tflite-fp32", "onnx"):
        assert by_format[fmt]["status"] == "validated"
        assert by_format[fmt]["metrics"]["top1_agreement"] == 1.0
        assert by_format[fmt]["metrics"]["max_abs_diff"] <= 1e-4
    assert report["machine"]["machine_id"] == machine_dir.name
    assert (machine_dir / "tiny-gastrovision3" / "parity.md").read_text().startswith("# Parity")
    assert (machine_dir / "tiny-gastrovision3" / "parity.png").read_bytes()[:4] == b"\x89PNG"


def test_a_deliberately_wrong_artifact_fails_parity_with_exit_1(bundle_copy, dataset_csv, capsys):
    """The int8 model filed as the fp32 artifact: it loads and runs, but misses the fp32 gate."""
    path = bundle_copy("wrong")
    manifest = ModelManifest.load(path)
    fp32 = manifest.artifact("tflite-fp32")
    shutil.copy(path / manifest.artifact("tflite-int8").file, path / fp32.file)
    from dataclasses import replace

    _rewrite_manifest(path, manifest.with_artifact(replace(fp32, sha256=sha256_file(path / fp32.file))))
    code = main(["parity", str(path), "--data", str(dataset_csv), "--formats", "savedmodel,tflite-fp32", "--json"])
    captured = capsys.readouterr()
    assert code == 1
    report = json.loads(captured.out)
    wrong = next(r for r in report["results"] if r["format"] == "tflite-fp32")
    assert wrong["status"] == "failed" and wrong["stage"] == "gate" and "max|dp|" in wrong["reason"]
    assert "parity FAILED: tflite-fp32 (gate:" in captured.err


def test_an_artifact_kept_with_parity_loss_is_reported_as_kept_not_validated(
    bundle_copy, dataset_csv, tmp_path, capsys
):
    """The same wrong fp32 artifact, but marked ``parity_loss_allowed`` as ``--allow-parity-loss`` does."""
    path = bundle_copy("kept")
    manifest = ModelManifest.load(path)
    fp32 = manifest.artifact("tflite-fp32")
    shutil.copy(path / manifest.artifact("tflite-int8").file, path / fp32.file)
    from dataclasses import replace

    kept = replace(fp32, sha256=sha256_file(path / fp32.file), parity_loss_allowed=True)
    _rewrite_manifest(path, manifest.with_artifact(kept))
    out = tmp_path / "results"
    args = ["parity", str(path), "--data", str(dataset_csv), "--formats", "savedmodel,tflite-fp32", "--out", str(out)]
    code = main(args)
    captured = capsys.readouterr()
    assert code == 0, captured.err  # kept on request: reported, but it does not fail the run
    assert "kept (parity loss allowed)" in captured.out
    filed = next(out.iterdir()) / "tiny-gastrovision3"
    report = json.loads((filed / "parity.json").read_text())
    row = next(r for r in report["results"] if r["format"] == "tflite-fp32")
    assert row["status"] == "kept" and row["stage"] == "gate" and "max|dp|" in row["reason"]
    assert "| tflite-fp32 | tflite | kept (parity loss allowed) |" in (filed / "parity.md").read_text()
    # --require asks for a validated artifact; a kept one does not count, and the message says what it is.
    assert main([*args[:-2], "--json", "--require", "tflite-fp32"]) == 1
    assert "tflite-fp32 required but kept (parity loss allowed)" in capsys.readouterr().err


def test_tampered_and_missing_files_fail_at_stage_file(bundle_copy, dataset_csv):
    path = bundle_copy("tampered")
    manifest = ModelManifest.load(path)
    (path / manifest.artifact("onnx").file).write_bytes(b"not a model")
    (path / manifest.artifact("tflite-int8").file).unlink()
    bundle = open_bundle(path, verify=False)
    parity_set = build_parity_set(bundle, dataset_csv, reference="none")
    results, _ = run_bundle_parity(bundle, parity_set, ["onnx", "tflite-int8", "tflite-fp32"])
    by_format = {r.format: r for r in results}
    assert by_format["onnx"].status == "failed" and by_format["onnx"].stage == "file"
    assert "sha256" in by_format["onnx"].reason
    assert by_format["tflite-int8"].status == "failed" and "missing" in by_format["tflite-int8"].reason
    assert by_format["tflite-fp32"].status == "loaded"  # ran, but reference "none" was asked for


def test_recorded_reference_is_used_without_tensorflow_and_checks_pixels(bundle_copy, dataset_csv, sample_images):
    """What a Jetson does: the parity reference shipped in the bundle instead of running TensorFlow."""
    path = bundle_copy("recorded")
    manifest = ModelManifest.load(path)
    probs = np.load(path / "reference.npy")
    pixels = load_pixels(sample_images, manifest.preprocess)
    rows = {p.name: i for i, p in enumerate(sample_images)}
    dataset_rows = [
        line.split(",")[0] for line in dataset_csv.read_text().splitlines() if not line.startswith(("#", "path"))
    ]
    images = []
    for written in dataset_rows:
        i = rows[Path(written).name]
        images.append(
            {
                "path": written,
                "sha256": sha256_file(sample_images[i]),
                "pixels_sha256": pixels_sha256(pixels[i]),
                "label": GASTROVISION3.index_of(sample_images[i].parent.name),
            }
        )
    order = [rows[Path(w).name] for w in dataset_rows]
    images[3]["pixels_sha256"] = "0" * 64  # as if this machine's OpenCV resized differently
    reference = ParityReference(
        manifest.name, tuple(GASTROVISION3.keys), manifest.preprocess, tuple(images), probs[order], {}
    )
    (path / PARITY_REFERENCE_FILE).write_text(reference.to_json())
    extra = ExtraFile(PARITY_REFERENCE_FILE, sha256_file(path / PARITY_REFERENCE_FILE), "parity-reference")
    from dataclasses import replace

    _rewrite_manifest(path, replace(manifest, files=(*manifest.files, extra)))
    bundle = open_bundle(path)
    parity_set = build_parity_set(bundle, dataset_csv, reference="bundle")
    assert parity_set.reference_source.startswith("bundle parity-reference (11 of 12")
    assert len(parity_set.problems) == 1 and "preprocessing differs" in parity_set.problems[0]
    results, _ = run_bundle_parity(bundle, parity_set, ["tflite-fp32", "onnx"], threads=2)
    assert [r.status for r in results] == ["validated", "validated"]
    # Another manifest of the same files (written elsewhere, so every path differs) finds them by content.
    elsewhere = path.parent / "elsewhere" / "deeper"
    files = [(p, GASTROVISION3.index_of(p.parent.name)) for p in sample_images]
    other_csv = records_from_files(files, GASTROVISION3).write(elsewhere / "again.csv")
    assert not set(dataset_rows) & {
        line.split(",")[0] for line in other_csv.read_text().splitlines() if not line.startswith(("#", "path"))
    }
    found = build_parity_set(bundle, other_csv, reference="bundle")
    assert found.reference_source.startswith("bundle parity-reference (11 of 12")
    np.testing.assert_array_equal(found.reference, parity_set.reference)


def write_clip(sample_images, path: Path, frames_per_image: int = 8, fps: float = 10.0) -> Path:
    size = (320, 256)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    for image_path in sample_images:
        frame = cv2.resize(cv2.imread(str(image_path)), size)
        for _ in range(frames_per_image):
            writer.write(frame)
    writer.release()
    return path


def test_video_parity_compares_displayed_site_sequences(tiny_bundle, dataset_csv, sample_images, tmp_path):
    clip = write_clip(sample_images, tmp_path / "clip.avi")
    bundle = open_bundle(tiny_bundle)
    parity_set = build_parity_set(bundle, dataset_csv)
    results, _ = run_bundle_parity(bundle, parity_set, ["savedmodel", "tflite-fp32", "onnx"], threads=2)
    video = run_video_parity(bundle, clip, results, threads=2)
    assert video["_reference"]["format"] == "savedmodel" and video["_reference"]["frames"] == 96
    for fmt in ("tflite-fp32", "onnx"):
        assert video[fmt]["displayed_agreement"] == 1.0 and video[fmt]["passed"]
        assert video[fmt]["changes"] == video[fmt]["reference_changes"] > 0
    assert {r.format: r.status for r in results}["onnx"] == "validated"


def test_latency_runs_every_backend_and_peers(tiny_bundle, sample_images, tmp_path):
    bundle = open_bundle(tiny_bundle)
    pixels = load_pixels(sample_images[:4], bundle.manifest.preprocess)
    settings = LatencySettings(
        threads=(1,),
        batches=(1, 4),
        plan=RunPlan(warmup_runs=1, min_runs=3, min_seconds=0.0),
        peers=("raw", "tf-function", "polygraphy", "keras"),
        variants=(("tflite", {"xnnpack": False}),),
        polygraphy_iterations=5,
        measure_peak=False,
    )
    rows, extra = run_latency(bundle, pixels, settings)
    seen = {(r.subject, r.format, r.batch): r for r in rows}
    for key in [
        ("endoedge", "tflite-fp32", 1),
        ("endoedge", "tflite-fp32", 4),
        ("endoedge", "onnx", 1),
        ("endoedge", "tflite-int8", 1),
        ("raw-litert", "tflite-fp32", 1),
        ("raw-onnxruntime", "onnx", 1),
        ("tf-function", "savedmodel", 1),
        ("endoedge-variant", "tflite-fp32", 1),
    ]:
        row = seen[key]
        assert row.status == "ok", (key, row.reason)
        assert row.timing is not None and row.timing.runs >= 3 and row.timing.p50_ms > 0
    assert seen[("endoedge", "tflite-fp32", 4)].timing.batch == 4
    poly = seen[("polygraphy", "onnx", 1)]
    if polygraphy_command() is None:
        assert poly.status == "skipped" and "pip install polygraphy" in poly.reason
    else:
        assert poly.status == "ok" and poly.timing is not None and poly.timing.runs == 5, poly.reason
    assert seen[("keras-predict", "keras", 1)].status == "skipped"
    assert extra["model_gflop"] == pytest.approx(2 * TINY_MACS / 1e9)
    report = {
        "bundle": bundle.manifest.name,
        "rows": [r.to_dict() for r in rows],
        "plan": settings.plan.to_dict(),
        **extra,
        "machine": machine_fingerprint(),
    }
    text = rep.latency_text(report)
    assert "raw-litert" in text and "polygraphy" in text and "x" in text  # ratios to endoedge
    json.dumps(report)  # JSON-ready
    folder = rep.write_results(tmp_path, "latency", report, rep.latency_markdown(report), rep.latency_chart(report))
    assert (folder / "latency.png").read_bytes()[:4] == b"\x89PNG"
    other = json.loads(json.dumps(report))
    other["machine"]["cpu_cores"] = 64
    other["machine"]["machine_id"] = report["machine"]["machine_id"]
    with pytest.raises(EndoedgeError, match="another machine"):
        rep.write_results(tmp_path, "latency", other, "", None)


def test_flops_are_counted_the_same_from_tflite_and_onnx(tiny_bundle):
    bundle = open_bundle(tiny_bundle)
    assert tflite_macs(bundle.artifact_path("tflite-fp32")) == TINY_MACS
    assert onnx_macs(bundle.artifact_path("onnx")) == TINY_MACS
    assert tflite_macs(bundle.artifact_path("tflite-int8")) == TINY_MACS


def test_latency_cli_prints_a_table(tiny_bundle, capsys):
    code = main(
        [
            "latency",
            str(tiny_bundle),
            "--formats",
            "tflite-fp32",
            "--batches",
            "1",
            "--runs",
            "3",
            "--seconds",
            "0",
            "--peers",
            "raw",
            "--no-peak",
            "--threads",
            "1",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "endoedge" in out and "raw-litert" in out and "p50 ms" in out


def test_latency_compare_measures_both_bundles_in_one_run(tiny_bundle, tmp_path, capsys):
    import json
    import shutil

    other = tmp_path / "other"
    shutil.copytree(tiny_bundle, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["name"] = "tiny-other"
    (other / "manifest.json").write_text(json.dumps(manifest))
    args = ["latency", str(tiny_bundle), "--compare", str(other), "--formats", "tflite-fp32,onnx"]
    args += ["--batches", "1", "--runs", "3", "--seconds", "0", "--peers", "raw", "--no-peak", "--threads", "1"]
    assert main([*args, "--out", str(tmp_path / "results")]) == 0
    out = capsys.readouterr().out
    assert "# Latency, batch 1: tiny-gastrovision3 vs tiny-other" in out
    table = [line for line in out.splitlines() if line.startswith("| tflite-fp32") or line.startswith("| onnx")]
    assert len(table) == 2 and all(line.endswith("x |") for line in table)  # both measured, ratio given
    machine = next((tmp_path / "results").iterdir())
    assert (machine / "tiny-gastrovision3" / "latency-vs-tiny-other.md").is_file()
    other_report = json.loads((machine / "tiny-other" / "latency.json").read_text())
    assert {r["subject"] for r in other_report["rows"]} == {"endoedge"}  # no peers for the compared bundle


def test_cli_errors_are_one_line(tiny_bundle, tmp_path):
    with pytest.raises(EndoedgeError, match="peer"):
        main(["latency", str(tiny_bundle), "--peers", "nonsense"])
    with pytest.raises(EndoedgeError, match="run plan"):
        main(["latency", str(tiny_bundle), "--runs", "0"])
    bad = tmp_path / "other.csv"
    bad.write_text("path,label\nx.jpg,hemorrhoid\n")
    with pytest.raises(EndoedgeError):
        main(["parity", str(tiny_bundle), "--data", str(bad)])


def test_engines_built_on_the_target_are_listed_and_explained(tiny_bundle, dataset_csv):
    """A TensorRT engine is not in the bundle (it is built on the Jetson from the ONNX): off a Jetson it
    is reported as not runnable here, with the reason, and does not fail parity."""
    from endoedge.bench.latency import runnable_formats
    from endoedge.edge.backends import is_available

    bundle = open_bundle(tiny_bundle)
    entries = {fmt: reason for fmt, _backend, reason in runnable_formats(bundle)}
    assert "trt-fp16" in entries
    if not is_available("tensorrt"):
        assert "built on the target" in entries["trt-fp16"]
        parity_set = build_parity_set(bundle, dataset_csv, reference="none", limit=4)
        results, _ = run_bundle_parity(bundle, parity_set, ["trt-fp16"])
        assert [(r.status, r.stage) for r in results] == [("exported", "runtime")]
