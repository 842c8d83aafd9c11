"""``endoedge train``: a recipe in, a run folder out.

A run folder ``<runs_dir>/<recipe name>/`` holds::

    config.yaml          the recipe with every default filled in
    dataset.csv          the dataset manifest with the splits used (copied; its sha256 is recorded)
    history.csv          per-epoch loss/metrics (appended across resumes)
    checkpoints/         last.keras (every epoch), best.keras (best val_loss)
    backup/              Keras BackupAndRestore state while training runs (removed when it finishes)
    logs/                TensorBoard event files
    skipped.txt          unreadable images that were skipped (if any)
    evaluation/          the held-out evaluation (report.md/.html, metrics.json, PNGs)
    model.keras          the trained classifier (best epoch)
    manifest.json        core ModelManifest (no artifacts yet): ready for ``endoedge export``

``manifest.json`` is written last; its presence marks a finished run. Re-running the same recipe on
an unfinished run folder resumes it (after a crash, ``kill -9`` or a reboot) from the last completed
epoch; a finished run is only replaced with ``--overwrite``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from endoedge.core.datasets import Dataset, load_dataset, split_dataset
from endoedge.core.errors import ConfigError, DatasetError
from endoedge.core.fileio import atomic_write_text, sha256_file
from endoedge.core.manifest import MANIFEST_NAME, ModelManifest
from endoedge.core.preprocess import PreprocessSpec
from endoedge.train.augment import AugmentParams
from endoedge.train.recipe import Recipe

Log = Callable[[str], None]


@dataclass(frozen=True)
class RunResult:
    """What a finished training run produced."""

    run_dir: Path
    manifest: ModelManifest
    epochs_run: int
    seconds: float


def preprocess_spec(recipe: Recipe, manifest_normalization: str) -> PreprocessSpec:
    """The manifest's preprocessing spec of a recipe (geometry from the recipe, normalisation as built)."""
    size = recipe.model.input_size
    return PreprocessSpec.for_family(
        manifest_normalization,
        size,
        size,
        channel_order="RGB",
        interpolation=recipe.preprocess.interpolation,
        resize=recipe.preprocess.resize,
        field_crop=recipe.preprocess.field_crop,
    )


def augment_params(recipe: Recipe, dataset: Dataset) -> AugmentParams | None:
    """Resolve the recipe's augmentation against the label set's flip rules and the task.

    Raises:
        ConfigError: Vertical flips forced on for a site task or a label set that forbids them.
    """
    cfg = recipe.augment
    if not cfg.enabled:
        return None
    labelset = dataset.labelset
    vertical_allowed = labelset.vertical_flip and recipe.task != "sites"
    if cfg.vertical_flip is True and not vertical_allowed:
        reason = "site tasks (up/down is anatomical)" if recipe.task == "sites" else f"label set {labelset.tag}"
        raise ConfigError(f"augment.vertical_flip: true is not allowed for {reason}", "augment.vertical_flip")
    vertical = vertical_allowed if cfg.vertical_flip == "auto" else bool(cfg.vertical_flip)
    return AugmentParams(
        min_crop_scale=cfg.min_crop_scale,
        box_guided=cfg.box_guided,
        max_aspect_jitter=cfg.max_aspect_jitter,
        brightness=cfg.brightness,
        contrast=cfg.contrast,
        saturation=cfg.saturation,
        hue=cfg.hue,
        blur_probability=cfg.blur_probability,
        specular_probability=cfg.specular_probability,
        horizontal_flip=cfg.horizontal_flip and labelset.horizontal_flip,
        vertical_flip=vertical,
    )


def choose_strategy(kind: str, log: Log = print) -> Any:
    """Pick the tf.distribute strategy.

    ``auto``: MultiWorkerMirroredStrategy when ``TF_CONFIG`` names a cluster, MirroredStrategy when
    there are several GPUs, else the default (single-device) strategy.
    """
    import tensorflow as tf

    if kind == "auto":
        if os.environ.get("TF_CONFIG"):
            kind = "multiworker"
        elif len(tf.config.list_logical_devices("GPU")) > 1:
            kind = "mirrored"
        else:
            kind = "default"
    if kind == "multiworker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif kind == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(devices=devices)
    else:
        strategy = tf.distribute.get_strategy()
    label = {"multiworker": "MultiWorkerMirroredStrategy", "mirrored": "MirroredStrategy"}.get(kind, "default")
    log(f"strategy: {label} with {strategy.num_replicas_in_sync} replica(s)")
    return strategy


def set_mixed_precision(mode: str, log: Log = print) -> bool:
    """Enable ``mixed_float16`` (``on``, or ``auto`` with a GPU present); return whether it is on."""
    import keras
    import tensorflow as tf

    enable = mode == "on" or (mode == "auto" and bool(tf.config.list_physical_devices("GPU")))
    keras.mixed_precision.set_global_policy("mixed_float16" if enable else "float32")
    if enable:
        log("mixed precision: mixed_float16")
    return enable


def _prepare_run_dir(run_dir: Path, overwrite: bool, log: Log) -> bool:
    """Create or reuse the run folder; return True when resuming an unfinished run."""
    if (run_dir / MANIFEST_NAME).is_file():
        if not overwrite:
            raise ConfigError("a finished run is already here (pass --overwrite to retrain)", run_dir)
        shutil.rmtree(run_dir)
    resuming = (run_dir / "backup").is_dir() or (run_dir / "history.csv").is_file()
    run_dir.mkdir(parents=True, exist_ok=True)
    for sub in ("checkpoints", "logs"):
        (run_dir / sub).mkdir(exist_ok=True)
    if resuming:
        log(f"resuming the unfinished run in {run_dir}")
    return resuming


def _history_best(history: Path, monitor: str) -> float | None:
    if not history.is_file():
        return None
    with history.open(newline="") as handle:
        values = [float(row[monitor]) for row in csv.DictReader(handle) if row.get(monitor) not in (None, "")]
    return min(values) if values else None


def _resolve_dataset(recipe: Recipe, run_dir: Path, log: Log) -> Dataset:
    """Load the recipe's dataset; split it (seeded) when it has no splits, and freeze a copy in the run."""
    frozen = run_dir / "dataset.csv"
    source = recipe.dataset_path
    if not source.is_file():
        raise ConfigError(f"dataset manifest {source} does not exist", "dataset")
    dataset = load_dataset(source, labelset=recipe.labelset)
    if not any(r.split for r in dataset.records):
        log(
            f"dataset has no splits: splitting val={recipe.split.val} test={recipe.split.test} seed={recipe.split.seed}"
        )
        dataset = split_dataset(dataset, val=recipe.split.val, test=recipe.split.test, seed=recipe.split.seed)
    elif not all(r.split for r in dataset.records):
        missing = next(r for r in dataset.records if not r.split)
        raise DatasetError("some rows have a split and others not; split all or none", f"{source}:row {missing.row}")
    if not frozen.is_file():
        dataset.write(frozen)
    return load_dataset(frozen, labelset=dataset.labelset)


def _tensorboard_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


@contextlib.contextmanager
def _timer() -> Iterator[Callable[[], float]]:
    start = time.perf_counter()
    yield lambda: time.perf_counter() - start


def train(
    recipe: Recipe,
    *,
    runs_dir: str | Path | None = None,
    overwrite: bool = False,
    epochs: int | None = None,
    evaluate: bool = True,
    verbose: int | str = "auto",
    log: Log = print,
) -> RunResult:
    """Train a recipe into its run folder (resuming an unfinished one).

    Args:
        recipe: The validated recipe.
        runs_dir: Override ``output.runs_dir``.
        overwrite: Replace a finished run.
        epochs: Override ``training.epochs`` (smoke runs).
        evaluate: Evaluate the held-out split at the end and write ``evaluation/``.
        verbose: Keras progress bar setting.
        log: Where progress lines go.

    Returns:
        The finished run.

    Raises:
        ConfigError: Bad recipe values or a finished run without ``overwrite``.
        DatasetError: Dataset problems, naming the file and row.
    """
    import keras
    import tensorflow as tf

    from endoedge.train import data, models
    from endoedge.train.pretrained import resolve_weights

    # Pretrained weights first: a missing package, a failed download or a wrong file stops the run
    # here, before a run folder is touched or any image is read.
    weights = resolve_weights(recipe.model.name, recipe.weights_source)
    if weights is not None:
        log(f"pretrained weights: {weights.provenance['file']} (sha256 {weights.provenance['sha256'][:12]}…)")
    run_dir = recipe.run_dir(runs_dir)
    resuming = _prepare_run_dir(run_dir, overwrite, log)
    atomic_write_text(run_dir / "config.yaml", recipe.to_yaml())
    dataset = _resolve_dataset(recipe, run_dir, log)
    labelset = dataset.labelset
    cfg = recipe.training
    num_classes = len(labelset)
    total_epochs = epochs if epochs is not None else cfg.epochs
    keras.utils.set_random_seed(cfg.seed)
    aug = augment_params(recipe, dataset)

    strategy = choose_strategy(recipe.distribute.strategy, log)
    set_mixed_precision(recipe.distribute.mixed_precision, log)
    with strategy.scope():
        built = models.build_model(
            recipe.model.name,
            num_classes,
            recipe.model.input_size,
            activation=recipe.model.activation,
            normalization=recipe.model.normalization,
            normalization_in_model=recipe.model.normalization_in_model,
            weights=weights,
            freeze_backbone=recipe.model.freeze_backbone,
            head=recipe.model.head or None,
            dropout=recipe.model.dropout,
            options=recipe.model.options,
            batchnorm_momentum=recipe.model.batchnorm_momentum,
        )
    spec = preprocess_spec(recipe, built.manifest_normalization)
    pipeline_norm = None if recipe.model.normalization_in_model else (spec.mean, spec.std)
    cache_dir = run_dir / "cache" if cfg.cache == "disk" else None
    geometry = replace(spec, normalization="raw", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    train_canvas = data.canvas_spec(geometry, recipe.augment.canvas_scale if aug else 1.0)
    log(f"preparing images through core.preprocess (field crop {spec.field_crop}, {spec.resize} {spec.height}px)")
    train_split = data.load_split(dataset, "train", train_canvas, cfg.on_unreadable, cache_dir)
    val_split = data.load_split(dataset, "val", geometry, cfg.on_unreadable, cache_dir)
    skipped = train_split.skipped + val_split.skipped
    if skipped:
        atomic_write_text(run_dir / "skipped.txt", "".join(f"{p}\t{r}\n" for p, r in skipped))
        log(f"skipped {len(skipped)} unreadable image(s); listed in {run_dir / 'skipped.txt'}")
    sigmoid = recipe.model.activation == "sigmoid"
    global_batch = cfg.batch_size
    train_ds, steps = data.make_train_dataset(
        train_split,
        out_hw=(spec.height, spec.width),
        params=aug,
        flip_map=labelset.flip_map(),
        batch_size=global_batch,
        seed=cfg.seed,
        num_classes=num_classes,
        balanced=cfg.class_balance == "sampling",
        interpolation=spec.interpolation,
        manifest_mean_std=pipeline_norm,
        one_hot=True,
        drop_remainder=strategy.num_replicas_in_sync > 1,
    )
    val_ds = data.make_eval_dataset(
        val_split, global_batch, num_classes, pipeline_norm, one_hot=True, replicas=strategy.num_replicas_in_sync
    )
    class_weight = data.class_weights(train_split.labels, num_classes) if cfg.class_balance == "weights" else None
    counts = np.bincount(train_split.labels, minlength=num_classes).tolist()
    log(f"train {len(train_split)} images {counts}, val {len(val_split)}; class weights {class_weight}")

    history_file = run_dir / "history.csv"

    def compile_model(learning_rate: float, stage_epochs: int) -> None:
        with strategy.scope():
            lr: Any = learning_rate
            if cfg.lr_schedule == "cosine":
                lr = keras.optimizers.schedules.CosineDecay(learning_rate, max(1, stage_epochs * steps))
            if cfg.optimizer == "sgd":
                optimizer: Any = keras.optimizers.SGD(lr, momentum=0.9, nesterov=True)
            elif cfg.optimizer == "adamw":
                optimizer = keras.optimizers.AdamW(lr, weight_decay=cfg.weight_decay or 1e-4)
            else:
                optimizer = keras.optimizers.Adam(lr)
            loss: Any = (
                keras.losses.BinaryCrossentropy(label_smoothing=cfg.label_smoothing)
                if sigmoid
                else keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing)
            )
            metric: Any = keras.metrics.BinaryAccuracy(name="accuracy") if sigmoid else "accuracy"
            built.model.compile(optimizer=optimizer, loss=loss, metrics=[metric])

    def fit_stage(stage: str, stage_epochs: int, learning_rate: float) -> int:
        if stage_epochs <= 0:
            return 0
        done_marker = run_dir / "checkpoints" / f"{stage}.done"
        if done_marker.is_file():
            log(f"stage {stage}: already finished")
            built.model.load_weights(str(run_dir / "checkpoints" / "best.keras"))
            return int(done_marker.read_text() or 0)
        compile_model(learning_rate, stage_epochs)
        callbacks: list[Any] = [
            keras.callbacks.BackupAndRestore(
                str(run_dir / "backup" / stage),
                save_freq=cfg.backup_every_steps or "epoch",
                double_checkpoint=True,
            ),
            keras.callbacks.CSVLogger(str(history_file), append=True),
            keras.callbacks.ModelCheckpoint(str(run_dir / "checkpoints" / "last.keras")),
            keras.callbacks.ModelCheckpoint(
                str(run_dir / "checkpoints" / "best.keras"),
                monitor="val_loss",
                save_best_only=True,
                initial_value_threshold=_history_best(history_file, "val_loss"),
            ),
        ]
        if _tensorboard_available():
            callbacks.append(keras.callbacks.TensorBoard(str(run_dir / "logs" / stage)))
        else:
            log("TensorBoard is not installed: no event logs (pip install tensorboard)")
        if cfg.early_stopping_patience:
            callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.early_stopping_patience))
        if cfg.lr_schedule == "plateau":
            callbacks.append(
                keras.callbacks.ReduceLROnPlateau(
                    monitor="val_loss", factor=0.3, patience=max(2, cfg.early_stopping_patience // 3), min_lr=1e-6
                )
            )
        hist = built.model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=stage_epochs,
            steps_per_epoch=steps if cfg.class_balance == "sampling" else None,
            class_weight=class_weight,
            callbacks=callbacks,
            verbose=verbose,
        )
        # Epochs done in this stage, counting those of an interrupted process this one resumed from (a
        # resumed fit starts at the restored epoch; one asked to stop where it already is runs none).
        ran = hist.epoch[-1] + 1 if hist.epoch else stage_epochs
        best = run_dir / "checkpoints" / "best.keras"
        if best.is_file():
            built.model.load_weights(str(best))
        atomic_write_text(done_marker, str(ran))
        return ran

    with _timer() as elapsed:
        epochs_run = fit_stage("train", total_epochs, cfg.learning_rate)
        fine = cfg.fine_tune
        if fine.epochs and recipe.model.freeze_backbone:
            with strategy.scope():
                unfrozen = models.unfreeze_top(built.backbone, fine.unfreeze_top_layers)
            log(f"fine-tuning: {unfrozen} top backbone layers unfrozen at lr {fine.learning_rate}")
            epochs_run += fit_stage(
                "finetune", fine.epochs if epochs is None else min(fine.epochs, epochs), fine.learning_rate
            )
        train_seconds = elapsed()
    model_file = run_dir / "model.keras"
    tmp_model = run_dir / ".model.partial.keras"
    models.inference_copy(built.model).save(str(tmp_model))
    os.replace(tmp_model, model_file)
    shutil.rmtree(run_dir / "backup", ignore_errors=True)

    metrics: dict[str, Any] = {"epochs_run": epochs_run, "train_seconds": round(train_seconds, 1)}
    best_val = _history_best(history_file, "val_loss")
    if best_val is not None:
        metrics["best_val_loss"] = round(best_val, 6)
    manifest = ModelManifest(
        name=recipe.name,
        task=recipe.task,
        labelset=labelset,
        preprocess=spec,
        activation=recipe.model.activation,
        source={
            "model_sha256": sha256_file(model_file),
            "dataset_sha256": sha256_file(recipe.dataset_path),
            "dataset_split_sha256": sha256_file(run_dir / "dataset.csv"),
            "recipe": recipe.name,
            "recipe_sha256": sha256_file(run_dir / "config.yaml"),
            "architecture": recipe.model.name,
            "normalization_in_model": recipe.model.normalization_in_model,
            "pretrained": built.pretrained,
            "skipped_images": len(skipped),
            "resumed": resuming,
        },
        metrics=metrics,
        tools={"tensorflow": tf.__version__, "keras": keras.__version__},
    )
    if evaluate:
        from endoedge.train.evaluate import evaluate_run

        report = evaluate_run(run_dir, built.model, manifest, dataset, recipe, log=log)
        metrics.update(report)
        manifest = replace(manifest, metrics=metrics)
    atomic_write_text(run_dir / MANIFEST_NAME, manifest.to_json())
    log(f"finished: {run_dir} ({epochs_run} epochs, {train_seconds:.0f} s)")
    log(json.dumps(manifest.metrics, indent=None)[:400])
    return RunResult(run_dir, manifest, epochs_run, train_seconds)
