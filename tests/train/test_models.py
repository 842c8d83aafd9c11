"""Every registry model builds at a tiny size and trains two steps; RESENet's SE blocks; weight transfer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from endoedge.train import irv2  # noqa: E402
from endoedge.train.models import REGISTRY, build_model, inference_copy, load_trained_model, unfreeze_top  # noqa: E402

TINY_IRV2 = {"width": 0.125, "blocks": [1, 1, 1]}

# name -> (input size, options, build kwargs); the Keras application backbones have fixed widths.
TINY: dict[str, tuple[int, dict[str, Any], dict[str, Any]]] = {
    "mobilenetv3s": (48, {"alpha": 0.75}, {}),
    "irv2": (75, TINY_IRV2, {}),
    "resenet": (75, TINY_IRV2, {}),
    "vits16": (32, {"dim": 32, "depth": 2, "heads": 2, "mlp_dim": 64}, {"freeze_backbone": True, "head": [16, 8]}),
    "convmixer768": (28, {"dim": 16, "depth": 2}, {"freeze_backbone": True, "head": [16, 8]}),
    "xception": (71, {}, {"freeze_backbone": True}),
    "resnet50v2": (32, {}, {"freeze_backbone": True}),
    "efficientnetv2s": (32, {}, {"freeze_backbone": True}),
    "efficientnet_lite0": (32, {}, {}),
    "efficientnet_lite1": (32, {}, {"freeze_backbone": True}),
    "efficientnet_lite2": (32, {}, {"freeze_backbone": True}),
}
SLOW = {"xception", "resnet50v2", "efficientnetv2s"}


def test_every_registry_model_has_a_tiny_case() -> None:
    assert set(TINY) == set(REGISTRY)


def _train_two_steps(name: str) -> keras.Model:
    size, options, kwargs = TINY[name]
    built = build_model(name, 3, size, options=options, dropout=0.1, **kwargs)
    model = built.model
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (4, size, size, 3)).astype("float32")
    y = np.array([0, 1, 2, 1])
    trainable_before = [w.numpy().copy() for w in model.trainable_weights]
    frozen = bool(kwargs.get("freeze_backbone"))
    frozen_before = [w.numpy().copy() for w in built.backbone.weights] if frozen else []
    history = model.fit(x, y, batch_size=2, epochs=1, verbose=0)
    assert len(history.history["loss"]) == 1 and np.isfinite(history.history["loss"][0])
    probs = model.predict(x, verbose=0)
    assert probs.shape == (4, 3) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert any(not np.array_equal(a, w.numpy()) for a, w in zip(trainable_before, model.trainable_weights, strict=True))
    for before, w in zip(frozen_before, built.backbone.weights if frozen else [], strict=True):
        assert np.array_equal(before, w.numpy()), f"frozen backbone weight {w.path} changed"
    return model


@pytest.mark.parametrize("name", [n for n in TINY if n not in SLOW])
def test_model_builds_tiny_and_trains_two_steps(name: str) -> None:
    _train_two_steps(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SLOW))
def test_keras_application_backbones_build_and_train_two_steps(name: str) -> None:
    _train_two_steps(name)


def test_hemorrhoid_head_is_the_papers() -> None:
    built = build_model("vits16", 3, 32, options=TINY["vits16"][1], freeze_backbone=True)
    dense = [layer for layer in built.model.layers if isinstance(layer, keras.layers.Dense)]
    assert [d.units for d in dense] == [1024, 512, 256, 64, 3]
    assert all(d.activation.__name__ == "relu" for d in dense[:-1])
    assert built.model.get_layer("probs").activation.__name__ == "softmax"
    assert not built.backbone.trainable


def test_normalisation_lives_in_exactly_one_place() -> None:
    inside = build_model("mobilenetv3s", 3, 48, options={"alpha": 0.75})
    outside = build_model("mobilenetv3s", 3, 48, options={"alpha": 0.75}, normalization_in_model=False)
    assert inside.manifest_normalization == "raw" and "normalize" in [x.name for x in inside.model.layers]
    assert outside.manifest_normalization == "inception"
    assert "normalize" not in [x.name for x in outside.model.layers]
    layer = inside.model.get_layer("normalize")
    out = np.asarray(layer(np.array([[[[0.0, 127.5, 255.0]]]], dtype="float32")))
    assert out == pytest.approx(np.array([[[[-1.0, 0.0, 1.0]]]]), abs=1e-5)


def test_resenet_has_se_on_every_inception_resnet_block() -> None:
    blocks = [2, 3, 2]
    se = build_model("resenet", 3, 75, options={"width": 0.125, "blocks": blocks}).backbone
    plain = build_model("irv2", 3, 75, options={"width": 0.125, "blocks": blocks}).backbone
    names = irv2.residual_block_names(se)
    assert len(names) == sum(blocks) == len(irv2.residual_block_names(plain))
    layer_names = {layer.name for layer in se.layers}
    for block in names:
        for part in ("squeeze", "reduce", "expand", "scale"):
            assert f"{block}_se_{part}" in layer_names, f"{block} lacks its SE {part} layer"
        # The SE output feeds the residual scale: SE sits on the residual branch, not the shortcut.
        scale_inputs = {t._keras_history[0].name for t in se.get_layer(block).input}
        assert f"{block}_se_scale" in scale_inputs
        channels = se.get_layer(f"{block}_conv").filters
        assert se.get_layer(f"{block}_se_reduce").units == max(1, channels // 16)
        assert se.get_layer(f"{block}_se_expand").units == channels
    assert not any(irv2.is_se_layer(layer.name) for layer in plain.layers)


def _weights_by_name(model: keras.Model) -> dict[str, list[np.ndarray]]:
    return {layer.name: [np.asarray(w) for w in layer.get_weights()] for layer in model.layers if layer.weights}


def test_weight_transfer_from_a_random_irv2_into_resenet(tmp_path: Path) -> None:
    keras.utils.set_random_seed(1)
    source = build_model("irv2", 3, 75, options=TINY_IRV2).backbone
    path = tmp_path / "irv2.weights.h5"
    source.save_weights(str(path))
    keras.utils.set_random_seed(2)
    target = build_model("resenet", 3, 75, options=TINY_IRV2).backbone
    fresh_before = _weights_by_name(target)
    report = irv2.load_backbone_weights(target, path)
    assert report.method == "by name"
    src, dst = _weights_by_name(source), _weights_by_name(target)
    assert set(report.loaded) == set(src)
    for name, arrays in src.items():
        for a, b in zip(arrays, dst[name], strict=True):
            assert np.array_equal(a, b), name
    se_layers = [n for n in dst if irv2.is_se_layer(n)]
    assert se_layers and set(report.fresh) == set(se_layers)
    for name in se_layers:  # SE layers keep their fresh initialisation
        for a, b in zip(fresh_before[name], dst[name], strict=True):
            assert np.array_equal(a, b)


def test_weight_transfer_through_the_registry_and_a_bad_file(tmp_path: Path) -> None:
    from endoedge.core.errors import ConfigError

    source = build_model("irv2", 3, 75, options=TINY_IRV2).backbone
    path = tmp_path / "irv2.weights.h5"
    source.save_weights(str(path))
    built = build_model("resenet", 3, 75, options=TINY_IRV2, weights=path)
    w = built.backbone.get_layer("stem_1a_3x3").get_weights()[0]
    assert np.array_equal(w, source.get_layer("stem_1a_3x3").get_weights()[0])
    with pytest.raises(ConfigError, match="does not exist"):
        build_model("resenet", 3, 75, options=TINY_IRV2, weights=tmp_path / "missing.h5")
    wider = build_model("irv2", 3, 75, options={"width": 0.25, "blocks": [1, 1, 1]}).backbone
    wider.save_weights(str(tmp_path / "wide.weights.h5"))
    with pytest.raises(ConfigError, match=r"wide.weights.h5: cannot load weights"):
        build_model("resenet", 3, 75, options=TINY_IRV2, weights=tmp_path / "wide.weights.h5")


@pytest.mark.slow
def test_keras_imagenet_layout_loads_by_creation_order(tmp_path: Path) -> None:
    """A legacy .h5 written from keras.applications.InceptionResNetV2 (the layout of the ImageNet file)
    loads into endoedge's IRv2 and gives the same outputs, and into RESENet with SE layers fresh."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    keras.utils.set_random_seed(3)
    reference = keras.applications.InceptionResNetV2(include_top=False, weights=None, input_shape=(75, 75, 3))
    path = tmp_path / "inception_resnet_v2_notop.h5"
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, reference)
    ours = irv2.inception_resnet_v2((75, 75, 3))
    report = irv2.load_backbone_weights(ours, path)
    assert report.method == "legacy-h5 by creation order"
    x = np.random.default_rng(0).uniform(-1, 1, (2, 75, 75, 3)).astype("float32")
    np.testing.assert_allclose(ours.predict(x, verbose=0), reference.predict(x, verbose=0), rtol=1e-4, atol=1e-4)
    se = irv2.inception_resnet_v2((75, 75, 3), se_ratio=16)
    se_report = irv2.load_backbone_weights(se, path)
    assert len(se_report.loaded) == len(report.loaded) and len(se_report.fresh) == 40 * 2


def test_fine_tuning_unfreezes_only_the_top_layers() -> None:
    built = build_model("convmixer768", 3, 28, options={"dim": 8, "depth": 3}, freeze_backbone=True)
    assert not built.backbone.trainable
    count = unfreeze_top(built.backbone, 2)
    trainable = [layer.name for layer in built.backbone.layers if layer.trainable and layer.weights]
    assert count == 2 and trainable == ["mixer_2_depthwise", "mixer_2_pointwise"]


def test_saved_model_round_trips_with_custom_layers(tmp_path: Path) -> None:
    built = build_model("resenet", 3, 75, options=TINY_IRV2)
    path = tmp_path / "model.keras"
    inference_copy(built.model).save(str(path))
    loaded = load_trained_model(path)
    x = np.random.default_rng(0).uniform(0, 255, (1, 75, 75, 3)).astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), built.model.predict(x, verbose=0), atol=1e-6)


def test_the_saved_inference_copy_holds_no_optimizer_state(tmp_path: Path) -> None:
    import io
    import zipfile

    import h5py

    model = _train_two_steps("mobilenetv3s")  # compiled and fitted: Adam has its moment tensors
    path = tmp_path / "model.keras"
    inference_copy(model).save(str(path))
    with zipfile.ZipFile(path) as archive, h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r") as weights:
        assert "optimizer" not in weights
    x = np.random.default_rng(1).uniform(0, 255, (2, 48, 48, 3)).astype("float32")
    np.testing.assert_allclose(load_trained_model(path).predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_mixed_precision_keeps_float32_probabilities() -> None:
    from endoedge.train.trainer import set_mixed_precision

    try:
        assert set_mixed_precision("on", log=lambda _: None)
        built = build_model("convmixer768", 3, 28, options={"dim": 8, "depth": 1})
        assert built.backbone.get_layer("patch_embed").compute_dtype == "float16"
        probs = built.model(np.zeros((1, 28, 28, 3), "float32"))
        assert keras.backend.standardize_dtype(probs.dtype) == "float32"
        assert not set_mixed_precision("auto", log=lambda _: None), "auto must stay float32 without a GPU"
    finally:
        keras.mixed_precision.set_global_policy("float32")
