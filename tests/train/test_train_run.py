"""End to end on the committed real images: train → run folder → manifest; evaluate; bad inputs; resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from endoedge.cli import main as cli_main
from endoedge.core.errors import DatasetError
from endoedge.core.manifest import ModelManifest
from endoedge.train.recipe import load_recipe
from endoedge.train.trainer import train

from .conftest import write_recipe

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_run(sample_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-run")
    recipe = write_recipe(folder, sample_dataset)
    assert cli_main(["train", "--config", str(recipe), "--quiet"]) == 0
    return folder / "runs" / "tiny"


def test_run_folder_has_everything_export_needs(tiny_run: Path, sample_dataset: Path) -> None:
    for name in ("model.keras", "manifest.json", "config.yaml", "history.csv", "dataset.csv"):
        assert (tiny_run / name).is_file(), name
    assert (tiny_run / "checkpoints" / "last.keras").is_file() and (tiny_run / "checkpoints" / "best.keras").is_file()
    assert any((tiny_run / "logs").rglob("events.out.tfevents*")), "no TensorBoard event files"
    assert not (tiny_run / "backup").exists(), "BackupAndRestore state must be removed after a finished run"
    manifest = ModelManifest.load(tiny_run)
    assert manifest.task == "sites" and manifest.labelset.name == "gastrovision3" and not manifest.artifacts
    assert manifest.preprocess.height == 48 and manifest.preprocess.normalization == "raw"
    from endoedge.core.fileio import sha256_file

    assert manifest.source["model_sha256"] == sha256_file(tiny_run / "model.keras")
    assert manifest.source["dataset_sha256"] == sha256_file(sample_dataset)
    assert manifest.metrics["epochs_run"] == 2 and 0.0 <= manifest.metrics["test_accuracy"] <= 1.0
    history = (tiny_run / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,") and len(history) == 3


def test_evaluation_outputs_and_saved_model_agree(tiny_run: Path) -> None:
    from endoedge.core.datasets import load_dataset
    from endoedge.core.preprocess import load_pixels, normalize
    from endoedge.train.models import load_trained_model

    ev = tiny_run / "evaluation"
    for name in ("metrics.json", "predictions.csv", "confusion.png", "gradcam.png", "report.md", "report.html"):
        assert (ev / name).is_file(), name
    metrics = json.loads((ev / "metrics.json").read_text())
    matrix = np.array(metrics["confusion_matrix"])
    assert matrix.sum() == metrics["images"] == 3
    # The saved model, fed through the core preprocessing as the manifest says, reproduces predictions.csv.
    manifest = ModelManifest.load(tiny_run)
    model = load_trained_model(tiny_run / "model.keras")
    test = load_dataset(tiny_run / "dataset.csv").split("test")
    probs = model.predict(normalize(load_pixels(test.paths, manifest.preprocess), manifest.preprocess), verbose=0)
    rows = [line.split(",") for line in (ev / "predictions.csv").read_text().splitlines()[1:]]
    np.testing.assert_allclose(probs, np.array([[float(v) for v in r[4:]] for r in rows]), atol=1e-5)


def test_finished_run_is_kept_unless_overwrite(tiny_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tiny_run.parent.parent / "tiny.yaml"
    assert cli_main(["train", "--config", str(recipe)]) == 2
    assert "a finished run is already here (pass --overwrite to retrain)" in capsys.readouterr().err


def test_evaluate_cli_compares_two_models_and_readers(tiny_run: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(tiny_run, other)
    readers = tmp_path / "readers.csv"
    test_rows = [r for r in (tiny_run / "dataset.csv").read_text().splitlines() if ",test," in r]
    lines = ["path,reader,label"]
    for row in test_rows:
        path, label = row.split(",")[:2]
        lines += [f"{path},dr_a,{label}", f"{Path(path).name},dr_b,colon_polyp"]
    readers.write_text("\n".join(lines) + "\n")
    out = tmp_path / "eval"
    args = ["evaluate", str(tiny_run), str(other), "-o", str(out), "--bootstrap", "20"]
    code = cli_main([*args, "--readers", str(readers), "--names", "tiny,copy"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    comparison = summary["comparison"]
    assert set(comparison["p_values"]) == {"copy", "reader:dr_a", "reader:dr_b"}
    assert comparison["p_values"]["copy"]["overall_accuracy"] == 1.0  # identical models never disagree
    assert comparison["metrics"]["overall_accuracy"]["reader:dr_a"] == 1.0
    assert comparison["metrics"]["overall_accuracy"]["reader:dr_b"] == pytest.approx(1 / 3)
    table = (out / "comparison.md").read_text()
    assert "| accuracy (top-1) |" in table and "McNemar" in table
    assert (out / "tiny" / "gradcam.png").is_file() and (out / "copy" / "confusion.png").is_file()


def test_reader_study_errors_name_the_row(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    readers = tmp_path / "readers.csv"
    readers.write_text("path,reader,label\nnot_there.jpg,dr_a,colon_polyp\n")
    assert cli_main(["evaluate", str(tiny_run), "-o", str(tmp_path / "e"), "--readers", str(readers)]) == 2
    assert f"{readers}:row 2: image 'not_there.jpg' is not in the evaluated set" in capsys.readouterr().err


def _dataset_with(tmp_path: Path, sample_dataset: Path, extra_row: str) -> Path:
    lines = sample_dataset.read_text().splitlines()
    rebased = [lines[0], lines[1]]
    for line in lines[2:]:
        path, rest = line.split(",", 1)
        rebased.append(f"{(sample_dataset.parent / path).resolve()},{rest}")
    target = tmp_path / "data.csv"
    target.write_text("\n".join([*rebased, extra_row]) + "\n")
    return target


def test_unreadable_image_is_skipped_and_counted(sample_dataset: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    data = _dataset_with(tmp_path, sample_dataset, f"{broken},colon_polyp,train,")
    recipe = load_recipe(write_recipe(tmp_path, data, epochs=1))
    result = train(recipe, evaluate=False, verbose=0, log=lambda _: None)
    assert result.manifest.source["skipped_images"] == 1
    assert "broken.jpg\tnot a decodable image" in (result.run_dir / "skipped.txt").read_text()


def test_unreadable_image_is_an_error_naming_file_and_row(sample_dataset: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    data = _dataset_with(tmp_path, sample_dataset, f"{broken},colon_polyp,train,")
    recipe = load_recipe(write_recipe(tmp_path, data, epochs=1, on_unreadable="error"))
    with pytest.raises(DatasetError, match=r"dataset.csv:row 15: image '.*broken.jpg': not a decodable image"):
        train(recipe, evaluate=False, verbose=0, log=lambda _: None)


def test_label_outside_the_label_set_names_the_row(sample_dataset: Path, tmp_path: Path) -> None:
    data = _dataset_with(tmp_path, sample_dataset, f"{sample_dataset},gastric_ulcer,train,")
    recipe = load_recipe(write_recipe(tmp_path, data, epochs=1))
    with pytest.raises(DatasetError, match=r"data.csv:row 15: label 'gastric_ulcer' is not in label set gastrovision3"):
        train(recipe, evaluate=False, verbose=0, log=lambda _: None)


def _run_subprocess(script: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=cwd,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
        capture_output=True,
        text=True,
        timeout=900,
    )


STRATEGY_SCRIPT = """
import sys
import tensorflow as tf
if sys.argv[-1] == "two-cpus":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from endoedge.train.recipe import load_recipe
from endoedge.train.trainer import train
result = train(load_recipe("{recipe}"), evaluate=False, verbose=0)
print("EPOCHS", result.epochs_run)
"""


def test_mirrored_strategy_on_two_logical_cpus(sample_dataset: Path, tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, sample_dataset, epochs=1, strategy="mirrored")
    proc = subprocess.run(
        [sys.executable, "-c", STRATEGY_SCRIPT.format(recipe=recipe), "two-cpus"],
        cwd=tmp_path,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "strategy: MirroredStrategy with 2 replica(s)" in proc.stdout
    assert "EPOCHS 1" in proc.stdout


@pytest.mark.slow
def test_tf_config_selects_multi_worker_strategy(sample_dataset: Path, tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    tf_config = json.dumps({"cluster": {"worker": [f"localhost:{port}"]}, "task": {"type": "worker", "index": 0}})
    recipe = write_recipe(tmp_path, sample_dataset, epochs=1, strategy="auto")
    proc = _run_subprocess(STRATEGY_SCRIPT.format(recipe=recipe), tmp_path, {"TF_CONFIG": tf_config})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "strategy: MultiWorkerMirroredStrategy with 1 replica(s)" in proc.stdout


@pytest.mark.slow
def test_resume_after_kill_9(sample_dataset: Path, tmp_path: Path) -> None:
    """kill -9 in the middle of a run, rerun the same command: it resumes and finishes all epochs."""
    recipe = write_recipe(tmp_path, sample_dataset, name="killed", epochs=12)
    # Step-level backups too: the state saved mid-epoch must restore as well as the epoch-end one.
    recipe.write_text(recipe.read_text().replace("  seed: 0\n", "  seed: 0\n  backup_every_steps: 1\n"))
    run_dir = tmp_path / "runs" / "killed"
    command = [sys.executable, "-m", "endoedge.cli", "train", "--config", str(recipe), "--quiet", "--no-evaluate"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    history = run_dir / "history.csv"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if history.is_file() and len(history.read_text().splitlines()) >= 4:  # header + 3 epochs
            break
        if proc.poll() is not None:
            pytest.fail(f"training ended before it could be killed: {proc.stderr.read()[-500:] if proc.stderr else ''}")
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "manifest.json").exists()
    epochs_before = len(history.read_text().splitlines()) - 1
    assert epochs_before < 12
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = ModelManifest.load(run_dir)
    assert manifest.source["resumed"] is True
    epochs = [int(line.split(",")[0]) for line in history.read_text().splitlines()[1:]]
    assert epochs[-1] == 11, "the resumed run must finish the remaining epochs"
    assert manifest.metrics["epochs_run"] == 12, "epochs of the killed process count too"
    assert sorted(set(epochs)) == list(range(12)), "every epoch index appears (a killed epoch may be repeated)"


@pytest.mark.slow
def test_frozen_backbone_then_fine_tuning_stage(sample_dataset: Path, tmp_path: Path) -> None:
    recipe_path = write_recipe(tmp_path, sample_dataset, name="ft", epochs=1)
    text = recipe_path.read_text().replace(
        "  batchnorm_momentum: 0.9\n", "  batchnorm_momentum: 0.9\n  freeze_backbone: true\n"
    )
    text = text.replace(
        "  seed: 0\n", "  seed: 0\n  fine_tune: {epochs: 1, unfreeze_top_layers: 3, learning_rate: 0.0001}\n"
    )
    recipe_path.write_text(text)
    logs: list[str] = []
    result = train(load_recipe(recipe_path), evaluate=False, verbose=0, log=logs.append)
    assert result.epochs_run == 2
    assert any("fine-tuning: 3 top backbone layers unfrozen" in line for line in logs)
    assert (result.run_dir / "checkpoints" / "finetune.done").is_file()
    assert len((result.run_dir / "history.csv").read_text().splitlines()) == 3
