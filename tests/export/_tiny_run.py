"""A tiny trained Keras model saved as a training run folder, for the exporter's tests.

The model is a small CNN (with a residual Add and a squeeze-and-excitation gate, so the ONNX graph
has the node types the INT8 placement treats specially) trained for a few epochs on real endoscopy
images: its outputs are confident and class-dependent, which parity checks need to mean anything.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from endoedge.core.datasets import load_dataset
from endoedge.core.fileio import sha256_file
from endoedge.core.labels import GASTROVISION3
from endoedge.core.manifest import ModelManifest
from endoedge.core.preprocess import PreprocessSpec, load_pixels, normalize

TINY_SPEC = PreprocessSpec.for_family("inception", 64)


def write_dataset_csv(image_root: Path, out: Path, per_class: int = 150) -> Path:
    """A dataset manifest of the images under ``image_root`` (folder per class).

    A root with a ``manifest.csv`` (the shared set, 1,610 images) contributes the first ``per_class``
    rows of each class in manifest order (the original 410-image selection: 110 + 150 + 150), so the
    tests sample the set instead of reading all of it; otherwise every ``*.jpg``.
    """
    lines = ["# endoedge-dataset v1 labelset=gastrovision3", "path,label,split,patient_id"]
    if (image_root / "manifest.csv").is_file():
        taken: dict[str, int] = {}
        paths = []
        with (image_root / "manifest.csv").open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                if taken.setdefault(row["label"], 0) < per_class:
                    taken[row["label"]] += 1
                    paths.append(image_root / row["path"])
        paths.sort()
    else:
        paths = sorted(image_root.rglob("*.jpg"))
    for path in paths:
        lines.append(f"{path.resolve()},{path.parent.name},,")
    out.write_text("\n".join(lines) + "\n")
    return out


def build_tiny_run(dataset_csv: Path, out: Path, epochs: int = 8, spec: PreprocessSpec = TINY_SPEC) -> Path:
    """Train the tiny CNN on the dataset's images and write ``model.keras`` + ``manifest.json`` to ``out``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    keras.utils.set_random_seed(0)
    dataset = load_dataset(dataset_csv, labelset=GASTROVISION3)
    x = normalize(load_pixels(dataset.paths, spec), spec)
    y = np.array(dataset.labels)
    inputs = keras.Input((spec.height, spec.width, 3), name="pixels")
    h = inputs
    for width in (8, 16, 24):
        h = keras.layers.Conv2D(width, 3, strides=2, padding="same", use_bias=False)(h)
        h = keras.layers.BatchNormalization()(h)
        h = keras.layers.ReLU()(h)
    branch = keras.layers.Conv2D(24, 3, padding="same", activation="relu")(h)
    branch = keras.layers.Conv2D(24, 1, padding="same")(branch)
    h = keras.layers.ReLU()(keras.layers.Add()([h, branch]))
    gate = keras.layers.GlobalAveragePooling2D(keepdims=True)(h)
    gate = keras.layers.Conv2D(24, 1, activation="sigmoid")(gate)
    h = keras.layers.Multiply()([h, gate])
    h = keras.layers.GlobalAveragePooling2D()(h)
    h = keras.layers.Dense(16, activation="relu")(h)
    outputs = keras.layers.Dense(len(GASTROVISION3), activation="softmax", name="probs")(h)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y, epochs=epochs, batch_size=32, verbose=0, shuffle=True)
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "model.keras")
    manifest = ModelManifest(
        name="tiny-gastrovision3",
        task="sites",
        labelset=GASTROVISION3,
        preprocess=spec,
        source={
            "model_sha256": sha256_file(out / "model.keras"),
            "dataset_sha256": sha256_file(dataset_csv),
            "recipe": "tests/export/_tiny_run.py",
        },
        metrics={"train_accuracy": float(history.history["accuracy"][-1])},
    )
    (out / "manifest.json").write_text(manifest.to_json())
    return out
